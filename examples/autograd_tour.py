"""A guided tour of tensorgrad's autograd, for a reader who knows NumPy.

    python examples/autograd_tour.py

1. a scalar expression and its derivative
2. a tensor expression with broadcasting
3. a two-layer MLP fitting a toy problem
4. checking a gradient against finite differences
5. gradients returned instead of accumulated (tg.grad)
6. a picture of the graph (tg.draw_graph)
7. gradients of gradients (create_graph=True): tanh's derivatives, Newton's method, a Hessian-vector product
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import tensorgrad as tg  # noqa: E402


def scalars():
    print("1. scalars: z = x*y + tanh(x), dz/dx = y + 1 - tanh(x)^2")
    x = tg.tensor(2.0, requires_grad=True)
    y = tg.tensor(-3.0, requires_grad=True)
    z = x * y + x.tanh()       # each op records a Function node: the graph
    z.backward()               # walk the graph backwards, chain rule at each node
    print(f"   z = {z.item():.4f}, dz/dx = {x.grad.item():.4f} "
          f"(by hand {-3 + 1 - np.tanh(2) ** 2:.4f}), dz/dy = {y.grad.item():.4f} (by hand 2)")


def broadcasting():
    print("2. tensors: a bias of shape (3,) added to every row of a (4, 3) matrix")
    tg.manual_seed(0)          # the same numbers on every run
    W = tg.randn(4, 3, requires_grad=True)
    b = tg.zeros(3, requires_grad=True)
    loss = ((W + b) ** 2).mean()
    loss.backward()
    # b was broadcast over 4 rows, so its gradient is the sum of the 4 rows' gradients
    print(f"   W.grad shape {W.grad.shape}, b.grad shape {b.grad.shape}")
    print(f"   b.grad          = {np.array2string(b.grad, precision=4)}")
    print(f"   W.grad.sum(0)   = {np.array2string(W.grad.sum(0), precision=4)}  (the same: sum_to undid the broadcast)")


def mlp():
    print("3. a two-layer MLP learns y = sin(3x) on [-1, 1]")
    tg.manual_seed(0)
    x = tg.tensor(np.linspace(-1, 1, 64, dtype=np.float32)[:, None])   # (64, 1)
    y = tg.tensor(np.sin(3 * x.numpy()))                                  # (64, 1)
    W1 = (tg.randn(1, 32) * 1.0).requires_grad_()
    b1 = tg.zeros(32, requires_grad=True)
    W2 = (tg.randn(32, 1) * 0.2).requires_grad_()
    b2 = tg.zeros(1, requires_grad=True)
    params = [W1, b1, W2, b2]
    for step in range(501):
        pred = (x @ W1 + b1).tanh() @ W2 + b2                             # (64, 1)
        loss = ((pred - y) ** 2).mean()
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:                                                  # plain gradient descent
            p.data -= 0.1 * p.grad
        if step % 100 == 0:
            print(f"   step {step:3d}: mean squared error {loss.item():.5f}")


class WrongSquare(tg.Function):
    """y = x^2 with a deliberately wrong backward (x instead of 2x): what gradcheck is for."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (g * self.x,)          # the bug: d(x^2)/dx is 2x


def gradient_check():
    print("4. gradcheck: backward() against central finite differences, in float64")
    a = tg.tensor(np.random.default_rng(0).standard_normal((3, 5)), dtype=tg.float64, requires_grad=True)
    w = tg.tensor(np.random.default_rng(1).standard_normal(5), dtype=tg.float64, requires_grad=True)
    result = tg.gradcheck(lambda a, w: tg.layer_norm(a * w).gelu().softmax(-1), [a, w])
    print(f"   layer_norm, gelu, softmax: passed: {result.ok}, largest relative error {result.max_rel_error:.2e}")
    result = tg.gradcheck(lambda a: WrongSquare.apply(a), [a], raise_exception=False)
    print(f"   a wrong backward:          passed: {result.ok}, worst: {result.worst}")


def returned_gradients():
    print("5. tg.grad: the gradients handed back, no .grad touched (PyTorch's torch.autograd.grad)")
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * x                  # not a leaf: its gradient is found through the op that made it
    gx, gh = tg.grad((3.0 * h).sum(), [x, h])
    print(f"   d/dx = {gx} (by hand 6x), d/dh = {gh} (by hand 3), and x.grad is still {x.grad}")
    print("   so two batches can go backward on two threads at once, each with its own gradients (nn/threads.py)")


def picture():
    print("6. tg.draw_graph: the graph behind a tensor, the nodes backward() will visit")
    x = tg.tensor([[1.0, -2.0, 0.5]])                                    # (1, 3) data: needs no gradient
    W = tg.randn(3, 2, requires_grad=True)
    b = tg.zeros(2, requires_grad=True)
    loss = ((x @ W + b).tanh() ** 2).mean()
    names = {"W": W, "b": b}
    print("   " + tg.draw_graph(loss, format="text", names=names).replace("\n", "\n   "))
    dot = tg.draw_graph(loss, names=names)                               # Graphviz's language
    print(f"   as Graphviz DOT: {len(dot.splitlines())} lines; tg.draw_graph(loss, 'graph.svg') draws it "
          "(pip install -e .[graph])")


def higher_order():
    print("7. create_graph=True: the backward pass is recorded too, so a gradient can be differentiated again")
    x = tg.tensor(0.5, dtype=tg.float64, requires_grad=True)
    derivs, y = [], x.tanh()
    for _ in range(4):                       # d/dx of the previous derivative, four times
        (y,) = tg.grad(y, [x], create_graph=True)
        derivs.append(y.item())
    t = np.tanh(0.5)                         # closed forms in t = tanh(x)
    closed = [1 - t**2, -2 * t * (1 - t**2), (1 - t**2) * (6 * t**2 - 2), 8 * t * (1 - t**2) * (2 - 3 * t**2)]
    print("   tanh at 0.5, orders 1-4: " + ", ".join(f"{d:+.6f}" for d in derivs))
    print("   closed forms:            " + ", ".join(f"{c:+.6f}" for c in closed))

    x = tg.tensor(3.0, dtype=tg.float64, requires_grad=True)    # Newton: x <- x - f'(x) / f''(x)
    for _ in range(8):
        f = x ** 4 - 3 * x ** 2 + x                              # a minimum at x = 1.1309...
        (d1,) = tg.grad(f, [x], create_graph=True)               # f' as a Tensor with a graph
        (d2,) = tg.grad(d1, [x])                                 # f'' from it
        x = tg.tensor(x.item() - d1.item() / d2.item(), dtype=tg.float64, requires_grad=True)
    print(f"   Newton's method on x^4 - 3x^2 + x from x = 3: x = {x.item():.6f}, f'(x) = {4 * x.item()**3 - 6 * x.item() + 1:.1e}")

    tg.manual_seed(0)                        # a Hessian-vector product of a small MLP's loss
    W1, W2 = tg.randn(4, 8, dtype=tg.float64), tg.randn(8, 1, dtype=tg.float64)
    xs, ys = tg.randn(16, 4, dtype=tg.float64), tg.randn(16, 1, dtype=tg.float64)

    def loss(w1):
        return (((xs @ w1).tanh() @ W2 - ys) ** 2).mean()
    v = tg.randn(4, 8, dtype=tg.float64)
    hv = tg.functional.hvp(loss, W1, v).numpy()
    h = 1e-5                                 # central difference of gradients along v
    plus, minus = (tg.tensor(W1.numpy() + s * h * v.numpy(), dtype=tg.float64, requires_grad=True) for s in (1, -1))
    fd = (tg.grad(loss(plus), [plus])[0] - tg.grad(loss(minus), [minus])[0]) / (2 * h)
    err = np.abs(hv - fd).max() / np.abs(fd).max()
    print(f"   MLP loss, Hessian-vector product by double backward vs finite differences: relative error {err:.1e}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    scalars()
    broadcasting()
    mlp()
    gradient_check()
    returned_gradients()
    picture()
    higher_order()
