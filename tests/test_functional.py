"""tg.functional: hvp, jvp and hessian against finite differences (float64)."""
import numpy as np

import tensorgrad as tg
from helpers import rand64


def fd_grad(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        out.flat[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


def grad_at(f, x):
    t = tg.tensor(x, dtype=tg.float64, requires_grad=True)
    return tg.grad(f(t), t)


def test_hessian_matches_finite_differences():
    f = lambda x: (tg.tanh(x) * x.sum() + x ** 3).sum()
    x = rand64(4).data
    H = tg.functional.hessian(f, x).data
    num = np.stack([fd_grad(lambda z: grad_at(f, z)[j], x) for j in range(4)])
    np.testing.assert_allclose(H, num, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)


def test_jvp_matches_finite_differences():
    f = lambda x: tg.softmax(x.reshape(2, 3), axis=-1) * 2.0
    x, v = rand64(6).data, rand64(6).data
    jv = tg.functional.jvp(f, x, v).data
    eps = 1e-6
    with tg.no_grad():
        num = (f(tg.tensor(x + eps * v, dtype=tg.float64)).data - f(tg.tensor(x - eps * v, dtype=tg.float64)).data) / (2 * eps)
    np.testing.assert_allclose(jv, num, rtol=1e-6, atol=1e-9)


def test_hvp_of_a_small_mlp_loss():
    """H v of an MLP's cross-entropy loss over its flattened parameters, against a central
    finite difference of gradients."""
    rng = np.random.default_rng(0)
    X = tg.tensor(rng.standard_normal((6, 3)), dtype=tg.float64)
    y = tg.tensor(np.array([0, 1, 2, 1, 0, 2]))
    sizes = [(5, 3), (5,), (3, 5), (3,)]
    n = sum(int(np.prod(s)) for s in sizes)

    def loss(theta):
        parts, k = [], 0
        for s in sizes:
            m = int(np.prod(s))
            parts.append(theta[k:k + m].reshape(*s))
            k += m
        w1, b1, w2, b2 = parts
        return tg.cross_entropy(tg.linear(tg.gelu(tg.linear(X, w1, b1), approximate="tanh"), w2, b2), y)

    theta, v = rng.standard_normal(n) * 0.5, rng.standard_normal(n)
    hv = tg.functional.hvp(loss, theta, v).data
    eps = 1e-5
    num = (grad_at(loss, theta + eps * v) - grad_at(loss, theta - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, num, rtol=1e-5, atol=1e-8)
