"""Every reduction, both axes, several sizes, dtypes and batch shapes, against dense torch.

Formulas (x: i-variable, y: j-variable, D = 3):

* ``F(x, y) = sin(x - y) * (x + 1)`` (vector, dimension D),
* ``S(x, y) = -|x - y|^2 / 2 + 0.3 (x|y)`` (scalar),
* ``W(x, y) = (x - y)^2 + 0.5`` (positive weights, dimension D),
* ``V(x, y) = cos(x + y)`` (values for the softmax-weighted sum).

The dense reference evaluates them on (..., M, N, D) tensors and reduces along
i or j with plain torch; indices are int64, ties go to the first index.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt

D = 3

# ---------------------------------------------------------------------------
# formulas, lazy and dense
# ---------------------------------------------------------------------------


def lazy_F(X, Y):
    return (X - Y).sin() * (X + 1)


def lazy_S(X, Y):
    return -X.sqdist(Y) / 2 + 0.3 * (X | Y)


def lazy_W(X, Y):
    return (X - Y) ** 2 + 0.5


def lazy_V(X, Y):
    return (X + Y).cos()


def dense_F(x, y):
    return torch.sin(x - y) * (x + 1)


def dense_S(x, y):
    return -((x - y) ** 2).sum(-1, keepdim=True) / 2 + 0.3 * (x * y).sum(-1, keepdim=True)


def dense_W(x, y):
    return (x - y) ** 2 + 0.5


def dense_V(x, y):
    return torch.cos(x + y)


def _full(t, shape):
    return t.expand(*shape, t.shape[-1])


def _red_layout(t, over_i):
    """(..., M, N, d) -> (..., other, reduced, d)."""
    return t.transpose(-3, -2) if over_i else t


# Each reduction: (lazy call, dense call).  ``lazy(X, Y, dim, K)``; ``dense(x, y, over_i, K, full)``
# where dense results are in (..., other, d) layout (K outputs (..., other, K, d)).


def _dense_kmin(Ft, K):
    vals, idx = torch.sort(Ft, dim=-2, stable=True)
    return vals[..., :K, :], idx[..., :K, :]


def _squeeze_k(t):
    """pykeops layout of K-reductions: (..., K) for D = 1, (..., K, D) otherwise."""
    return t[..., 0] if t.shape[-1] == 1 else t


REDUCTIONS = {
    "sum": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).sum(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.sum(-2),),
    ),
    "sum_scalar": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).sum(dim, **kw),
        lambda Ft, St, Wt, Vt, K: (St.sum(-2),),
    ),
    "logsumexp": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).logsumexp(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (torch.logsumexp(St, -2),),
    ),
    "logsumexp_weight": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).logsumexp(dim=dim, weight=lazy_W(X, Y), **kw),
        lambda Ft, St, Wt, Vt, K: (torch.log((torch.exp(St) * Wt).sum(-2)),),
    ),
    "sumsoftmaxweight": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).sumsoftmaxweight(lazy_V(X, Y), dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: ((torch.softmax(St, -2) * Vt).sum(-2),),
    ),
    "min": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).min(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.amin(-2),),
    ),
    "max": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).max(dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.amax(-2),),
    ),
    "argmin": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).argmin(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.argmin(-2),),
    ),
    "argmax": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).argmax(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.argmax(-2),),
    ),
    "min_argmin": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).min_argmin(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.amin(-2), Ft.argmin(-2)),
    ),
    "max_argmax": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).max_argmax(dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (Ft.amax(-2), Ft.argmax(-2)),
    ),
    "Kmin": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).Kmin(K, dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (_squeeze_k(_dense_kmin(Ft, K)[0]),),
    ),
    "Kmin_scalar": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).Kmin(K=K, dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (_squeeze_k(_dense_kmin(St, K)[0]),),
    ),
    "argKmin": (
        lambda X, Y, dim, K, **kw: lazy_S(X, Y).argKmin(K, dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (_squeeze_k(_dense_kmin(St, K)[1]),),
    ),
    "argKmin_vector": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).argKmin(K, dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: (_squeeze_k(_dense_kmin(Ft, K)[1]),),
    ),
    "Kmin_argKmin": (
        lambda X, Y, dim, K, **kw: lazy_F(X, Y).Kmin_argKmin(K, dim=dim, **kw),
        lambda Ft, St, Wt, Vt, K: tuple(_squeeze_k(t) for t in _dense_kmin(Ft, K)),
    ),
}

#: reductions whose index output refers to the scalar formula S (the others: F)
USES_S = {"argKmin", "Kmin_scalar"}


def _dense_all(x, y, over_i):
    shape = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    return tuple(
        _red_layout(_full(f(x, y), shape), over_i) for f in (dense_F, dense_S, dense_W, dense_V)
    )


def _check(name, res, expected, dense, dtype, K):
    res = res if isinstance(res, tuple) else (res,)
    assert len(res) == len(expected)
    for r, e in zip(res, expected):
        assert tuple(r.shape) == tuple(e.shape), (name, tuple(r.shape), tuple(e.shape))
        if e.dtype == torch.int64:
            assert r.dtype == torch.int64
            if dtype == torch.float64:
                assert torch.equal(r, e)
            else:  # float32: near-ties may legitimately pick another index; check the values there
                src = dense[1] if name in USES_S else dense[0]
                _check_index_values(src, r, K, largest="max" in name)
        else:
            assert r.dtype == dtype
            tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(r.double(), e, **tol)


def _check_index_values(Ft, idx, K, largest=False):
    """Ft: (..., other, red, d); idx in pykeops layout: the values at idx must be the selected ones."""
    d = Ft.shape[-1]
    if K is None:
        idx4 = idx.unsqueeze(-2)  # (..., other, 1, d)
    else:
        idx4 = idx.unsqueeze(-1) if d == 1 else idx  # (..., other, K, d)
    shape = torch.broadcast_shapes(Ft.shape[:-2], idx4.shape[:-2])
    picked = torch.gather(Ft.expand(*shape, *Ft.shape[-2:]), -2, idx4.expand(*shape, *idx4.shape[-2:]))
    best = torch.sort(Ft, dim=-2, descending=largest).values[..., : idx4.shape[-2], :]
    torch.testing.assert_close(picked, best.expand_as(picked), rtol=1e-5, atol=1e-5)


SIZES = [(1, 1), (2, 7), (7, 2), (1, 257), (257, 1000), (1000, 2), (7, 1000)]


def _k_for(name, n_red):
    if "K" not in name:
        return None
    return min(4, n_red)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dim", [0, 1], ids=["over_i", "over_j"])
@pytest.mark.parametrize("M,N", SIZES, ids=[f"{m}x{n}" for m, n in SIZES])
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction(name, M, N, dim, dtype):
    x = torch.randn(M, 1, D, dtype=dtype)
    y = torch.randn(1, N, D, dtype=dtype)
    K = _k_for(name, M if dim == 0 else N)
    lazy, dense = REDUCTIONS[name]
    dd = _dense_all(x.double(), y.double(), over_i=(dim == 0))
    expected = dense(*dd, K)
    res = lazy(pkt.LazyTensor(x), pkt.LazyTensor(y), dim, K)
    _check(name, res, expected, dd, dtype, K)


@pytest.mark.parametrize("dim", [0, 1], ids=["over_i", "over_j"])
@pytest.mark.parametrize("name", ["Kmin", "Kmin_scalar", "argKmin", "Kmin_argKmin"])
def test_k_equals_n(name, dim):
    M, N = 5, 6
    x = torch.randn(M, 1, D, dtype=torch.float64)
    y = torch.randn(1, N, D, dtype=torch.float64)
    K = M if dim == 0 else N
    lazy, dense = REDUCTIONS[name]
    dd = _dense_all(x, y, over_i=(dim == 0))
    _check(name, lazy(pkt.LazyTensor(x), pkt.LazyTensor(y), dim, K), dense(*dd, K), dd, torch.float64, K)


def test_axis_keyword():
    x = torch.randn(4, 1, D, dtype=torch.float64)
    y = torch.randn(1, 6, D, dtype=torch.float64)
    F = lazy_F(pkt.LazyTensor(x), pkt.LazyTensor(y))
    torch.testing.assert_close(F.sum(axis=1), dense_F(x, y).sum(1))
    torch.testing.assert_close(F.sum(axis=0), dense_F(x, y).sum(0))
    torch.testing.assert_close(F.min(axis=0), dense_F(x, y).amin(0))


def test_output_shapes_and_dtypes():
    x = pkt.LazyTensor(torch.randn(11, 1, 3))
    y = pkt.LazyTensor(torch.randn(1, 13, 3))
    d2 = x.sqdist(y)  # dimension 1
    assert (x - y).sum(dim=1).shape == (11, 3)
    assert (x - y).sum(dim=0).shape == (13, 3)
    assert d2.sum(dim=1).shape == (11, 1)
    assert d2.Kmin(4, dim=1).shape == (11, 4)
    assert (x - y).Kmin(4, dim=1).shape == (11, 4, 3)
    assert d2.argKmin(4, dim=0).shape == (13, 4)
    assert d2.argKmin(4, dim=0).dtype == torch.int64
    assert (x - y).argmin(dim=1).dtype == torch.int64
    assert (x - y).argmin(dim=1).shape == (11, 3)
    v, i = d2.min_argmin(dim=1)
    assert v.shape == i.shape == (11, 1) and i.dtype == torch.int64


# ---------------------------------------------------------------------------
# batch dimensions and broadcasting
# ---------------------------------------------------------------------------

BATCH_CASES = {
    # id: (x shape, y shape, full batch shape)
    "B_vs_1": ((3, 7, 1, D), (1, 1, 257, D), (3,)),
    "B_vs_B": ((2, 257, 1, D), (2, 1, 5, D), (2,)),
    "1_vs_B": ((1, 6, 1, D), (4, 1, 9, D), (4,)),
    "B1_vs_B2": ((2, 1, 7, 1, D), (1, 3, 1, 11, D), (2, 3)),
    "unbatched_y": ((2, 5, 1, D), (1, 8, D), (2,)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("axis", ["i", "j"])
@pytest.mark.parametrize("case", list(BATCH_CASES))
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_batched_reduction(name, case, axis, dtype):
    xs, ys, batch = BATCH_CASES[case]
    x = torch.randn(xs, dtype=dtype)
    y = torch.randn(ys, dtype=dtype)
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    nb = len(batch)
    assert (X - Y).nbatchdims == nb
    M, N = xs[-3], ys[-2]
    K = _k_for(name, M if axis == "i" else N)
    dim = nb if axis == "i" else nb + 1
    lazy, dense = REDUCTIONS[name]
    yd = y.double()
    if yd.dim() == 3:  # (1, N, D) against a batched x
        yd = yd[None]
    dd = _dense_all(x.double(), yd, over_i=(axis == "i"))
    expected = dense(*dd, K)
    for e in expected:
        assert e.shape[:nb] == batch
    _check(name, lazy(X, Y, dim, K), expected, dd, dtype, K)


TILED_NAMES = ["sum", "logsumexp_weight", "sumsoftmaxweight", "min_argmin", "Kmin_argKmin", "argKmin"]


@pytest.mark.parametrize("axis", ["i", "j"])
@pytest.mark.parametrize("case", list(BATCH_CASES))
@pytest.mark.parametrize("name", TILED_NAMES)
def test_batched_reduction_many_tiles(tiny_tiles, name, case, axis):
    xs, ys, batch = BATCH_CASES[case]
    x = torch.randn(xs, dtype=torch.float64)
    y = torch.randn(ys, dtype=torch.float64)
    nb = len(batch)
    M, N = xs[-3], ys[-2]
    K = _k_for(name, M if axis == "i" else N)
    dim = nb if axis == "i" else nb + 1
    lazy, dense = REDUCTIONS[name]
    dd = _dense_all(x, y if y.dim() == len(xs) else y[None], over_i=(axis == "i"))
    res = lazy(pkt.LazyTensor(x), pkt.LazyTensor(y), dim, K, backend=tiny_tiles)
    _check(name, res, dense(*dd, K), dd, torch.float64, K)


def test_numpy_batched():
    x = np.random.randn(2, 1, 6, 1, D)
    y = np.random.randn(1, 3, 1, 9, D)
    X, Y = pknp.LazyTensor(x), pknp.LazyTensor(y)
    res = lazy_S(X, Y).logsumexp(dim=3)
    assert res.shape == (2, 3, 6, 1)
    ref = torch.logsumexp(dense_S(torch.from_numpy(x), torch.from_numpy(y)), dim=3).numpy()
    np.testing.assert_allclose(res, ref, rtol=1e-12)
    v, i = lazy_F(X, Y).min_argmin(dim=2)
    Fd = dense_F(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert v.shape == i.shape == (2, 3, 9, D) and i.dtype == np.int64
    np.testing.assert_array_equal(i, Fd.argmin(2))
    np.testing.assert_allclose(v, Fd.min(2), rtol=1e-12)


def test_batched_parameter():
    x = torch.randn(2, 6, 1, D, dtype=torch.float64)
    y = torch.randn(1, 1, 9, D, dtype=torch.float64)
    p = torch.rand(2, 1, 1, 1, dtype=torch.float64) + 0.5  # one scale per batch
    X, Y, P = pkt.LazyTensor(x), pkt.LazyTensor(y), pkt.LazyTensor(p)
    res = (-P * X.sqdist(Y)).exp().sum(dim=2)
    expected = torch.exp(-p * ((x - y) ** 2).sum(-1, keepdim=True)).sum(2)
    torch.testing.assert_close(res, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# K @ v and K.t() @ v
# ---------------------------------------------------------------------------


def _kernel(M, N, dtype, batch=()):
    x = torch.randn(*batch, M, 1, D, dtype=dtype)
    y = torch.randn(*batch, 1, N, D, dtype=dtype)
    K = (-pkt.LazyTensor(x).sqdist(pkt.LazyTensor(y))).exp()
    Kd = torch.exp(-((x - y) ** 2).sum(-1))
    return K, Kd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("M,N", [(1, 7), (7, 1), (257, 1000), (1000, 2)], ids=lambda v: str(v))
def test_matmul(M, N, dtype):
    K, Kd = _kernel(M, N, dtype)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    v1 = torch.randn(N, dtype=dtype)
    r1 = K @ v1
    assert r1.shape == (M,)
    torch.testing.assert_close(r1.double(), Kd.double() @ v1.double(), **tol)
    v2 = torch.randn(N, 4, dtype=dtype)
    r2 = K @ v2
    assert r2.shape == (M, 4)
    torch.testing.assert_close(r2.double(), Kd.double() @ v2.double(), **tol)
    u1 = torch.randn(M, dtype=dtype)
    rt = K.t() @ u1
    assert rt.shape == (N,)
    torch.testing.assert_close(rt.double(), Kd.double().T @ u1.double(), **tol)
    u2 = torch.randn(M, 2, dtype=dtype)
    torch.testing.assert_close((K.T @ u2).double(), Kd.double().T @ u2.double(), **tol)


def test_matmul_batched():
    K, Kd = _kernel(6, 9, torch.float64, batch=(3,))
    v = torch.randn(3, 9, 2, dtype=torch.float64)
    res = K @ v
    assert res.shape == (3, 6, 2)
    torch.testing.assert_close(res, Kd @ v, rtol=1e-12, atol=1e-12)


def test_transpose_reductions():
    x = torch.randn(7, 1, D, dtype=torch.float64)
    y = torch.randn(1, 5, D, dtype=torch.float64)
    F = pkt.LazyTensor(x).sqdist(pkt.LazyTensor(y))
    Fd = ((x - y) ** 2).sum(-1, keepdim=True)
    assert F.t().shape == (5, 7)
    torch.testing.assert_close(F.t().sum(dim=1), Fd.sum(0))
    torch.testing.assert_close(F.t().min(dim=0), Fd.amin(1))


# ---------------------------------------------------------------------------
# numpy front end (same maths, fewer combinations)
# ---------------------------------------------------------------------------

NUMPY_NAMES = ["sum", "logsumexp", "logsumexp_weight", "sumsoftmaxweight", "min_argmin", "max_argmax",
               "Kmin_argKmin", "argKmin"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dim", [0, 1], ids=["over_i", "over_j"])
@pytest.mark.parametrize("name", NUMPY_NAMES)
def test_numpy_reduction(name, dim, dtype):
    M, N = 9, 257
    x = np.random.randn(M, 1, D).astype(dtype)
    y = np.random.randn(1, N, D).astype(dtype)
    K = _k_for(name, M if dim == 0 else N)
    lazy, dense = REDUCTIONS[name]
    dd = _dense_all(torch.from_numpy(x).double(), torch.from_numpy(y).double(), over_i=(dim == 0))
    res = lazy(pknp.LazyTensor(x), pknp.LazyTensor(y), dim, K)
    res = res if isinstance(res, tuple) else (res,)
    for r in res:
        assert isinstance(r, np.ndarray)
        assert r.dtype in (np.dtype(dtype), np.dtype(np.int64))
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    _check(name, tuple(torch.from_numpy(np.ascontiguousarray(r)) for r in res), dense(*dd, K), dd, tdtype, K)


def test_numpy_matmul():
    x = np.random.randn(8, 3)
    y = np.random.randn(20, 3)
    K = (-pknp.Vi(x).sqdist(pknp.Vj(y))).exp()
    Kd = np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    v = np.random.randn(20)
    np.testing.assert_allclose(K @ v, Kd @ v, rtol=1e-12)
    u = np.random.randn(8, 2)
    np.testing.assert_allclose(K.T @ u, Kd.T @ u, rtol=1e-12)


# ---------------------------------------------------------------------------
# ties, NaN and infinities (also through many small tiles: exercises `combine`)
# ---------------------------------------------------------------------------


@pytest.fixture(params=["auto", "tiny_tiles"])
def backend(request):
    if request.param == "auto":
        return None
    return request.getfixturevalue("tiny_tiles")


def test_tiny_tile_backend_really_tiles(tiny_tiles):
    from polykeops.backends import get_backend
    from polykeops.backends.reference import _tile_sizes

    b = get_backend(tiny_tiles)
    ti, tj = _tile_sizes(100, 300, 3, b.tile_elements)
    assert ti < 100 and tj < 300


@pytest.mark.parametrize("dim", [0, 1], ids=["over_i", "over_j"])
def test_ties_first_index_wins(backend, dim):
    # integer values on a 2-D grid: many exact ties along both axes
    M, N = 40, 300
    x = torch.randint(0, 3, (M, 1, 2)).double()
    y = torch.randint(0, 3, (1, N, 2)).double()
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    F = (X - Y).abs()  # vector, component-wise ties
    Fd = (x - y).abs()
    ax = dim  # dense axis of the reduction in (M, N, 2)
    a = Fd.numpy()
    kw = dict(dim=dim, backend=backend)
    np.testing.assert_array_equal(F.argmin(**kw).numpy(), a.argmin(ax))
    np.testing.assert_array_equal(F.argmax(**kw).numpy(), a.argmax(ax))
    v, i = F.min_argmin(**kw)
    np.testing.assert_array_equal(i.numpy(), a.argmin(ax))
    np.testing.assert_array_equal(v.numpy(), a.min(ax))
    v, i = F.max_argmax(**kw)
    np.testing.assert_array_equal(i.numpy(), a.argmax(ax))
    # argKmin: stable order, smaller index first among equal values
    order = np.argsort(a, axis=ax, kind="stable")
    order = order[:5] if dim == 0 else order[:, :5]
    res = F.argKmin(5, **kw).numpy()
    expected = np.moveaxis(order, 0, 1) if dim == 0 else order  # (other, K, 2)
    np.testing.assert_array_equal(res, expected)
    vals, idx = F.Kmin_argKmin(5, **kw)
    np.testing.assert_array_equal(idx.numpy(), expected)
    np.testing.assert_array_equal(vals.numpy(), np.sort(a, axis=ax)[:5].transpose(1, 0, 2) if dim == 0
                                  else np.sort(a, axis=ax)[:, :5])


def test_nan_wins_min_max(backend):
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)[:, None, :]  # (3, 1, 1)
    yv = torch.arange(50, dtype=torch.float64)
    yv[17] = float("nan")
    yv[33] = float("nan")
    yv[40] = -5.0
    y = yv[None, :, None]
    F = pkt.LazyTensor(x) + pkt.LazyTensor(y)
    kw = dict(dim=1, backend=backend)
    assert torch.isnan(F.min(**kw)).all()
    assert torch.isnan(F.max(**kw)).all()
    assert (F.argmin(**kw) == 17).all()
    assert (F.argmax(**kw) == 17).all()
    v, i = F.min_argmin(**kw)
    assert torch.isnan(v).all() and (i == 17).all()
    # KMin: NaNs first (in index order), then ascending values
    vals, idx = F.Kmin_argKmin(4, **kw)
    assert idx[0].tolist() == [17, 33, 40, 0]
    assert torch.isnan(vals[:, :2]).all()
    torch.testing.assert_close(vals[:, 2:], torch.tensor([[-5.0, 0.0], [-4.0, 1.0], [-3.0, 2.0]],
                                                         dtype=torch.float64))


def test_argmin_without_nan_ignores_inf(backend):
    yv = torch.tensor([3.0, float("inf"), -float("inf"), 1.0, -float("inf")], dtype=torch.float64)
    y = yv[None, :, None]
    x = torch.zeros(2, 1, 1, dtype=torch.float64)
    F = pkt.LazyTensor(x) + pkt.LazyTensor(y)
    assert F.argmin(dim=1, backend=backend).tolist() == [[2], [2]]
    assert F.argmax(dim=1, backend=backend).tolist() == [[1], [1]]
    assert F.min(dim=1, backend=backend).tolist() == [[-float("inf")]] * 2


def test_logsumexp_infinities(backend):
    # row 0: all -inf -> -inf (not NaN); the finite rows are unaffected
    x = torch.tensor([-float("inf"), 0.0, 0.0], dtype=torch.float64)[:, None, None]
    y = torch.zeros(1, 30, 1, dtype=torch.float64)
    F = pkt.LazyTensor(x) + pkt.LazyTensor(y)
    res = F.logsumexp(dim=1, backend=backend)
    assert res[0, 0] == -float("inf")
    torch.testing.assert_close(res[1:, 0], torch.full((2,), np.log(30.0), dtype=torch.float64))

    yv2 = torch.zeros(30, dtype=torch.float64)
    yv2[21] = float("inf")
    yv2[3] = -float("inf")
    F2 = pkt.LazyTensor(torch.zeros(2, 1, 1, dtype=torch.float64)) + pkt.LazyTensor(yv2[None, :, None])
    assert (F2.logsumexp(dim=1, backend=backend) == float("inf")).all()

    yv3 = torch.zeros(30, dtype=torch.float64)
    yv3[::2] = -float("inf")  # half the entries contribute exp(-inf) = 0
    F3 = pkt.LazyTensor(torch.zeros(2, 1, 1, dtype=torch.float64)) + pkt.LazyTensor(yv3[None, :, None])
    torch.testing.assert_close(F3.logsumexp(dim=1, backend=backend),
                               torch.full((2, 1), np.log(15.0), dtype=torch.float64))


def test_logsumexp_large_values_stable(backend):
    # exp overflows in float32 and float64: the max-shift must be used
    x = torch.tensor([1000.0, -1000.0], dtype=torch.float32)[:, None, None]
    y = torch.linspace(0, 1, 300, dtype=torch.float32)[None, :, None]
    res = (pkt.LazyTensor(x) + pkt.LazyTensor(y)).logsumexp(dim=1, backend=backend)
    expected = torch.logsumexp((x + y).double(), dim=1)
    torch.testing.assert_close(res.double(), expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    "name", ["sum", "logsumexp_weight", "sumsoftmaxweight", "min_argmin", "Kmin_argKmin"]
)
@pytest.mark.parametrize("dim", [0, 1], ids=["over_i", "over_j"])
def test_many_tiles_match_dense(tiny_tiles, name, dim):
    x = torch.randn(70, 1, D, dtype=torch.float64)
    y = torch.randn(1, 130, D, dtype=torch.float64)
    K = _k_for(name, 70 if dim == 0 else 130)
    lazy, dense = REDUCTIONS[name]
    dd = _dense_all(x, y, over_i=(dim == 0))
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    res = lazy(X, Y, dim, K, backend=tiny_tiles)
    _check(name, res, dense(*dd, K), dd, torch.float64, K)


def test_kahan_and_double_accumulation_options():
    x = torch.randn(5, 1, D)
    y = torch.randn(1, 1000, D)
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    expected = dense_F(x.double(), y.double()).sum(1)
    for kw in [dict(sum_scheme="kahan_scheme"), dict(use_double_acc=True), dict(dtype_acc="float64"),
               dict(sum_scheme="direct_sum")]:
        res = lazy_F(X, Y).sum(dim=1, **kw)
        assert res.dtype == torch.float32
        torch.testing.assert_close(res.double(), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# formulas whose variables were simplified away keep the LazyTensor's sizes
# ---------------------------------------------------------------------------


def test_reduction_sizes_survive_simplification():
    x = torch.randn(6, 1, D, dtype=torch.float64)
    y = torch.randn(1, 5, D, dtype=torch.float64)
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    F = (X - X) + Y  # simplifies to Y: no i-variable left
    assert F.shape == (6, 5, D)
    r1 = F.sum(dim=1)
    assert r1.shape == (6, D)
    torch.testing.assert_close(r1, y[0].sum(0).expand(6, D))
    r0 = F.sum(dim=0)
    torch.testing.assert_close(r0, 6 * y[0])
    G = X * 0 + 1.0  # only a parameter left
    torch.testing.assert_close((G + Y).sum(dim=0), 6 * (1 + y[0]))
