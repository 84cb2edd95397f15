"""torch.autograd through polykeops reductions, against torch autograd on dense tensors.

Variables: x (i-variable), y (j-variable), p (1-D parameter of dimension 1), q
(1-D parameter of dimension D), all float64 with requires_grad; a Python float
(0.7) appears as a non-differentiable constant.  Random cotangents are used so
that every output component matters.
"""

from __future__ import annotations

import pytest
import torch

import polykeops.torch as pkt

D = 3
TOL = dict(rtol=1e-8, atol=1e-10)

# ---------------------------------------------------------------------------
# formulas: lazy (X, Y, P, Q LazyTensors) and dense (x, y, p, q tensors, broadcast)
# ---------------------------------------------------------------------------


def lazy_F(X, Y, P, Q):  # vector, dimension D
    return (-P * X.sqdist(Y)).exp() * (X - Y).sin() * Q + 0.7 * X * Y


def dense_F(x, y, p, q):
    d2 = ((x - y) ** 2).sum(-1, keepdim=True)
    return torch.exp(-p * d2) * torch.sin(x - y) * q + 0.7 * x * y


def lazy_S(X, Y, P, Q):  # scalar
    return -P * X.sqdist(Y) + (X * Q | Y).sin()


def dense_S(x, y, p, q):
    return -p * ((x - y) ** 2).sum(-1, keepdim=True) + torch.sin((x * q * y).sum(-1, keepdim=True))


def lazy_W(X, Y, P, Q):  # positive weights, dimension D
    return (X - Y) ** 2 + Q * Q + 0.1


def dense_W(x, y, p, q):
    return (x - y) ** 2 + q * q + 0.1


def lazy_V(X, Y, P, Q):  # dimension D
    return (X + Y).cos() * Q


def dense_V(x, y, p, q):
    return torch.cos(x + y) * q


def _kmin_dense(t, K, ax):
    return torch.sort(t, dim=ax, stable=True).values.narrow(ax, 0, K)


def _kmin_layout(v, over_i):
    # dense (K, N, d) or (M, K, d) -> pykeops (other, K) for d == 1
    v = v.transpose(-3, -2) if over_i else v
    return v[..., 0] if v.shape[-1] == 1 else v


# name: (lazy(X, Y, P, Q, dim), dense(x, y, p, q, ax, over_i))  with ax the dense reduction axis
CASES = {
    "sum": (
        lambda X, Y, P, Q, dim: lazy_F(X, Y, P, Q).sum(dim=dim),
        lambda x, y, p, q, ax, oi: dense_F(x, y, p, q).sum(ax),
    ),
    "logsumexp": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).logsumexp(dim=dim),
        lambda x, y, p, q, ax, oi: torch.logsumexp(dense_S(x, y, p, q), ax),
    ),
    "logsumexp_weight": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).logsumexp(dim=dim, weight=lazy_W(X, Y, P, Q)),
        lambda x, y, p, q, ax, oi: torch.log(
            (torch.exp(dense_S(x, y, p, q)) * dense_W(x, y, p, q)).sum(ax)
        ),
    ),
    "sumsoftmaxweight": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).sumsoftmaxweight(lazy_V(X, Y, P, Q), dim=dim),
        lambda x, y, p, q, ax, oi: (
            torch.softmax(dense_S(x, y, p, q), ax) * dense_V(x, y, p, q)
        ).sum(ax),
    ),
    "min": (
        lambda X, Y, P, Q, dim: lazy_F(X, Y, P, Q).min(dim=dim),
        lambda x, y, p, q, ax, oi: dense_F(x, y, p, q).amin(ax),
    ),
    "max": (
        lambda X, Y, P, Q, dim: lazy_F(X, Y, P, Q).max(dim=dim),
        lambda x, y, p, q, ax, oi: dense_F(x, y, p, q).amax(ax),
    ),
    "min_argmin_values": (
        lambda X, Y, P, Q, dim: lazy_F(X, Y, P, Q).min_argmin(dim=dim)[0],
        lambda x, y, p, q, ax, oi: dense_F(x, y, p, q).min(ax).values,
    ),
    "max_argmax_values": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).max_argmax(dim=dim)[0],
        lambda x, y, p, q, ax, oi: dense_S(x, y, p, q).max(ax).values,
    ),
    "Kmin_scalar": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).Kmin(3, dim=dim),
        lambda x, y, p, q, ax, oi: _kmin_layout(_kmin_dense(dense_S(x, y, p, q), 3, ax), oi),
    ),
    "Kmin_vector": (
        lambda X, Y, P, Q, dim: lazy_F(X, Y, P, Q).Kmin(2, dim=dim),
        lambda x, y, p, q, ax, oi: _kmin_layout(_kmin_dense(dense_F(x, y, p, q), 2, ax), oi),
    ),
    "Kmin_argKmin_values": (
        lambda X, Y, P, Q, dim: lazy_S(X, Y, P, Q).Kmin_argKmin(2, dim=dim)[0],
        lambda x, y, p, q, ax, oi: _kmin_layout(_kmin_dense(dense_S(x, y, p, q), 2, ax), oi),
    ),
}


def _leaves(batch=False, M=7, N=5):
    if batch:
        x = torch.randn(2, M, 1, D, dtype=torch.float64)
        y = torch.randn(1, 1, N, D, dtype=torch.float64)
        p = torch.rand(2, 1, 1, 1, dtype=torch.float64) + 0.3  # batched parameter
    else:
        x = torch.randn(M, 1, D, dtype=torch.float64)
        y = torch.randn(1, N, D, dtype=torch.float64)
        p = torch.rand(1, dtype=torch.float64) + 0.3
    q = torch.randn(D, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, y, p, q)]


def _lazy(x, y, p, q):
    return pkt.LazyTensor(x), pkt.LazyTensor(y), pkt.LazyTensor(p), pkt.LazyTensor(q)


def _dims(batch, over_i):
    nb = 1 if batch else 0
    dim = nb if over_i else nb + 1
    ax = -3 if over_i else -2
    return dim, ax


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "batch"])
@pytest.mark.parametrize("over_i", [False, True], ids=["over_j", "over_i"])
@pytest.mark.parametrize("name", list(CASES))
def test_first_order(name, over_i, batch):
    leaves = _leaves(batch)
    lazy, dense = CASES[name]
    dim, ax = _dims(batch, over_i)
    res = lazy(*_lazy(*leaves), dim)
    ref = dense(*leaves, ax, over_i)
    assert res.shape == ref.shape
    torch.testing.assert_close(res, ref, **TOL)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((res * g).sum(), leaves)
    grads_ref = torch.autograd.grad((ref * g).sum(), leaves)
    for name_, a, b, leaf in zip("xypq", grads, grads_ref, leaves):
        assert a.shape == leaf.shape, name_
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name_: f"d/d{n}: {m}")


def test_gradient_of_selected_leaf_only():
    # grad w.r.t. a subset of inputs; others without requires_grad
    x = torch.randn(6, 1, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 9, D, dtype=torch.float64)
    res = (pkt.LazyTensor(x) - pkt.LazyTensor(y)).sqnorm2().logsumexp(dim=1)
    (gx,) = torch.autograd.grad(res.sum(), [x])
    xd = x.detach().clone().requires_grad_()
    ref = torch.logsumexp(((xd - y) ** 2).sum(-1, keepdim=True), dim=1)
    (gref,) = torch.autograd.grad(ref.sum(), [xd])
    torch.testing.assert_close(gx, gref, **TOL)


def test_backward_accumulates_into_grad():
    x = torch.randn(5, 1, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 8, D, dtype=torch.float64, requires_grad=True)
    (pkt.LazyTensor(x) * pkt.LazyTensor(y)).sum(dim=1).sum().backward()
    torch.testing.assert_close(x.grad, y.detach().sum(1, keepdim=True).expand(5, 1, D), **TOL)
    torch.testing.assert_close(y.grad, x.detach().sum(0, keepdim=True).expand(1, 8, D), **TOL)


def test_grad_through_2d_vi_vj():
    x = torch.randn(6, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    res = (-pkt.Vi(x).sqdist(pkt.Vj(y))).exp().sum(dim=1)
    ref = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)).sum(1, keepdim=True)
    torch.testing.assert_close(res, ref, **TOL)
    g1 = torch.autograd.grad(res.sum(), [x, y])
    g2 = torch.autograd.grad(ref.sum(), [x, y])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------------------
# second order
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "batch"])
@pytest.mark.parametrize("over_i", [False, True], ids=["over_j", "over_i"])
@pytest.mark.parametrize("name", ["sum", "logsumexp"])
@pytest.mark.parametrize("wrt", ["x", "y"])
def test_second_order(name, wrt, over_i, batch):
    leaves = _leaves(batch, M=5, N=4)
    lazy, dense = CASES[name]
    dim, ax = _dims(batch, over_i)
    res = lazy(*_lazy(*leaves), dim)
    ref = dense(*leaves, ax, over_i)
    g = torch.randn_like(ref)
    k = "xypq".index(wrt)
    (d1,) = torch.autograd.grad((res * g).sum(), [leaves[k]], create_graph=True)
    (d1_ref,) = torch.autograd.grad((ref * g).sum(), [leaves[k]], create_graph=True)
    torch.testing.assert_close(d1, d1_ref, **TOL)
    h = torch.randn_like(d1)
    d2 = torch.autograd.grad((d1 * h).sum(), leaves)
    d2_ref = torch.autograd.grad((d1_ref * h).sum(), leaves)
    for n, a, b in zip("xypq", d2, d2_ref):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=n: f"d2/d{wrt}d{n}: {m}")


def test_hessian_vector_product_weighted_lse():
    x, y, p, q = _leaves(M=4, N=6)
    res = lazy_S(*_lazy(x, y, p, q)).logsumexp(dim=1, weight=lazy_W(*_lazy(x, y, p, q)))
    ref = torch.log((torch.exp(dense_S(x, y, p, q)) * dense_W(x, y, p, q)).sum(1))
    (d1,) = torch.autograd.grad(res.sum(), [x], create_graph=True)
    (d1r,) = torch.autograd.grad(ref.sum(), [x], create_graph=True)
    v = torch.randn_like(d1)
    a = torch.autograd.grad((d1 * v).sum(), [x, y])
    b = torch.autograd.grad((d1r * v).sum(), [x, y])
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, **TOL)


# ---------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sum", "logsumexp"])
def test_gradcheck(name):
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    p = (torch.rand(1, dtype=torch.float64) + 0.5).requires_grad_()

    def f(x, y, p):
        X, Y, P = pkt.LazyTensor(x), pkt.LazyTensor(y), pkt.LazyTensor(p)
        K = (-P * X.sqdist(Y)).exp() * (X | Y)
        return K.sum(dim=1) if name == "sum" else K.logsumexp(dim=1)

    assert torch.autograd.gradcheck(f, (x, y, p))
    assert torch.autograd.gradgradcheck(f, (x, y, p))


def test_index_outputs_are_not_differentiable():
    x = torch.randn(5, 1, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 6, D, dtype=torch.float64)
    F = pkt.LazyTensor(x).sqdist(pkt.LazyTensor(y))
    v, i = F.min_argmin(dim=1)
    assert v.requires_grad and not i.requires_grad
    assert not F.argKmin(2, dim=1).requires_grad
