"""Every reduction, both axes, every claimed dtype: random formulas against the dense oracle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.checks import check_forward
from conformance.session import OPTIONS, hypothesis_settings
from conformance.strategies import cases
from polykeops.formula.reductions import REDUCTIONS

DTYPES = ("float16", "float32", "float64")


def claims(backend, dtype, reduction=None):
    """Skip unless the backend claims ``dtype`` (and ``reduction``)."""
    caps = backend.capabilities
    if dtype not in caps.dtypes:
        pytest.skip(f"{backend.label} does not claim {dtype}")
    if reduction is not None and caps.reductions is not None and reduction not in caps.reductions:
        pytest.skip(f"{backend.label} does not claim the {reduction} reduction")
    return caps


@pytest.mark.parametrize("axis", [0, 1], ids=["axis0", "axis1"])
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@hypothesis_settings(1.0)
@given(data=st.data())
def test_reduction(backend, device, dtype, reduction, axis, data):
    """A random formula tree (depth <= 4) reduced with ``reduction`` matches the oracle."""
    caps = claims(backend, dtype, reduction)
    kinds = tuple(backend.array_kinds())
    case = data.draw(
        cases(
            reduction,
            axis,
            dtype,
            tier=OPTIONS.tier,
            batch=caps.batch,
            array_kinds=kinds,
            sum_schemes=tuple(caps.sum_schemes),
        ),
        label="case",
    )
    check_forward(backend, case, device=device)


@pytest.mark.parametrize("large_dim", [64, 200])
@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "Min_ArgMin", "ArgKMin", "SumSoftMaxWeight"])
@hypothesis_settings(0.5)
@given(data=st.data())
def test_large_dimensions(backend, device, reduction, large_dim, data):
    """Vector dimensions 64 and 200 (chunked code paths), float32 and float64."""
    dtype = data.draw(
        st.sampled_from([d for d in ("float32", "float64") if d in backend.capabilities.dtypes]),
        label="dtype",
    )
    caps = claims(backend, dtype, reduction)
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    case = data.draw(
        cases(
            reduction,
            axis,
            dtype,
            tier=OPTIONS.tier,
            batch=caps.batch,
            array_kinds=("torch",) if "torch" in backend.array_kinds() else tuple(backend.array_kinds()),
            max_depth=2,
            large_dim=large_dim,
        ),
        label="case",
    )
    check_forward(backend, case, device=device)
