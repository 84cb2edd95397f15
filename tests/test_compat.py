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
from polykeops.numpy.cluster import grid_cluster as np_grid_cluster
from polykeops.torch import Genred, LazyTensor, Vi, Vj
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


# -- pykeops idioms ------------------------------------------------------------------------------


def _gauss(x, y, s):
    return torch.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * s)


def test_raw_scalar_tensors_are_parameters():
    x, y = torch.randn(31, 2, dtype=torch.float64), torch.randn(257, 2, dtype=torch.float64)
    D = Vi(x).sqdist(Vj(y))
    half = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close((-D * half).exp().sum(1), _gauss(x, y, 0.5).sum(1, keepdim=True))
    sigma = torch.tensor([2.0], dtype=torch.float64)
    gamma = 1 / sigma**2
    torch.testing.assert_close((-D * gamma).exp().sum(1), _gauss(x, y, 0.25).sum(1, keepdim=True))
    torch.testing.assert_close((-(gamma * D)).exp().sum(1), _gauss(x, y, 0.25).sum(1, keepdim=True))
    # differentiable with respect to the raw parameter, as a Pm variable
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((-D * s).exp().sum(1).sum(), s)
    s2 = s.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(_gauss(x, y, s2).sum(), s2)
    torch.testing.assert_close(g, g2)
    # NumPy: 0-d arrays, (1,) arrays and NumPy scalars
    xn, yn = x.numpy(), y.numpy()
    Dn = pknp.Vi(xn).sqdist(pknp.Vj(yn))
    ref = _gauss(x, y, 0.5).sum(1, keepdim=True).numpy()
    np.testing.assert_allclose((-Dn * np.array(0.5)).exp().sum(1), ref)
    np.testing.assert_allclose((-(np.array([0.5]) * Dn)).exp().sum(1), ref)
    np.testing.assert_allclose((-Dn * np.float64(0.5)).exp().sum(1), ref)
    with pytest.raises(FormulaError, match="2-D"):
        D * torch.ones(31, 2, dtype=torch.float64)


def test_reduction_keywords_of_pykeops(engine):
    x, y = torch.randn(31, 2), torch.randn(257, 2)
    b = torch.randn(257, 3)
    K = (-Vi(x).sqdist(Vj(y))).exp()
    ref = _gauss(x, y, 1.0) @ b
    for kw in ({"backend": engine}, {"backend": engine, "sum_scheme": "kahan_scheme"},
               {"backend": engine, "dtype_acc": "float64"}, {"backend": engine, "use_double_acc": True},
               {"backend": engine, "enable_chunks": False, "use_fast_math": False, "device_id": -1}):
        torch.testing.assert_close(K.__matmul__(b, **kw), ref, rtol=1e-5, atol=1e-5)
    out = torch.empty(31, 3)
    assert K.__matmul__(b, out=out, backend=engine) is out
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out = torch.empty(31, 1)
    assert K.sum(dim=1, out=out, backend=engine) is out
    torch.testing.assert_close(out, _gauss(x, y, 1.0).sum(1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_logsumexp_other_is_the_weight():
    x, y = torch.randn(31, 2, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    w = torch.rand(40, 1, dtype=torch.float64) + 0.1
    F = -Vi(x).sqdist(Vj(y))
    ref = torch.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) + torch.log(w.T), dim=1)[:, None]
    torch.testing.assert_close(F.logsumexp(dim=1, other=Vj(w)), ref)
    torch.testing.assert_close(F.logsumexp(1, weight=Vj(w)), ref)
    with pytest.raises(FormulaError):
        F.logsumexp(1, weight=Vj(w), other=Vj(w))


def test_solve_call_false_returns_a_callable():
    x = torch.randn(50, 2, dtype=torch.float64)
    b = torch.randn(50, 2, dtype=torch.float64)
    K = (-Vi(x).sqdist(Vj(x))).exp()
    pending = K.solve(Vi(b), alpha=0.5, call=False)
    assert callable(pending) and not isinstance(pending, torch.Tensor)
    a = pending()
    dense = _gauss(x, x, 1.0)
    torch.testing.assert_close(0.5 * a + dense @ a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, K.solve(b, alpha=0.5))


def test_names_of_pykeops_tutorials():
    import polykeops
    from polykeops import config
    from polykeops.common.gpu_utils import get_gpu_number
    from polykeops.numpy.utils import log_sum_exp, np_kernel, squared_distances
    from polykeops.torch.utils import torch_kernel

    assert isinstance(config.gpu_available, bool)
    assert polykeops.config.gpu_available == (get_gpu_number() > 0)
    rng = np.random.default_rng(1)
    x, y = rng.random((7, 3)), rng.random((5, 3))
    sq = ((x[:, None] - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(x, y), sq, atol=1e-12)
    np.testing.assert_allclose(np_kernel(x, y, 0.7, "gaussian"), np.exp(-sq / 0.49), atol=1e-12)
    np.testing.assert_allclose(np_kernel(x, y, 0.7, "cauchy"), 1 / (1 + sq / 0.49), atol=1e-12)
    np.testing.assert_allclose(log_sum_exp(sq, axis=1), np.log(np.exp(sq).sum(1)))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    lap = torch.exp(-torch.from_numpy(sq).sqrt() / 0.7)
    torch.testing.assert_close(torch_kernel(tx, ty, 0.7, "laplacian"), lap)
    K = Vi(tx).sqdist(Vj(ty))
    assert K._shape == (7, 5, 1) and K.shape == (7, 5)
    assert (Vi(tx) - Vj(ty))._shape == (7, 5, 3)


def test_genred_counts_variables_as_written():
    g = Genred("Var(0,1,0) * 0 + Var(1,1,1) + Var(2,2,2) * 0", [], reduction_op="Sum", axis=1)
    x, y, p = torch.randn(3, 1), torch.randn(4, 1), torch.randn(2)
    torch.testing.assert_close(g(x, y, p), y.sum().expand(3, 2))
    with pytest.raises(FormulaError, match="3 array"):
        g(x, y)
    g2 = Genred("x * 0 + y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="Sum", axis=1)
    torch.testing.assert_close(g2(x, y), y.sum().expand(3, 1))


def test_grid_cluster_voxels_as_pykeops():
    """torch bins from the data's minimum (pykeops 2.3), NumPy from 0."""
    x = torch.tensor([[0.05], [0.13], [0.26], [0.31], [0.52]], dtype=torch.float64)
    # from the minimum 0.05 with size 0.1: voxels 0, 0, 2, 2, 4 -> labels 0, 0, 1, 1, 2
    assert grid_cluster(x, 0.1).tolist() == [0, 0, 1, 1, 2]
    # from 0: voxels 0, 1, 2, 3, 5 -> labels 0, 1, 2, 3, 4
    assert np_grid_cluster(x.numpy(), 0.1).tolist() == [0, 1, 2, 3, 4]


def test_list_of_numbers_is_a_parameter():
    x = torch.randn(31, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(20, 3, dtype=torch.float64)
    c = [1.0, -2.0, 0.5]
    out = (Vi(x) - LazyTensor(c)).abs().sum(-1).sum(1)
    (Vi(x) - c).abs()  # a raw list combines too
    dense = (x - torch.tensor(c, dtype=torch.float64)).abs().sum(-1, keepdim=True)
    torch.testing.assert_close(out, dense)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.sign(x - torch.tensor(c, dtype=torch.float64)))
    K = (-(Vi(x) - Vj(y)).sqnorm2() * LazyTensor([0.5])).exp()
    torch.testing.assert_close(K.sum(1), _gauss(x, y, 0.5).sum(1, keepdim=True))
    xn = x.detach().numpy().astype(np.float32)
    outn = (pknp.Vi(xn) * [2.0, 2.0, 2.0]).sum(-1).sum(1)
    assert outn.dtype == np.float32
    np.testing.assert_allclose(outn, 2 * xn.sum(-1, keepdims=True), rtol=1e-6)
    dense_lt = (Vi(x.detach()[:2]) * LazyTensor([1.0, 2.0, 3.0])).dense()
    expected = x.detach()[:2] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(dense_lt.reshape(2, 3), expected)
    with pytest.raises(FormulaError):
        LazyTensor([])


def test_complex_out_checked():
    z = torch.randn(4, 1, 2, dtype=torch.complex128)
    w = torch.randn(1, 3, 2, dtype=torch.complex128)
    K = LazyTensor(z) * LazyTensor(w)
    out = torch.empty(4, 2, dtype=torch.complex128)
    assert K.sum(1, out=out) is out
    torch.testing.assert_close(out, (z * w).sum(1))
    with pytest.raises(DTypeError):
        K.sum(1, out=torch.empty(4, 2, dtype=torch.complex64))


def test_top_level_helpers_of_pykeops(monkeypatch, tmp_path, capsys):
    import polykeops

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path / "a"))
    assert polykeops.get_build_folder() == str(tmp_path / "a")
    polykeops.set_build_folder(tmp_path / "b")
    assert polykeops.get_build_folder() == str(tmp_path / "b")
    monkeypatch.setenv("POLYKEOPS_VERBOSE", "1")  # restored after the test
    polykeops.set_verbose(False)
    assert polykeops.config.verbose() is False
    assert polykeops.test_numpy_bindings() is True
    assert polykeops.test_torch_bindings() is True
    assert "working" in capsys.readouterr().out
    assert isinstance(polykeops.clean_pykeops(), list)
    polykeops.set_build_folder(None)
