"""IEEE semantics of the piecewise ops and of their derivatives, on every engine.

Selections (ReLU, Clamp, ClampInt, IfElse, Sign) must select: an infinite or NaN value in the
branch *not* taken never reaches the result, and the derivatives of piecewise ops select the
cotangent instead of multiplying it by a 0/1 factor (an infinite upstream cotangent gives 0 where
the op is flat, as torch does).  Checked against dense torch written directly, on the reference
backend, the generic CPU engine (POLYKEOPS_JIT=off) and the specialised CPU kernels (sync).
"""

from __future__ import annotations

import math

import pytest
import torch

from polykeops.backends.cpu import CpuBackend, generic
from polykeops.torch import LazyTensor, Vi, Vj

INF, NAN = math.inf, math.nan


@pytest.fixture(params=["reference", "cpu-generic", "cpu-kernels"])
def engine(request, monkeypatch):
    """A backend name, with the CPU engine forced to the generic interpreter or to JIT kernels."""
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


def _special(dtype=torch.float64):
    return torch.tensor([[-INF], [INF], [NAN], [-2.5], [-0.0], [0.0], [0.75], [3.0]], dtype=dtype)


def _assert_same(out, ref):
    """Equal values, NaN where the reference has NaN, infinities where it has infinities."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (out, ref)
    ok = ~torch.isnan(ref)
    torch.testing.assert_close(out[ok], ref[ok], rtol=1e-6, atol=1e-12)


def _rowwise(lt_fn, dense_fn, x, engine):
    """sum_j f(x_i) * 1 over one j: the values f(x_i) through a reduction."""
    one = torch.ones(1, 1, dtype=x.dtype)
    out = (lt_fn(Vi(x)) * Vj(one)).sum(dim=1, backend=engine)
    _assert_same(out, dense_fn(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_clamp_sign_select(engine, dtype):
    x = _special(dtype)
    _rowwise(lambda t: t.relu(), torch.relu, x, engine)
    _rowwise(lambda t: t.clamp(-1.5, 2.0), lambda t: t.clamp(-1.5, 2.0), x, engine)
    _rowwise(lambda t: t.clampint(-1, 2), lambda t: t.clamp(-1, 2), x, engine)
    _rowwise(lambda t: t.sign(), torch.sign, x, engine)  # 0 at NaN, as torch
    _rowwise(lambda t: t.step(), lambda t: (t >= 0).to(t.dtype), x, engine)
    _rowwise(lambda t: t.abs(), torch.abs, x, engine)


def test_clamp_with_lazy_bounds(engine):
    x = _special()
    lo = torch.tensor([[-1.0]], dtype=torch.float64)
    hi = torch.tensor([[2.0]], dtype=torch.float64)
    out = Vi(x).clamp(Vj(lo), Vj(hi)).sum(dim=1, backend=engine)
    _assert_same(out, x.clamp(-1.0, 2.0))


def test_ifelse_branch_not_taken_is_infinite(engine):
    x = _special()
    # the branch not taken is +inf or -inf
    out = Vi(x).ifelse(Vi(x).abs(), INF).sum(dim=1, backend=engine)
    ref = torch.where(x >= 0, x.abs(), torch.full_like(x, INF))
    _assert_same(out, ref)
    out = Vi(x).ifelse(-INF, Vi(x) * 2).sum(dim=1, backend=engine)
    ref = torch.where(x >= 0, torch.full_like(x, -INF), 2 * x)
    _assert_same(out, ref)


@pytest.mark.parametrize("m, n", [(1, 1), (2, 31), (31, 257), (257, 1000)])
def test_masked_minimum(engine, m, n):
    """``d.ifelse(d.abs(), inf).min(dim=1)``: the minimum of |d| over the entries with d >= 0."""
    g = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, 1, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    d = Vi(x) - Vj(y)
    out = d.ifelse(d.abs(), INF).min(dim=1, backend=engine)
    dd = x - y.T
    ref = torch.where(dd >= 0, dd.abs(), torch.full_like(dd, INF)).min(dim=1, keepdim=True).values
    _assert_same(out, ref)
    assert not torch.isnan(out).any()


def test_masked_minimum_batched(engine):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 33, 1, generator=g, dtype=torch.float64)
    y = torch.randn(2, 70, 1, generator=g, dtype=torch.float64)
    d = LazyTensor(x[:, :, None, :]) - LazyTensor(y[:, None, :, :])
    out = d.ifelse(d.abs(), INF).min(dim=2, backend=engine)
    dd = x - y.transpose(1, 2)
    ref = torch.where(dd >= 0, dd.abs(), torch.full_like(dd, INF)).min(dim=2, keepdim=True).values
    _assert_same(out, ref)


# -- derivatives at the kinks select --------------------------------------------------------


def _grad_check(engine, lt_fn, dense_fn, x, order=1):
    """Gradient of sum_ij f(x_i, y_j) w.r.t. x, polykeops vs dense torch."""
    y = torch.tensor([[0.5], [-1.0], [2.0]], dtype=x.dtype)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    out = lt_fn(Vi(x1), Vj(y)).sum(dim=1, backend=engine).sum()
    ref = dense_fn(x2, y.T).sum()
    (g1,) = torch.autograd.grad(out, x1, create_graph=order > 1)
    (g2,) = torch.autograd.grad(ref, x2, create_graph=order > 1)
    _assert_same(g1, g2)
    if order > 1:
        (h1,) = torch.autograd.grad(g1.sum(), x1)
        (h2,) = torch.autograd.grad(g2.sum(), x2)
        _assert_same(h1, h2)


def test_relu_gradient_masks_infinite_cotangent(engine):
    # sqrt(relu(x)) at x < 0: sqrt' = inf, relu' = 0 -> torch gives 0
    x = torch.tensor([[-2.0], [-0.5], [1.5], [4.0]], dtype=torch.float64)
    _grad_check(
        engine, lambda a, b: (a.relu() * b.abs()).sqrt(), lambda a, b: (torch.relu(a) * b.abs()).sqrt(), x
    )


def test_clamp_gradient_masks_infinite_cotangent(engine):
    x = torch.tensor([[-2.0], [-0.5], [0.25], [4.0]], dtype=torch.float64)
    _grad_check(engine, lambda a, b: (a.clamp(0.0, 1.0) * b.abs()).sqrt(),
                lambda a, b: (a.clamp(0.0, 1.0) * b.abs()).sqrt(), x)
    _grad_check(engine, lambda a, b: (a.clampint(0, 1) * b.abs()).sqrt(),
                lambda a, b: (a.clamp(0, 1) * b.abs()).sqrt(), x)


def test_ifelse_gradient_masks_infinite_cotangent(engine):
    x = torch.tensor([[-2.0], [-0.5], [0.25], [4.0]], dtype=torch.float64)
    _grad_check(
        engine,
        lambda a, b: (a.ifelse(a, 0.0) * b.abs()).sqrt(),
        lambda a, b: (torch.where(a >= 0, a, torch.zeros_like(a)) * b.abs()).sqrt(),
        x,
    )


def test_conformance_case_atan2_relu(engine):
    """Atan2(-ReLU(x), -NotEqual(x, x)) for x < 0: gradient 0 (was NaN)."""
    x = torch.tensor([[-2.0], [-0.5], [-3.0]], dtype=torch.float64)
    _grad_check(
        engine,
        lambda a, b: (-a.relu()).atan2(-(a != a)) * b,
        lambda a, b: torch.atan2(-torch.relu(a), -(a != a).to(a.dtype)) * b,
        x,
    )


def test_piecewise_second_order(engine):
    x = torch.tensor([[-2.0], [-0.5], [0.25], [1.75], [4.0]], dtype=torch.float64)
    _grad_check(engine, lambda a, b: (a.relu() * b) ** 3, lambda a, b: (torch.relu(a) * b) ** 3, x, order=2)
    _grad_check(engine, lambda a, b: (a.clamp(-1.0, 1.0) - b) ** 2,
                lambda a, b: (a.clamp(-1.0, 1.0) - b) ** 2, x, order=2)
    _grad_check(engine, lambda a, b: (a.abs() * b) ** 2, lambda a, b: (a.abs() * b) ** 2, x, order=2)


def test_abs_and_max_gradients_select(engine):
    """|x| at 0 and the vector max: the cotangent is selected (0 where not chosen), never 0 * inf."""
    x = torch.tensor([[0.0], [-1.0], [2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.ones(1, 1, dtype=torch.float64)
    out = (Vi(x).abs() * Vj(y)).log().sum(dim=1, backend=engine).sum()
    (g,) = torch.autograd.grad(out, x)
    assert g[0, 0].item() == 0.0
    torch.testing.assert_close(g[1:], torch.tensor([[-1.0], [0.5]], dtype=torch.float64))
    v = torch.tensor([[0.0, -1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = (Vi(v).max() * Vj(y)).log().sum(dim=1, backend=engine).sum()
    (g,) = torch.autograd.grad(out, v)
    assert torch.isinf(g[0, 0]) and (g[0, 1:] == 0).all()
