"""Data-parallel training (gpt/distributed.py): ranks launched by mpiexec against one process.

The claims: N ranks see exactly the batches one process with N times the gradient
accumulation sees, so a 2-rank CPU run gives the losses and weights of a 1-process
run with accumulation 2; a checkpoint written by 2 ranks resumes in one process;
a rank that fails takes the job down with one clear line, never a hang. The
mpiexec tests need mpi4py and an MPI runtime (pip install -e ".[distributed]")
and are skipped with the reason when those are absent; every launch has a timeout.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nn
import tensorgrad as tg
from gpt import GPT, GPTConfig, TrainConfig, distributed
from gpt.data import TokenData, prepare
from gpt.train import load_model, micro_batches
from test_cli import _text

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_shakespeare.py"
TINY = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "3", "--eval-iters", "3", "--sample-tokens", "0",
        "--no-progress", "--log-interval", "1",
        # one thread: a 1-process run then sums each micro-batch as a rank does. Threads would sum
        # over shards (float32 rounding), which AdamW's first steps magnify past the 1e-6 compared
        "--cpu-threads", "1"]
TIMEOUT = 120    # seconds for one launch: a hang fails the test instead of stalling CI


def _mpiexec():
    """The mpiexec that goes with this Python's mpi4py: the one installed beside it (the
    mpich wheel puts it there), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    # Open MPI refuses root and more ranks than cores unless told; MPICH ignores these
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def mpiexec():
    """mpiexec, once it has shown that it starts 2 ranks that mpi4py sees as 2; else skip."""
    try:
        import mpi4py  # noqa: F401  (only: is it installed?)
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[distributed]')")
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec (pip install -e '.[distributed]' installs MPICH's)")
    probe = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'<{c.Get_rank()} of {c.Get_size()}>')"
    try:
        r = subprocess.run([exe, "-n", "2", sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=60, env=_env())
    except subprocess.TimeoutExpired:
        pytest.skip(f"{exe} -n 2 did not finish in 60 s")
    if r.returncode != 0 or not ("<0 of 2>" in r.stdout and "<1 of 2>" in r.stdout):
        pytest.skip(f"{exe} -n 2 does not start 2 MPI ranks for this mpi4py (another MPI's mpiexec?): "
                    f"{(r.stdout + r.stderr).strip()[:300]}")
    return exe


def _launch(mpiexec, n, args, script=SCRIPT, cwd=None):
    cmd = ([mpiexec, "-n", str(n)] if n else []) + [sys.executable, str(script)] + [str(a) for a in args]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=cwd)
    r.seconds = time.time() - t0
    return r


def _metrics(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


def _weights(out):
    model, extra = load_model(Path(out) / "last.npz")
    return [p.data for p in model.parameters()], extra


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("corpus") / "words.txt", _text())


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus):
    """The reference: one process, gradient accumulation 2, 6 iterations."""
    out = tmp_path_factory.mktemp("one") / "run"
    r = _launch(None, 0, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 6,
                                 "--gradient-accumulation-steps", 2])
    assert r.returncode == 0, r.stderr
    return out


def _assert_same_run(a, b):
    """Losses equal to float32 rounding (evaluation sums its batches in another order on 2
    ranks) and final weights equal to float32 rounding (in practice: bit-identical)."""
    ma, mb = _metrics(a), _metrics(b)
    assert [m["iter"] for m in ma] == [m["iter"] for m in mb]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([m[key] for m in mb], [m[key] for m in ma], rtol=1e-6, atol=0)
    (wa, _), (wb, extra) = _weights(a), _weights(b)
    worst = max(float(np.max(np.abs(x - y) / (np.abs(x) + 1e-6))) for x, y in zip(wa, wb))
    assert worst < 1e-6, worst
    return worst, extra


# ----------------------------------------------------------------------------- without MPI
def test_launcher_is_recognized_from_its_environment():
    assert not distributed.launched_by_mpi({})
    assert distributed.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})       # Open MPI
    assert distributed.launched_by_mpi({"PMI_SIZE": "2"})                   # MPICH / Intel MPI
    assert not distributed.launched_by_mpi({"PMI_SIZE": "2", "TENSORGRAD_MPI": "0"})
    assert distributed.launched_by_mpi({"TENSORGRAD_MPI": "1"})


def test_single_process_never_imports_mpi4py(tmp_path, corpus):
    argv = [*TINY, "--data", str(corpus), "--out-dir", str(tmp_path / "o"), "--max-iters", "2"]
    code = ("import sys; sys.path.insert(0, 'examples'); import train_shakespeare; "
            f"train_shakespeare.main({argv!r}); print('mpi4py' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env(),
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False"


def test_ranks_share_out_the_micro_batches_of_one_process(tmp_path):
    """Rank r of N keeps micro-batches r*A .. r*A + A-1 of the N*A one process with
    accumulation N*A draws, and all ranks' RNGs end in the same state."""
    (tmp_path / "t.txt").write_text(_text())
    prepare(tmp_path / "t.txt", tmp_path / "d")
    data = TokenData(tmp_path / "d")
    one_rng = np.random.default_rng(5)
    one_x, one_y = micro_batches(data, TrainConfig(batch_size=3, gradient_accumulation_steps=4), 8, one_rng,
                                 distributed.World())
    assert one_x.shape == (4, 3, 8)
    for size, accumulation in ((2, 2), (4, 1)):
        for rank in range(size):
            rng = np.random.default_rng(5)
            x, y = micro_batches(data, TrainConfig(batch_size=3, gradient_accumulation_steps=accumulation), 8,
                                 rng, distributed.World(rank=rank, size=size))
            keep = slice(rank * accumulation, (rank + 1) * accumulation)
            np.testing.assert_array_equal(x, one_x[keep])
            np.testing.assert_array_equal(y, one_y[keep])
            assert rng.bit_generator.state == one_rng.bit_generator.state


def test_accumulation_averages_the_micro_batch_gradients():
    """Accumulating 2 micro-batches gives the gradients (and update) of one batch holding both."""
    from gpt.train import train_step
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 4, 8)), rng.integers(0, 11, (2, 4, 8))
    grads = []
    for batches in ([(tg.tensor(x[0]), tg.tensor(y[0])), (tg.tensor(x[1]), tg.tensor(y[1]))],
                    [(tg.tensor(x.reshape(8, 8)), tg.tensor(y.reshape(8, 8)))]):
        tg.manual_seed(0)
        model = GPT(cfg)
        opt = nn.optim.SGD(model.parameters(), lr=0.0)
        loss = train_step(model, opt, batches, grad_clip=0.0)
        grads.append(([p.grad.copy() for p in model.parameters()], loss.item()))
    (ga, la), (gb, lb) = grads
    assert abs(la - lb) < 1e-6
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    from types import SimpleNamespace

    from gpt.errors import DistributedError
    used = []
    fake = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: 2),
                                                Device=lambda i: SimpleNamespace(use=lambda: used.append(i))))
    monkeypatch.setattr(tg.backend, "cuda_available", lambda: True)
    monkeypatch.setattr(tg.backend, "cupy", lambda: fake)
    distributed._use_local_gpu(distributed.World(rank=1, size=2, local_rank=1, local_size=2))
    assert used == [1]                                     # rank 1 of a host takes GPU 1
    with pytest.raises(DistributedError, match="^4 ranks on this host but only 2 GPUs: start at most 2 ranks"):
        distributed._use_local_gpu(distributed.World(rank=3, size=4, local_rank=3, local_size=4))


def test_gradient_accumulation_setting_is_checked(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    import _cli
    import train_shakespeare
    status = _cli.run(train_shakespeare.exit_status, TINY + ["--gradient-accumulation-steps", "0",
                                                             "--out-dir", str(tmp_path / "o")])
    assert status == 2
    assert capsys.readouterr().err.strip() == "error: --gradient-accumulation-steps must be at least 1 (got 0)"


# ----------------------------------------------------------------------------- under mpiexec
def test_two_ranks_match_one_process_with_accumulation_two(mpiexec, one_process, corpus, tmp_path):
    out = tmp_path / "two"
    r = _launch(mpiexec, 2, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 6])
    assert r.returncode == 0, r.stderr
    assert "global batch 8 = batch 4 x accumulation 1 x 2 ranks" in r.stdout
    assert r.stdout.count("model:") == 1            # rank 0 alone prints
    worst, extra = _assert_same_run(one_process, out)
    assert extra["world_size"] == 2
    print(f"2 ranks vs 1 process with accumulation 2: weights differ by at most {worst:.1e} (relative), "
          f"{r.seconds:.1f} s for the 2-rank run")


def test_two_rank_checkpoint_resumes_in_one_process(mpiexec, one_process, corpus, tmp_path):
    """2 ranks train 3 iterations; one process continues to 6, keeping the global batch (its
    accumulation becomes 2), and ends where the uninterrupted 1-process run ended."""
    out = tmp_path / "run"
    r = _launch(mpiexec, 2, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 3])
    assert r.returncode == 0, r.stderr
    r = _launch(None, 0, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 6, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "saved by 2 rank(s), continued by 1" in r.stdout and "accumulation 2 x 1 rank" in r.stdout
    _assert_same_run(one_process, out)


def test_one_process_checkpoint_resumes_on_two_ranks(mpiexec, one_process, corpus, tmp_path):
    out = tmp_path / "run"
    r = _launch(None, 0, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 3,
                                 "--gradient-accumulation-steps", 2])
    assert r.returncode == 0, r.stderr
    r = _launch(mpiexec, 2, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 6, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "accumulation 1 x 2 ranks" in r.stdout
    _assert_same_run(one_process, out)


FAILING = """
import os, signal, sys
sys.path.insert(0, {examples!r})
import _cli, train_shakespeare
from gpt import distributed
from gpt.data import TokenData

real, calls = TokenData.get_batch_arrays, {{"n": 0}}

def failing(self, *args, **kwargs):       # rank 1 dies during its {at}th batch read
    calls["n"] += 1
    if distributed.world().rank == 1 and calls["n"] == {at}:
        {action}
    return real(self, *args, **kwargs)

TokenData.get_batch_arrays = failing
sys.exit(_cli.run(train_shakespeare.exit_status, sys.argv[1:]))
"""


@pytest.mark.parametrize("action,message", [
    ("raise RuntimeError('disk on fire')",
     "error: rank 1 of 2 failed (RuntimeError: disk on fire); stopping all ranks"),           # a bug
    ("raise __import__('gpt.errors').errors.DataError('shard missing')", "error: rank 1: shard missing"),
    ("os.kill(os.getpid(), signal.SIGKILL)", None)])      # killed (out of memory): the launcher says so
def test_a_failing_rank_stops_every_rank_with_a_clear_message(mpiexec, corpus, tmp_path, action, message):
    """Rank 1 fails at its 12th batch read (in the evaluation at iteration 6; the one at 3 wrote
    last.npz) while rank 0 waits for it in the all-reduce: the job ends, fast, with one
    line naming the rank, and the checkpoint already saved is intact."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING.format(examples=str(ROOT / "examples"), at=12, action=action))
    out = tmp_path / "run"
    r = _launch(mpiexec, 2, TINY + ["--data", corpus, "--out-dir", out, "--max-iters", 100], script=script)
    assert r.returncode != 0
    assert message is None or message in r.stderr.splitlines(), (r.returncode, r.stderr, r.stdout[-300:])
    assert r.seconds < 30, f"took {r.seconds:.1f} s"
    assert nn.load(out / "last.npz")["iteration"] == 3
    print(f"failing rank: the job ended in {r.seconds:.1f} s")


def test_a_setting_mistake_under_mpiexec_is_said_once(mpiexec, corpus, tmp_path):
    r = _launch(mpiexec, 2, TINY + ["--data", corpus, "--out-dir", tmp_path / "o", "--batch-size", 0])
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --batch-size must be at least 1 (got 0)"], r.stderr


def _hydra(mpiexec):
    r = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    return "HYDRA" in r.stdout.upper()


def test_ctrl_c_on_mpiexec_saves_and_stops_every_rank(mpiexec, corpus, tmp_path):
    """MPICH's mpiexec passes Ctrl-C (SIGINT) on to the ranks; they agree on the iteration
    to stop at, rank 0 saves last.npz there, and all exit with status 130. (Open MPI's
    mpirun kills its ranks on Ctrl-C instead: last.npz is then the last evaluation's.)"""
    if not _hydra(mpiexec):
        pytest.skip("this mpiexec is not MPICH's Hydra, which forwards Ctrl-C to the ranks")
    out = tmp_path / "run"
    cmd = [mpiexec, "-n", "2", sys.executable, str(SCRIPT)] + [str(a) for a in TINY] + [
        "--data", str(corpus), "--out-dir", str(out), "--max-iters", "1000000", "--eval-interval", "100000",
        "--log-interval", "20"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        for line in p.stdout:                 # wait until the ranks are stepping
            if line.startswith("iter 40:"):
                break
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    saved = nn.load(out / "last.npz")["iteration"]
    assert saved > 40 and f"interrupted at iteration {saved}" in stdout


# ----------------------------------------------------------------------------- GPUs (NCCL)
NCCL_ONE_RANK = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import nn, tensorgrad as tg
from gpt import GPT, GPTConfig, TrainConfig, distributed
from gpt.train import make_runners

world = distributed.init("cuda")          # under mpiexec -n 1: a World with MPI, so NCCL is used
assert world.communicating and world.size == 1
cfg = GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=64)
rng = np.random.default_rng(0)
batches = [(rng.integers(0, 65, (2, 8, 64)), rng.integers(0, 65, (2, 8, 64))) for _ in range(8)]
out = {{}}
for name, graph, in_graph, w in [("plain eager", False, True, None), ("nccl eager", False, True, world),
                                 ("plain graph", True, True, None), ("nccl in graph", True, True, world),
                                 ("nccl between graphs", True, False, world)]:
    tg.manual_seed(0)
    model = GPT(cfg).to("cuda")
    opt = nn.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    tc = TrainConfig(device="cuda", batch_size=8, gradient_accumulation_steps=2, grad_clip=1.0,
                     cuda_graph=graph, graph_all_reduce=in_graph, dtype="float32")   # bf16 would amplify the atomics' last bits
    step, _, stream = make_runners(model, opt, tc, 64, w)
    with stream:
        losses = [step(x, y).item() for x, y in batches]
        weights = np.concatenate([p.data.get().ravel() for p in model.parameters()])
    out[name] = (losses, weights)
report = {{}}
for name in out:            # each against the same step without NCCL; the plain graph against eager
    ref = out["plain graph" if "graph" in name and name != "plain graph" else "plain eager"]
    report[name] = dict(loss_rel=float(np.max(np.abs(np.subtract(out[name][0], ref[0])) / np.abs(ref[0]))),
                        weight_rel=float(np.linalg.norm(out[name][1] - ref[1]) / np.linalg.norm(ref[1])),
                        losses=out[name][0])
print("RESULT " + json.dumps(report))
"""


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.cuda
def test_nccl_with_one_rank_matches_the_plain_gpu_step(mpiexec, tmp_path):
    """Under mpiexec -n 1 the gradients go through the NCCL all-reduce (a sum over one rank):
    eager, captured inside the step's CUDA graph, and between two graphs, each against the
    same step without it; and the captured step with accumulation 2 against the eager one.
    Not bit-equal: the embedding backward adds with atomics."""
    script = tmp_path / "nccl_one_rank.py"
    script.write_text(NCCL_ONE_RANK.format(root=str(ROOT)))
    r = _launch(mpiexec, 1, [], script=script)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.split("RESULT ", 1)[1])
    print(json.dumps({k: {m: v for m, v in d.items() if m != "losses"} for k, d in report.items()}, indent=1))
    for name, d in report.items():
        assert d["loss_rel"] < 1e-4 and d["weight_rel"] < 1e-3, (name, d)


@pytest.mark.cuda
def test_cli_on_one_gpu_under_mpiexec_matches_the_plain_run(mpiexec, corpus, tmp_path):
    args = [a if a != "cpu" else "cuda" for a in TINY] + ["--data", corpus, "--max-iters", 6,
                                                          "--gradient-accumulation-steps", 2]
    r = _launch(None, 0, args + ["--out-dir", tmp_path / "plain"])
    assert r.returncode == 0, r.stderr
    r = _launch(mpiexec, 1, args + ["--out-dir", tmp_path / "nccl"])
    assert r.returncode == 0, r.stderr
    a, b = _metrics(tmp_path / "plain"), _metrics(tmp_path / "nccl")
    np.testing.assert_allclose([m["val_loss"] for m in b], [m["val_loss"] for m in a], rtol=1e-4)


@pytest.mark.cuda
def test_two_gpus_match_one_gpu_with_accumulation_two(mpiexec, corpus, tmp_path):
    if _gpu_count() < 2:
        pytest.skip("needs 2 GPUs")
    args = [a if a != "cpu" else "cuda" for a in TINY] + ["--data", corpus, "--max-iters", 6]
    r = _launch(None, 0, args + ["--out-dir", tmp_path / "one", "--gradient-accumulation-steps", 2])
    assert r.returncode == 0, r.stderr
    for mode in ([], ["--no-graph-all-reduce"]):
        out = tmp_path / ("two" + "".join(mode))
        r = _launch(mpiexec, 2, args + ["--out-dir", out] + mode)
        assert r.returncode == 0, r.stderr
        a, b = _metrics(tmp_path / "one"), _metrics(out)
        np.testing.assert_allclose([m["val_loss"] for m in b], [m["val_loss"] for m in a], rtol=1e-4)
        (wa, _), (wb, _) = _weights(tmp_path / "one"), _weights(out)
        rel = max(float(np.linalg.norm(x - y) / np.linalg.norm(x)) for x, y in zip(wa, wb))
        assert rel < 1e-3, (mode, rel)
