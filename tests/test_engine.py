"""The graph (reuse, accumulation, deep chains, no_grad), forward values and errors."""
import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad.ops.broadcast import sum_to

rng = np.random.default_rng(0)


# --------------------------------------------------------------------- graph
def test_reuse_and_diamond():
    x = tg.tensor(3.0, requires_grad=True)
    y = x * x                      # reuse: dy/dx = 2x
    y.backward()
    assert x.grad == pytest.approx(6.0)

    x = tg.tensor(2.0, requires_grad=True)
    a, b = x * 3, x.exp()          # diamond: two paths from x to z
    z = a * b
    z.backward()
    assert x.grad == pytest.approx(3 * math.exp(2) + 3 * 2 * math.exp(2))


def test_leaf_grads_accumulate_until_zeroed():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [5, 5])
    x.zero_grad()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [2, 4])


def test_grads_of_two_leaves_are_independent_arrays():
    a, b = tg.tensor([1.0], requires_grad=True), tg.tensor([1.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad *= 10  # must not change b.grad (Add hands both the same array)
    assert b.grad[0] == 1.0


def test_deep_chain_does_not_recurse():
    x = tg.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1e-6
    y.backward()
    assert x.grad == pytest.approx(1.0)


def test_no_grad_builds_no_graph():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with tg.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_graph_is_freed_and_second_pass_is_an_error():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()  # allowed once more
    np.testing.assert_allclose(x.grad, [4, 8])
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


def test_backward_frees_saved_arrays():
    x = tg.tensor(rng.standard_normal(100), requires_grad=True)
    h = x.exp()
    fn = h.grad_fn
    assert any(isinstance(v, np.ndarray) for v in vars(fn).values())
    h.sum().backward()
    assert fn.freed and not vars(fn).get("inputs") and not any(isinstance(v, np.ndarray) for v in vars(fn).values())


def test_graph_holds_no_unsaved_intermediate():
    """A Function keeps edges to where its inputs came from, not the input tensors:
    an intermediate that no op saved is freed when the user drops it (as in PyTorch)."""
    import gc
    import weakref
    x = tg.tensor(rng.standard_normal(100), requires_grad=True)
    h = x * 2.0                       # Mul saves x (a leaf) and the constant, not its output
    ref = weakref.ref(h.data)
    y = (h + 1.0).sum()               # Add saves nothing of h
    del h
    gc.collect()
    assert ref() is None
    y.backward()
    np.testing.assert_allclose(x.grad, np.full(100, 2.0))


def test_detach_and_integer_tensors():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    assert not x.detach().requires_grad
    with pytest.raises(TypeError, match="floating-point"):
        tg.tensor([1, 2], requires_grad=True)
    i = tg.arange(5)
    assert i.dtype == np.int64 and not i.requires_grad
    assert not (x > 1.5).requires_grad and (x > 1.5).dtype == bool


def test_backward_errors():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="does not match"):
        (x * 2).backward(np.ones(3))
    y = x * 2
    y.backward(np.array([1.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(x.grad, [2, 2])


# ---------------------------------------------------------------- sum_to alone
@pytest.mark.parametrize("gshape,shape", [((2, 3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((2, 3, 4), ()),
                                          ((5, 1, 4), (1, 4)), ((3, 4), (3, 4)), ((2, 3), (1, 1))])
def test_sum_to(gshape, shape):
    g = rng.standard_normal(gshape)
    out = sum_to(g, shape)
    assert out.shape == shape
    # The defining property: broadcasting out back gives the same total over any axis.
    assert np.isclose(out.sum(), g.sum())
    ref = g
    while ref.ndim > len(shape):
        ref = ref.sum(0)
    for i, n in enumerate(shape):
        if n == 1:
            ref = ref.sum(i, keepdims=True)
    np.testing.assert_allclose(out, ref)


# ------------------------------------------------------------- forward values
def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_forward_values_match_numpy():
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal((5,))
    A, B = tg.tensor(a), tg.tensor(b)
    cases = [
        (A + B, a + b), (A - B, a - b), (A * B, a * b), (A / B, a / b), (-A, -a), (A ** 2, a ** 2),
        (A.exp(), np.exp(a)), (A.abs().log(), np.log(np.abs(a))), (A.abs().sqrt(), np.sqrt(np.abs(a))),
        (A.tanh(), np.tanh(a)), (A.sigmoid(), 1 / (1 + np.exp(-a))), (A.relu(), np.maximum(a, 0)),
        (A.gelu(approximate='tanh'), _np_gelu(a)), (A.silu(), a / (1 + np.exp(-a))), (A.clamp(-0.5, 0.5), np.clip(a, -0.5, 0.5)),
        (tg.maximum(A, B), np.maximum(a, b)), (tg.minimum(A, 0.0), np.minimum(a, 0)),
        (A @ B, a @ b), (A.sum(axis=1), a.sum(1)), (A.mean(axis=0, keepdims=True), a.mean(0, keepdims=True)),
        (A.max(axis=-1), a.max(-1)), (A.var(axis=1), a.var(1, ddof=1)),
        (A.softmax(-1), np.exp(a) / np.exp(a).sum(-1, keepdims=True)),
        (A.log_softmax(-1), a - np.log(np.exp(a).sum(-1, keepdims=True))),
        (A.T, a.T), (A[1:3, ::2], a[1:3, ::2]), (tg.cat([A, A], 0), np.concatenate([a, a], 0)),
        (tg.stack([A, A], 2), np.stack([a, a], 2)), (tg.tril(A), np.tril(a)), (tg.triu(A, 1), np.triu(a, 1)),
        (tg.where(A > 0, A, B), np.where(a > 0, a, b)), (A.masked_fill(A > 0, -1.0), np.where(a > 0, -1, a)),
    ]
    for t, ref in cases:
        assert t.shape == np.shape(ref)
        np.testing.assert_allclose(t.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_norms_and_cross_entropy_values():
    x = rng.standard_normal((3, 6)) * 4 + 2
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(tg.layer_norm(tg.tensor(x), tg.tensor(w), tg.tensor(b)).numpy(), ln, rtol=1e-5)
    rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(tg.rms_norm(tg.tensor(x), tg.tensor(w)).numpy(), rms, rtol=1e-5)
    t = np.array([1, 5, -100])
    lse = np.log(np.exp(x).sum(-1))
    ref = np.mean([lse[0] - x[0, 1], lse[1] - x[1, 5]])
    assert tg.cross_entropy(tg.tensor(x, dtype=tg.float64), tg.tensor(t)).item() == pytest.approx(ref, rel=1e-12)


def test_softmax_and_cross_entropy_are_stable_for_large_inputs():
    x = tg.tensor(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], dtype=np.float32))
    s = x.softmax(-1).numpy()
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s.sum(-1), 1, rtol=1e-6)
    assert np.isfinite(x.log_softmax(-1).numpy()).all()
    loss = tg.cross_entropy(x, tg.tensor(np.array([2, 0])))
    assert loss.item() == pytest.approx((2000 + math.log(3)) / 2, rel=1e-5)


def test_dropout_seeded_and_identity():
    x = tg.ones(1000)
    tg.manual_seed(7)
    a = tg.dropout(x, 0.25).numpy()
    tg.manual_seed(7)
    b = tg.dropout(x, 0.25).numpy()
    np.testing.assert_array_equal(a, b)
    assert 0.2 < (a == 0).mean() < 0.3 and np.isclose(a.max(), 1 / 0.75)
    assert tg.dropout(x, 0.0) is x and tg.dropout(x, 0.5, training=False) is x


def test_float32_default_and_float64_on_request():
    assert tg.tensor([1.0, 2.0]).dtype == np.float32
    assert tg.zeros(2, 3).dtype == np.float32 and tg.randn(4).dtype == np.float32
    assert tg.tensor(np.ones(3)).dtype == np.float32                 # NumPy's float64 too (issue 12)
    x64 = tg.tensor(np.ones(3), dtype=np.float64)
    assert x64.dtype == np.float64 and tg.tensor(x64).dtype == np.float64   # a tensor keeps its dtype
    assert (tg.tensor([1.0]) * np.float64(2.0)).dtype == np.float32  # NumPy scalars don't upcast
    assert (tg.tensor([1.0]) * 2.5).dtype == np.float32


def test_factories():
    tg.manual_seed(0)
    a = tg.randn(2, 3)
    tg.manual_seed(0)
    np.testing.assert_array_equal(a.numpy(), tg.randn(2, 3).numpy())
    assert tg.rand(5).numpy().min() >= 0 and tg.ones(2).numpy().tolist() == [1, 1]
    assert tg.zeros_like(a).shape == (2, 3) and tg.ones_like(a).numpy().sum() == 6
    np.testing.assert_array_equal(tg.arange(1, 7, 2).numpy(), [1, 3, 5])
    assert tg.tensor(2.5).item() == 2.5


# ------------------------------------------------------------------ bad input
def test_shape_errors_name_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul: \(3, 4\) @ \(5, 2\): inner dimensions 4 and 5 differ"):
        tg.zeros(3, 4) @ tg.zeros(5, 2)
    with pytest.raises(ValueError, match=r"add.*\(3, 4\).*\(2,\)|add.*\(2,\).*\(3, 4\)"):
        tg.zeros(3, 4) + tg.zeros(2)
    with pytest.raises(ValueError, match=r"reshape: cannot view shape \(3, 4\)"):
        tg.zeros(3, 4).reshape(5, 2)
    with pytest.raises(ValueError, match="cat: shapes"):
        tg.cat([tg.zeros(2, 3), tg.zeros(3, 3)], axis=1)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        tg.zeros(2, 2).sum(axis=3)
    with pytest.raises(IndexError, match="getitem"):
        tg.zeros(2, 2)[5]
    with pytest.raises(ValueError, match="cross_entropy: logits"):
        tg.cross_entropy(tg.zeros(4, 3), tg.tensor(np.zeros(5, dtype=np.int64)))
    with pytest.raises(IndexError, match="embedding: index out of range"):
        tg.embedding(tg.tensor(np.array([0, 9])), tg.zeros(4, 2))
    with pytest.raises(ValueError, match="unknown device"):
        tg.zeros(2, device="tpu")


def test_cuda_request_without_gpu_is_a_clear_error():
    if tg.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy"):
        tg.zeros(2, device="cuda")


def test_autograd_tour_runs(capsys, monkeypatch):
    tour = str(Path(__file__).resolve().parents[1] / "examples" / "autograd_tour.py")
    monkeypatch.setattr(sys, "argv", [tour])
    runpy.run_path(tour, run_name="__main__")
    out = capsys.readouterr().out
    runpy.run_path(tour, run_name="__main__")
    assert capsys.readouterr().out == out                            # seeded: the same text every run
    assert "passed: True" in out and "step 500" in out
    assert "a wrong backward:          passed: False" in out      # the check catches the planted bug
    assert "d/dx = [ 6. 12. 18.] (by hand 6x), d/dh = [3. 3. 3.] (by hand 3), and x.grad is still None" in out
    assert "   Mean -> () float32\n   └── Pow -> (1, 2) float32\n" in out            # the picture's text form
    assert "│   └── W (3, 2) float32, requires grad" in out
    lines = out.splitlines()                                         # stop 7: tanh's derivatives = closed forms
    derivs = next(line for line in lines if "orders 1-4" in line).split(":", 1)[1].split(",")
    closed = next(line for line in lines if "closed forms:" in line).split(":", 1)[1].split(",")
    assert [float(d) for d in derivs] == [float(c) for c in closed]
    hvp_line = next(line for line in lines if "Hessian-vector product" in line)
    assert float(hvp_line.rsplit(" ", 1)[1]) < 1e-6
    assert "x = 1.130901, f'(x) = 0.0e+00" in next(line for line in lines if "Newton" in line)


def test_readme_tour_prints_what_its_comments_say(capsys):
    """The README's ten-line tour runs, and prints the values written in its comments."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## A ten-line tour of the engine\n\n```python\n(.*?)```", readme, re.S).group(1)
    names = {}
    exec(compile(code, "README.md", "exec"), names)
    printed = capsys.readouterr().out.splitlines()
    claimed = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    # the comment after each print starts with what it prints
    for out, claim in zip(printed, claimed):
        assert claim.startswith(out.strip()), f"README tour prints {out!r}, its comment says {claim!r}"
    x, W, b = names["x"].numpy(), names["W"].numpy(), names["b"].numpy()
    np.testing.assert_allclose(names["b"].grad, 1 - np.tanh(x @ W + b)[0] ** 2, rtol=1e-6)


def test_ops_on_two_devices_name_both():
    a = tg.tensor([1.0, 2.0])
    class NotNumpy:
        """Stands in for a CuPy array (the engine takes any non-NumPy array for one): the
        check compares the tensors' devices before it touches an array."""
        shape, dtype, ndim = (2,), np.dtype(np.float32), 1
    b = tg.Tensor.from_array(NotNumpy())
    assert b.device == "cuda"
    with pytest.raises(RuntimeError, match=r"different devices \(cpu and cuda\)"):
        a + b


def test_keep_freed_memory_is_safe_to_call_and_turns_off(monkeypatch):
    import sys
    from tensorgrad import cpu_tuning
    linux = sys.platform.startswith("linux")
    for on in (True, False):          # off puts glibc's defaults back, as a process starts
        applied = cpu_tuning.keep_freed_memory(on)
        assert applied in (True, False) and (applied or not linux)
        np.testing.assert_array_equal((tg.ones(1000) * 2).numpy(), np.full(1000, 2.0))
    monkeypatch.setenv("TENSORGRAD_KEEP_FREED_MEMORY", "0")
    assert cpu_tuning.keep_freed_memory() is False


def test_import_tunes_nothing_and_the_cpu_trainer_opts_in(monkeypatch):
    import subprocess
    import sys
    from pathlib import Path
    from tensorgrad import cpu_tuning
    from gpt import GPT, GPTConfig, TrainConfig
    from gpt.train import configure_optimizer, make_runners
    code = ("import ctypes; real, opened = ctypes.CDLL, []\n"
            "ctypes.CDLL = lambda name, *a, **k: opened.append(name) or real(name, *a, **k)\n"
            "import tensorgrad, nn, gpt\n"
            "assert not any('libc' in str(n) for n in opened), opened")   # mallopt is reached through libc
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    calls = []
    monkeypatch.setattr(cpu_tuning, "keep_freed_memory", lambda on=True: calls.append(on))
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=5))
    tc = TrainConfig(device="cpu", batch_size=1, cpu_threads=1)
    make_runners(model, configure_optimizer(model, tc), tc, 4)
    assert calls == [True]


# ------------------------------------------------------------ grad(): gradients returned
def test_grad_returns_what_backward_accumulates_and_touches_no_grad():
    tg.manual_seed(0)
    w = tg.randn(3, 4, requires_grad=True)
    b = tg.randn(4, requires_grad=True)
    x = tg.randn(5, 3)

    def loss():
        h = (x @ w + b).tanh()
        return (h * h).sum() + (w * w).sum()            # w reached twice: its two gradients summed
    gw, gb = tg.grad(loss(), [w, b])
    assert w.grad is None and b.grad is None
    loss().backward()
    np.testing.assert_array_equal(gw, w.grad)
    np.testing.assert_array_equal(gb, b.grad)


def test_grad_of_an_intermediate_result_and_unused_inputs():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * 2.0                                          # not a leaf: found by the op that made it
    out = (h * h).sum()
    gh, gx = tg.grad(out, [h, x])
    np.testing.assert_allclose(gh, 2 * h.data)
    np.testing.assert_allclose(gx, 8 * x.data)
    unused = tg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="not used to compute the output"):
        tg.grad((x * 3.0).sum(), [x, unused])
    gx, gu = tg.grad((x * 3.0).sum(), [x, unused], allow_unused=True)
    np.testing.assert_allclose(gx, 3.0)
    assert gu is None
    with pytest.raises(TypeError, match=r"inputs\[0\] is a ndarray"):
        tg.grad((x * 3.0).sum(), [np.ones(3)])


def test_grad_on_two_threads_at_once_keeps_each_graphs_gradients():
    """Two graphs over one shared weight going backward concurrently: each gets its own."""
    import threading
    tg.manual_seed(1)
    w = tg.randn(64, 64, requires_grad=True)
    xs = [tg.randn(256, 64) for _ in range(2)]
    want = [tg.grad(((x @ w).tanh()).sum(), w) for x in xs]
    got = [None, None]

    def run(i):
        for _ in range(20):
            got[i] = tg.grad(((xs[i] @ w).tanh()).sum(), w)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, h in zip(got, want):
        np.testing.assert_array_equal(g, h)
    assert w.grad is None


def test_leaf_keeps_an_unshared_gradient_and_copies_a_shared_one():
    """The engine hands a leaf the summed gradient itself when nothing else holds it, else a
    copy: changing one .grad in place never changes another array."""
    x1 = tg.tensor([1.0, 2.0], requires_grad=True)
    x2 = tg.tensor([3.0, 4.0], requires_grad=True)
    (x1 + x2).sum().backward()                        # Add gives both inputs one array
    x2.grad += 1
    np.testing.assert_array_equal(x1.grad, [1.0, 1.0])
    np.testing.assert_array_equal(x2.grad, [2.0, 2.0])
    g = np.array([5.0, 6.0], dtype=np.float32)
    x1.grad = None
    x1.backward(g)                                   # a leaf's own backward: the caller's array
    x1.grad += 1
    np.testing.assert_array_equal(g, [5.0, 6.0])
    w = tg.tensor(np.ones((3, 2)), requires_grad=True)
    out = tg.tensor(np.ones((4, 3))) @ w
    out.sum().backward()
    assert w.grad.flags.owndata and w.grad.base is None


def test_layernorm_adds_the_skip_connections_gradient_itself_with_the_same_bits(monkeypatch):
    """Function.adds_into: the engine hands LayerNorm's backward the gradient its input already
    has (a residual stream's other use) instead of adding the two afterwards; same bits."""
    from gpt import GPT, GPTConfig
    from tensorgrad.ops.fused import LayerNorm
    x, y = (tg.tensor(np.random.default_rng(i).integers(0, 40, (3, 12))) for i in range(2))

    def grads():
        tg.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=12, vocab_size=40))
        model(x, y)[1].backward()
        return [p.grad for p in model.parameters()]
    calls = []
    runs = LayerNorm.cpu if tg.function.twins_enabled() else LayerNorm   # the CPU twin, unless switched off
    real = runs.backward

    def counted(self, g, acc=None):
        calls.append(acc is not None)
        return real(self, g, acc)
    monkeypatch.setattr(runs, "backward", counted)
    folded = grads()
    assert sum(calls) == 4                               # each block's ln_1 and ln_2 meet a skip connection
    monkeypatch.setattr(LayerNorm, "adds_into", None)
    calls.clear()
    plain = grads()
    assert not any(calls)
    for a, b in zip(folded, plain):
        np.testing.assert_array_equal(a, b)


def test_grad_returns_arrays_of_their_own():
    a = tg.tensor([1.0, 2.0], requires_grad=True)
    b = tg.tensor([3.0, 4.0], requires_grad=True)
    ga, gb = tg.grad((a + b).sum(), [a, b])           # Add hands both inputs one array
    ga += 1
    np.testing.assert_array_equal(gb, [1.0, 1.0])
