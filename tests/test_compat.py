"""pykeops compatibility: idioms of pykeops' tutorials and documented API, checked against dense
torch/NumPy written here (never against pykeops' own tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
from polykeops.backends.cpu import CpuBackend, generic
from polykeops.errors import DTypeError, FormulaError, PolyKeopsError, ShapeError
from polykeops.torch import Genred, Vi, Vj
from polykeops.torch.cluster import cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters


@pytest.fixture(params=["reference", "cpu-generic", "cpu-kernels"])
def engine(request, monkeypatch):
    if request.param == "reference":
        return "reference"
    if request.param == "cpu-generic":
        if not generic.available()[0]:
            pytest.skip("generic engine not built")
        monkeypatch.setenv("POLYKEOPS_JIT", "off")
    else:
        if not CpuBackend().compiler_status()[0]:
            pytest.skip("no C compiler")
        monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    return "cpu"


# -- block-sparsity through the .ranges attribute ------------------------------------------


def _clustered(m, n, seed=0, eps=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, 2, generator=g, dtype=torch.float64)
    y = torch.rand(n, 2, generator=g, dtype=torch.float64)
    b = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x_lab, y_lab = grid_cluster(x, eps), grid_cluster(y, eps)
    x_ranges, x_c, _ = cluster_ranges_centroids(x, x_lab)
    y_ranges, y_c, _ = cluster_ranges_centroids(y, y_lab)
    x, x_lab = sort_clusters(x, x_lab)
    (y, b), y_lab = sort_clusters((y, b), y_lab)
    keep = ((x_c[:, None, :] - y_c[None, :, :]) ** 2).sum(-1) < 0.3
    ranges = from_matrix(x_ranges, y_ranges, keep)
    mask = keep[x_lab][:, y_lab]  # the dense mask the ranges describe
    return x, y, b, ranges, mask


def _dense_kernel(x, y):
    return torch.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("m, n", [(31, 257), (257, 1000)])
def test_ranges_attribute_applies_to_every_reduction(engine, m, n):
    x, y, b, ranges, mask = _clustered(m, n)
    assert not mask.all()  # the test needs pairs that are left out
    K = (-((Vi(x) - Vj(y)) ** 2).sum()).exp()
    K.ranges = ranges
    dense = _dense_kernel(x, y) * mask
    torch.testing.assert_close(K @ b, dense @ b)
    torch.testing.assert_close(K.sum(dim=1, backend=engine), dense.sum(1, keepdim=True))
    torch.testing.assert_close(K.sum(0, backend=engine), dense.sum(0)[:, None])
    # derived LazyTensors carry it, as in pykeops
    torch.testing.assert_close((K * 2).sum(dim=1, backend=engine), 2 * dense.sum(1, keepdim=True))
    torch.testing.assert_close((1 + K).sum(dim=1, backend=engine), (mask + dense).sum(1, keepdim=True))
    torch.testing.assert_close(K.t().sum(dim=1, backend=engine), dense.sum(0)[:, None])
    lse = K.log().logsumexp(dim=1, backend=engine)
    torch.testing.assert_close(lse, torch.log(dense.sum(1, keepdim=True)))
    # the keyword wins over the attribute
    full = _dense_kernel(x, y)
    dense_ranges = (
        torch.tensor([[0, m]], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),
        torch.tensor([[0, n]], dtype=torch.int32), torch.tensor([[0, n]], dtype=torch.int32),
        torch.tensor([1], dtype=torch.int32), torch.tensor([[0, m]], dtype=torch.int32),
    )
    torch.testing.assert_close(K.sum(dim=1, ranges=dense_ranges, backend=engine), full.sum(1, keepdim=True))


def test_ranges_attribute_gradient_and_solve():
    x, y, b, ranges, mask = _clustered(100, 100, seed=2, eps=0.3)
    x = x.clone().requires_grad_(True)
    K = (-((Vi(x) - Vj(y)) ** 2).sum()).exp()
    K.ranges = ranges
    out = (K @ b).sum()
    (g,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(((_dense_kernel(x2, y) * mask) @ b).sum(), x2)
    torch.testing.assert_close(g, g2)


def test_ranges_attribute_conflict_is_an_error():
    x, y, b, ranges, mask = _clustered(40, 50)
    K1 = Vi(x).sqdist(Vj(y))
    K1.ranges = ranges
    K2 = Vi(x).sqdist(Vj(y))
    other = list(ranges)
    other[2] = other[2].clone()
    other[2][0, 1] = 0
    K2.ranges = tuple(other)
    with pytest.raises(ShapeError, match="ranges"):
        K1 + K2


def test_ranges_attribute_numpy():
    rng = np.random.default_rng(0)
    x, y, b = rng.random((6, 1)), rng.random((5, 1)), rng.random((5, 2))
    K = (-pknp.Vi(x).sqdist(pknp.Vj(y))).exp()
    # rows 0..2 see columns 0..1, rows 3..5 see columns 2..4
    K.ranges = (
        np.array([[0, 3], [3, 6]]), np.array([1, 2]), np.array([[0, 2], [2, 5]]),
        np.array([[0, 2], [2, 5]]), np.array([1, 2]), np.array([[0, 3], [3, 6]]),
    )
    mask = np.zeros((6, 5))
    mask[:3, :2] = 1
    mask[3:, 2:] = 1
    np.testing.assert_allclose(K @ b, (np.exp(-(x - y.T) ** 2) * mask) @ b)


# -- reduction axes, out=, Kahan summation ----------------------------------------------------


def test_negative_dims_as_pykeops():
    x, y = torch.randn(5, 2), torch.randn(4, 2)
    K = Vi(x).sqdist(Vj(y))
    with pytest.raises(FormulaError, match="dim=-2"):
        K.sum(dim=-2)
    with pytest.raises(FormulaError):
        K.logsumexp(dim=-3)
    assert K.sum(-1).shape == K.shape  # -1: the vector dimension (symbolic)
    torch.testing.assert_close(K.sum(0), ((x[:, None] - y[None]) ** 2).sum(-1).sum(0)[:, None])


def test_out_dtype_and_shape_checked():
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    K = Vi(x).sqdist(Vj(y))
    with pytest.raises(DTypeError, match="float32"):
        K.sum(dim=1, out=torch.empty(5, 1, dtype=torch.float32))
    with pytest.raises(ShapeError, match="shape"):
        K.sum(dim=1, out=torch.empty(4, 1, dtype=torch.float64))
    with pytest.raises(ShapeError):
        K.sum(dim=1, out=[0.0] * 5)
    g = Genred("SqDist(x, y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Sum", axis=1)
    with pytest.raises(DTypeError):
        g(x, y, out=torch.empty(5, 1, dtype=torch.float32))
    out = torch.empty(5, 1, dtype=torch.float64)
    res = g(x, y, out=out)
    assert res is out
    torch.testing.assert_close(out, ((x[:, None] - y[None]) ** 2).sum(-1).sum(1, keepdim=True))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_kahan_scheme_compensates(backend):
    vals = torch.tensor([[1e16], [1.0], [-1e16], [1.0]] * 3, dtype=torch.float64)
    one = torch.ones(2, 1, dtype=torch.float64)
    out = (Vj(vals) * Vi(one)).sum(dim=1, backend=backend, sum_scheme="kahan_scheme")
    assert out.flatten().tolist() == [6.0, 6.0]
    # infinities are not turned into NaN by the compensation
    vals[0, 0] = math.inf
    out = (Vj(vals) * Vi(one)).sum(dim=1, backend=backend, sum_scheme="kahan_scheme")
    assert out.flatten().tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("n", [1, 2, 31, 257, 1000])
def test_kahan_scheme_matches_float64(n):
    g = torch.Generator().manual_seed(n)
    v = (torch.randn(n, 1, generator=g) * 10 ** torch.randint(-4, 5, (n, 1), generator=g)).float()
    one = torch.ones(3, 1)
    exact = v.double().sum()
    out = (Vj(v) * Vi(one)).sum(dim=1, backend="reference", sum_scheme="kahan_scheme")
    assert abs(out[0, 0].double() - exact) <= 2 * abs(exact) * 2**-24 + 1e-30


def test_errors_are_polykeops_errors():
    assert issubclass(DTypeError, PolyKeopsError)
