"""Block-sparse reductions: pykeops' ``ranges`` 6-tuple against the dense oracle restricted to the kept pairs.

``ranges = (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)``:
the rows of i-cluster ``k`` are reduced over the j intervals
``redranges_j[slices_i[k - 1]:slices_i[k]]`` only; the last three arrays
describe the transposed problem (reductions over i, gradients reduced over the
other axis).  Rows in no i-range, or whose intervals are all empty, hold the
reduction of nothing (``Reduction.empty_outputs``: 0 for sums, -inf for
LogSumExp, NaN for SumSoftMaxWeight, +inf and index -1 for Min/ArgMin/KMin...);
a K-reduction over fewer than K kept pairs fills the missing ranks the same way.
Selected indices are in the original numbering.

Structures are drawn by :func:`conformance.strategies.block_sparse` (clusters
leaving rows and columns out, empty clusters, clusters listed out of order,
keep masks with all-false rows, all-true, single blocks, bands, one structure
per batch).  Backends that do not claim ``capabilities.ranges`` skip every test.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
import torch
from hypothesis import strategies as st

from polykeops.formula import algebra as A
from polykeops.formula.composite import sqdist
from polykeops.formula.nodes import Const, Var
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

from .checks import check_forward, check_gradients
from .ranges_mask import ranges_mask
from .session import AXES, claims, property_test
from .strategies import block_sparse, blocks_from, case_from, draw_case

DTYPES = ("float16", "bfloat16", "float32", "float64")
DIFFERENTIABLE = sorted(name for name, red in REDUCTIONS.items() if red.differentiable)


def with_ranges(case, ranges):
    """``case`` reduced with block-sparse ``ranges`` (whose two halves must describe the same pairs)."""
    mask = ranges_mask(ranges.arrays(), case.M, case.N)
    mask_t = ranges_mask(ranges.swapped().arrays(), case.N, case.M)
    if not torch.equal(mask, mask_t.transpose(-1, -2)):  # pragma: no cover - a bug of the strategy
        raise AssertionError(f"conformance suite bug: the halves of {ranges!r} disagree")
    return replace(case, ranges=ranges)


def _dtype(caps, wanted=DTYPES):
    return [d for d in wanted if d in caps.dtypes]


@AXES
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@property_test(0.6)
def test_ranges_forward(backend, device, options, reduction, axis, data):
    """A random formula reduced over a random block-sparse structure matches the masked oracle."""
    caps = claims(backend, reduction, ranges=True)
    dtype = data.draw(st.sampled_from(_dtype(caps)), label="dtype")
    case = draw_case(
        data,
        caps,
        reduction,
        axis,
        dtype,
        tier=options.tier,
        array_kinds=tuple(backend.array_kinds()),
        sum_schemes=tuple(caps.sum_schemes),
    )
    ranges = data.draw(block_sparse(case.M, case.N, case.batch), label="ranges")
    check_forward(backend, with_ranges(case, ranges), device=device)


def needs_torch(backend, reduction):
    caps = claims(backend, reduction, ranges=True)
    if "torch" not in caps.array_kinds:
        pytest.skip(f"{backend.label} does not claim torch tensors (gradients go through torch.autograd)")
    return caps


@AXES
@pytest.mark.parametrize("reduction", DIFFERENTIABLE)
@property_test(0.6)
def test_ranges_gradient(backend, device, options, reduction, axis, data):
    """Gradients w.r.t. every argument through a block-sparse reduction (the gradient reductions
    get the same ranges, swapped when they reduce over the other axis) vs the masked oracle.

    Rows that keep no pair (or fewer than K, for KMin) get no gradient from the missing pairs.
    """
    caps = needs_torch(backend, reduction)
    dtype = data.draw(st.sampled_from(_dtype(caps, ("float32", "float64"))), label="dtype")
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, max_depth=3, max_size=options.max_size(120)
    )
    ranges = data.draw(block_sparse(case.M, case.N, case.batch), label="ranges")
    check_gradients(backend, with_ranges(case, ranges), device=device)


# ---------------------------------------------------------------------------
# deterministic structures
# ---------------------------------------------------------------------------


def _kernel_spec(reduction, dtype, axis=1, k=None):
    """-|x_i - y_j|^2 / 2 (with weights b_j for Sum and the weighted reductions)."""
    x, y, b = Var(0, 3, 0), Var(1, 3, 1), Var(2, 2, 1 if axis == 1 else 0)
    f = A.mul(Const(Fraction(-1, 2), 1), sqdist(x, y))
    if reduction == "Sum":
        forms, variables = (A.mul(A.node("Exp", f), b),), (x, y, b)
    elif reduction in ("SumSoftMaxWeight", "Max_SumShiftExpWeight"):
        forms, variables = (f, b), (x, y, b)
    elif reduction == "LogSumExpWeight":
        forms, variables = (f, A.add(A.node("Exp", b), Const(1, 1))), (x, y, b)
    else:
        forms, variables = (f,), (x, y)
    return ReductionSpec(reduction, forms, variables, axis=axis, k=k, dtype=dtype)


def _fixed_dtype(caps):
    return "float64" if "float64" in caps.dtypes else _dtype(caps)[0]


EMPTY_REDUCTIONS = ["Sum", "LogSumExp", "SumSoftMaxWeight", "Max_SumShiftExp", "Min_ArgMin", "KMin_ArgKMin"]


@AXES
@pytest.mark.parametrize("reduction", EMPTY_REDUCTIONS)
def test_ranges_without_blocks(backend, device, reduction, axis):
    """Zero i-ranges and zero j-ranges (empty arrays): every output row is the reduction of nothing."""
    caps = claims(backend, reduction, ranges=True)
    k = 3 if REDUCTIONS[reduction].uses_k else None
    spec = _kernel_spec(reduction, _fixed_dtype(caps), axis=axis, k=k)
    case = case_from(spec, 33, 65, seed=11, array_kind="torch" if "torch" in caps.array_kinds else "numpy")
    check_forward(backend, with_ranges(case, blocks_from([], [], [])), device=device, deterministic=True)


#: per-batch structures (batch of 2): different clusters, keep masks and numbers of intervals,
#: rows and columns left out, an i-cluster that keeps nothing
PER_BATCH = (
    [[(0, 20), (20, 57)], [(0, 5), (9, 30), (30, 50)]],
    [[(0, 15), (15, 40), (40, 70)], [(0, 64), (64, 70)]],
    [[[True, False, True], [False, True, True]], [[False, False], [True, True], [True, False]]],
)


@AXES
@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "Min_ArgMin", "KMin_ArgKMin", "SumSoftMaxWeight"])
def test_ranges_per_batch(backend, device, reduction, axis):
    """Ranges with a leading batch dimension: each batch element has its own block structure."""
    caps = claims(backend, reduction, ranges=True)
    if not caps.batch:
        pytest.skip("batch dimensions not claimed")
    k = 4 if REDUCTIONS[reduction].uses_k else None
    spec = _kernel_spec(reduction, _fixed_dtype(caps), axis=axis, k=k)
    per = [(2,), (1,), (2,)][: len(spec.variables)]
    kind = "torch" if "torch" in caps.array_kinds else "numpy"
    case = case_from(spec, 57, 70, seed=5, batch=(2,), per_var_batch=per, array_kind=kind)
    ranges = blocks_from(*PER_BATCH, batch=(2,))
    check_forward(backend, with_ranges(case, ranges), device=device, deterministic=True)
    if reduction in ("Sum", "LogSumExp", "SumSoftMaxWeight") and "torch" in caps.array_kinds:
        check_gradients(backend, with_ranges(case, ranges), device=device, deterministic=True)


@pytest.mark.parametrize("reduction", ["Min", "KMin"])
def test_selection_gradient_over_nothing(backend, device, reduction):
    """Min/KMin gradients where some rows keep fewer than K pairs (index -1): no gradient from them."""
    caps = needs_torch(backend, reduction)
    k = 4 if reduction == "KMin" else None
    spec = _kernel_spec(reduction, _fixed_dtype(caps), k=k)
    case = case_from(spec, 30, 40, seed=3)
    # rows 0..9 keep nothing, rows 10..19 keep 3 < K pairs, rows 20..29 keep 25
    ranges = blocks_from(
        [(0, 10), (10, 20), (20, 30)], [(0, 3), (3, 28)], [[False, False], [True, False], [True, True]]
    )
    check_gradients(backend, with_ranges(case, ranges), device=device, deterministic=True)
