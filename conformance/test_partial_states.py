"""Partial states (``capabilities.partial_states``): every reduction computed piece by piece along
the reduced axis -- each piece's state from the backend's ``evaluate_states``, the states combined
with the reduction's own rules and finalized -- matches the oracle, as the distributed layers
(Dask, torch.distributed) use it.  The cuts are drawn from the case's seed: pieces of one column,
empty pieces, pieces shorter than K."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from polykeops.formula.reductions import REDUCTIONS

from .checks import check_forward
from .runner import run_forward_split
from .session import AXES, claims, property_test
from .strategies import block_sparse, draw_case
from .test_ranges import with_ranges


def _claims_states(backend, reduction, ranges=False):
    caps = claims(backend, reduction, ranges=ranges)
    if not getattr(caps, "partial_states", False):
        pytest.skip(f"{backend.label} does not claim partial states (capabilities.partial_states)")
    return caps


def _case(backend, caps, reduction, axis, options, data):
    dtype = data.draw(st.sampled_from(sorted(d for d in caps.dtypes if d in ("float32", "float64"))),
                      label="dtype")
    return draw_case(data, caps, reduction, axis, dtype, tier=options.tier,
                     array_kinds=tuple(backend.array_kinds()), sum_schemes=tuple(caps.sum_schemes))


@AXES
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@property_test(0.5)
def test_partial_states(backend, device, options, reduction, axis, data):
    caps = _claims_states(backend, reduction)
    case = _case(backend, caps, reduction, axis, options, data)
    check_forward(backend, case, device=device, runner=run_forward_split)


@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "SumSoftMaxWeight", "Min_ArgMin", "KMin_ArgKMin"])
@property_test(0.5)
def test_partial_states_with_ranges(backend, device, options, reduction, data):
    caps = _claims_states(backend, reduction, ranges=True)
    case = _case(backend, caps, reduction, 1, options, data)
    ranges = data.draw(block_sparse(case.M, case.N, case.batch), label="ranges")
    check_forward(backend, with_ranges(case, ranges), device=device, runner=run_forward_split)
