"""Inner products computed by blocks in the generic CPU engine (generic.py, pk_generic_ipblock.h):
results against dense float64 references written with torch, the generic engine forced
(POLYKEOPS_JIT=off), at sizes crossing the engine's row blocks and tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polykeops.backends.cpu import generic
from polykeops.formula import ReductionSpec
from polykeops.formula.parser import parse_reduction_formula
from polykeops.torch import LazyTensor

pytestmark = pytest.mark.skipif(not generic.available()[0], reason="generic engine not built")

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def jit_off(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "off")


def lazy(x, y):
    return LazyTensor(x[..., :, None, :]), LazyTensor(y[..., None, :, :])


def d2_ref(x, y):
    return ((x.double()[..., :, None, :] - y.double()[..., None, :, :]) ** 2).sum(-1)


def spec_of(formula, D, reduction="Sum", **kw):
    f, vs = parse_reduction_formula(formula, [f"x = Vi(0, {D})", f"y = Vj(1, {D})", "b = Vj(2, 3)",
                                              f"w = Pm(3, {D})"])
    return ReductionSpec(reduction=reduction, formulas=(f,), variables=vs, **kw).canonical()


@pytest.mark.parametrize(("formula", "blocks"), [
    ("SqDist(x, y)", [(1, 1, 1.0)]),
    ("Sum(Square(x - y)) * b", [(1, 1, 1.0)]),
    ("Exp(-Sum(Square(y - x) * 2)) * b", [(1, 1, 2.0)]),  # a constant factor: the scale
    ("(x | y)", [(0, 1, 1.0)]),
    ("(x * w | y)", [(0, 1, 1.0)]),  # an i-only expression as operand
    ("SqNorm2(x + y)", [(1, 1, 1.0)]),  # the distance between x and -y
    ("SqDist(x, y) + (x | y)", [(1, 1, 1.0), (0, 1, 1.0)]),
])
def test_program_has_blocks(formula, blocks):
    for D, want in ((15, []), (16, blocks)):
        prog = generic.compile_program(spec_of(formula, D))
        blocks_ = prog.blocks[: prog.struct.nblocks]
        got = [(int(b["kind"]), int(b["count"]), float(b["scale"])) for b in blocks_]
        assert sorted(got) == sorted(want if D >= 16 else []), (formula, D)
        assert all(int(b["dim"]) == D for b in prog.blocks[: prog.struct.nblocks])


def test_inner_nodes_not_computed_and_matvec_block():
    prog = generic.compile_program(spec_of("SqDist(x, y)", 64, reduction="ArgKMin", k=3))
    assert prog.struct.n_lane == 0 and prog.struct.nblocks == 1  # no x - y lane slot of 64 components
    f, vs = parse_reduction_formula("MatVecMult(a, y)", ["a = Vi(0, 80)", "y = Vj(1, 16)"])
    prog = generic.compile_program(ReductionSpec(reduction="Sum", formulas=(f,), variables=vs).canonical())
    (b,) = prog.blocks[: prog.struct.nblocks]
    assert (b["count"], b["dim"], b["xc"], b["xk"], b["yc"], b["yk"]) == (5, 16, 16, 1, 0, 1)


def test_matvec_of_many_outputs_keeps_its_scratch_bounded():
    """A matvec-like product of 4096 outputs (a [4096][BI][TJ] block) feeding a scalar: fewer rows
    per work item, so that the block stays within generic.BLOCK_BYTES; results against torch."""
    f, vs = parse_reduction_formula("Exp(-Sum(MatVecMult(a, y)) / 100)",
                                    ["a = Vi(0, 65536)", "y = Vj(1, 16)"])
    prog = generic.compile_program(ReductionSpec(reduction="Sum", formulas=(f,), variables=vs).canonical())
    (b,) = prog.blocks[: prog.struct.nblocks]
    assert b["count"] == 4096
    assert 4096 * prog.struct.BI * prog.struct.TJ * 4 <= generic.BLOCK_BYTES
    g = torch.Generator().manual_seed(11)
    a = torch.randn(70, 4096 * 16, generator=g)
    y = torch.randn(150, 16, generator=g)
    mv = LazyTensor(a[:, None, :]).matvecmult(LazyTensor(y[None, :, :]))
    out = (-mv.sum(-1) / 100).exp().sum(dim=1, backend="cpu")
    want = (-(a.double().view(70, 4096, 16) @ y.double().T).sum(1) / 100).exp().sum(1, keepdim=True)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=0)


SIZES = [(1, 1), (2, 31), (31, 257), (257, 1000), (1000, 2)]


@pytest.mark.parametrize("D", [16, 128, 256])
def test_rows_per_item_grow_with_the_dimension(D):
    """Programs of products of D >= 128 take 128 or 256 rows per work item (generic.BLOCK_ROWS);
    kNN and Gaussian K @ b at sizes crossing those items and the tiles, against torch."""
    rows = next(r for least, r in generic.BLOCK_ROWS if D >= least)
    prog = generic.compile_program(spec_of("SqDist(x, y)", D, reduction="ArgKMin", k=5))
    assert prog.struct.BI == rows
    g = torch.Generator().manual_seed(D)
    x = torch.randn(2 * rows + 3, D, generator=g)
    y = torch.randn(3 * prog.struct.TJ + 5, D, generator=g)
    b = torch.randn(len(y), 2, generator=g)
    xi, yj = lazy(x, y)
    d2 = d2_ref(x, y)
    idx = ((xi - yj) ** 2).sum(-1).argKmin(5, dim=1, backend="cpu")
    assert torch.equal(idx, d2.topk(5, dim=1, largest=False).indices)
    out = ((-((xi - yj) ** 2).sum(-1) / D).exp() @ b)
    torch.testing.assert_close(out.double(), torch.exp(-d2 / D) @ b.double(), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [16, 17, 64, 100, 256])
def test_sum_lse_knn_and_dot(D, dtype):
    g = torch.Generator().manual_seed(D)
    for M, N in SIZES:
        if D == 256 and M * N > 50_000:
            continue
        x = torch.randn(M, D, generator=g, dtype=dtype)
        y = torch.randn(N, D, generator=g, dtype=dtype)
        b = torch.randn(N, 3, generator=g, dtype=dtype)
        xi, yj = lazy(x, y)
        bj = LazyTensor(b[None])
        d2 = d2_ref(x, y)
        tol = TOL[dtype]
        # Gaussian K @ b
        out = ((-((xi - yj) ** 2).sum(-1) / D).exp() * bj).sum(dim=1, backend="cpu")
        ref = torch.exp(-d2 / D) @ b.double()
        torch.testing.assert_close(out.double(), ref, rtol=tol * 10, atol=tol * 10)
        # LogSumExp of dot products
        lse = (xi | yj).logsumexp(dim=1, backend="cpu")
        ref = torch.logsumexp(x.double() @ y.double().T, dim=1, keepdim=True)
        torch.testing.assert_close(lse.double(), ref, rtol=tol * 100, atol=tol * 100 * D)
        # kNN: the indices of the K nearest (random data: no ties at these tolerances)
        k = min(10, N)
        idx = ((xi - yj) ** 2).sum(-1).argKmin(k, dim=1, backend="cpu")
        assert torch.equal(idx, d2.topk(k, dim=1, largest=False).indices), (M, N)
        # matvec-like: x_i as 2 x (D/2)... a (2D) i-matrix times y_j
        if D % 2 == 0:
            a = torch.randn(M, 2 * D, generator=g, dtype=dtype)
            ai = LazyTensor(a[:, None, :])
            mv = ai.matvecmult(yj).sum(dim=1, backend="cpu")
            ref = torch.einsum("mrd,nd->mr", a.double().view(M, 2, D), y.double())
            torch.testing.assert_close(mv.double(), ref, rtol=tol * 10, atol=tol * 10 * D)


def test_batched_and_parameter_operand():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 70, 33, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 131, 33, generator=g, dtype=torch.float64)
    w = torch.randn(33, generator=g, dtype=torch.float64)
    b = torch.randn(2, 1, 131, 2, generator=g, dtype=torch.float64)
    xi, yj = lazy(x, y)
    bj = LazyTensor(b[..., None, :, :])
    out = ((-((xi * LazyTensor(w) - yj) ** 2).sum(-1) / 33).exp() * bj).sum(dim=3, backend="cpu")
    ref = torch.exp(-d2_ref(x * w, y) / 33) @ b
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def _same(out, ref, dtype):
    """NaN where the reference is NaN, the same infinities, close finite values."""
    np.testing.assert_array_equal(torch.isnan(out).numpy(), torch.isnan(ref).numpy())
    inf = torch.isinf(ref)
    assert torch.equal(out[inf], ref[inf])
    finite = torch.isfinite(ref)
    assert torch.isfinite(out[finite]).all()
    torch.testing.assert_close(out[finite], ref[finite], rtol=TOL[dtype] * 10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_values_as_difference_form(dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 24, generator=g, dtype=dtype)
    y = torch.randn(300, 24, generator=g, dtype=dtype)
    x[3, 5] = float("inf")
    x[7, 0] = float("nan")
    x[9, 1] = 1e19 if dtype == torch.float32 else 1e154  # |x|^2 beyond the expansion's range
    ones = LazyTensor(torch.ones(300, 1, dtype=dtype)[None])
    for yy in (y, y.flip(0)):  # the special rows against a full and a short last tile
        xi, yj = lazy(x, yy)
        out = (((xi - yj) ** 2).sum(-1) * ones).sum(dim=1, backend="cpu")
        _same(out, (x[:, None, :] - yy[None, :, :]).pow(2).sum(-1).sum(1, keepdim=True), dtype)
    assert torch.isnan(out[7]) and torch.isinf(out[3]).all()
    mins = ((xi - yj) ** 2).sum(-1).min(dim=1, backend="cpu")
    _same(mins, (x[:, None, :] - yy[None, :, :]).pow(2).sum(-1).min(1, keepdim=True).values, dtype)
    assert torch.isfinite(mins[9]).all()
    # columns: -inf in y (distance +inf for every row), then a NaN
    y[11, 2] = float("-inf")
    xi, yj = lazy(x[10:], y)
    d = ((xi - yj) ** 2).sum(-1)
    full = (x[10:, None, :] - y[None, :, :]).pow(2).sum(-1)
    _same(d.max(dim=1, backend="cpu"), full.max(1, keepdim=True).values, dtype)
    _same(d.min(dim=1, backend="cpu"), full.min(1, keepdim=True).values, dtype)
    assert (d.argmax(dim=1, backend="cpu") == 11).all()
    y[250, 9] = float("nan")
    xi, yj = lazy(x[10:], y)
    d = ((xi - yj) ** 2).sum(-1)
    assert torch.isnan(d.min(dim=1, backend="cpu")).all()
    assert (d.argmin(dim=1, backend="cpu") == 250).all()  # NaN first, as the pair-by-pair code
    inner = (xi | yj).sum(dim=1, backend="cpu")
    assert torch.isnan(inner).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_duplicates_do_not_cancel(dtype):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(300, 64, generator=g, dtype=dtype) * 30 + 100  # large norms: the expansion cancels
    x = y[:200] + 1e-3 * torch.randn(200, 64, generator=g, dtype=dtype)
    xi, yj = lazy(x, y)
    vals, idx = ((xi - yj) ** 2).sum(-1).Kmin_argKmin(2, dim=1, backend="cpu")
    assert torch.equal(idx[:, 0], torch.arange(200))
    ref = ((x - y[:200]) ** 2).sum(-1)
    assert (vals[:, 0] >= 0).all()
    # the difference form: the error of the distance itself, not of |x|^2 + |y|^2
    torch.testing.assert_close(vals[:, 0], ref, rtol=TOL[dtype] * 10, atol=0)
    same = ((LazyTensor(y[:, None, :]) - LazyTensor(y[None])) ** 2).sum(-1).min(dim=1, backend="cpu")
    assert (same == 0).all()


def test_block_sparse_ranges():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(150, 32, generator=g)
    y = torch.randn(400, 32, generator=g)
    b = torch.randn(400, 1, generator=g)
    ranges_i = torch.tensor([[0, 70], [70, 150]], dtype=torch.int32)
    slices_i = torch.tensor([1, 3], dtype=torch.int32)
    redranges_j = torch.tensor([[0, 100], [100, 300], [350, 400]], dtype=torch.int32)
    slices_j = torch.tensor([1, 2, 3], dtype=torch.int32)
    redranges_i = torch.tensor([[0, 70], [70, 150], [70, 150]], dtype=torch.int32)
    xi, yj = lazy(x, y)
    K = (-((xi - yj) ** 2).sum(-1) / 32).exp() * LazyTensor(b[None])
    K.ranges = (ranges_i, slices_i, redranges_j, redranges_j, slices_j, redranges_i)
    out = K.sum(dim=1, backend="cpu")
    mask = torch.zeros(150, 400, dtype=torch.bool)
    mask[:70, :100] = True
    mask[70:, 100:300] = True
    mask[70:, 350:] = True
    ref = (torch.exp(-d2_ref(x, y) / 32) * mask) @ b.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_gaussian_gradients_against_torch():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(60, 64, generator=g, dtype=torch.float64) / 8).requires_grad_(True)
    y = (torch.randn(129, 64, generator=g, dtype=torch.float64) / 8).requires_grad_(True)
    b = torch.randn(129, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    xi, yj = lazy(x, y)
    a = ((-((xi - yj) ** 2).sum(-1)).exp() * LazyTensor(b[None])).sum(dim=1, backend="cpu")
    grads = torch.autograd.grad((a**2).sum(), [x, y, b])
    ref = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    refs = torch.autograd.grad((ref**2).sum(), [x, y, b])
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
