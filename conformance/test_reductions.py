"""Every reduction, both axes, every claimed dtype: random formulas against the dense oracle."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from polykeops.formula.reductions import REDUCTIONS

from .checks import check_forward
from .session import AXES, claims, property_test
from .strategies import DATA_KINDS, draw_case

DTYPES = ("float16", "bfloat16", "float32", "float64")


@AXES
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@property_test(1.0)
def test_reduction(backend, device, options, dtype, reduction, axis, data):
    """A random formula tree (depth <= 4) reduced with ``reduction`` matches the oracle: sizes up to
    a few thousand (tile boundaries weighted), K from 1 to 64 and K = N, up to 3 batch dimensions,
    sorted / clustered / wide-range data, finite special values (zeros, halves, tiny, subnormal,
    exact ties) at drawn positions."""
    caps = claims(backend, reduction, dtype)
    kinds = tuple(backend.array_kinds())
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, array_kinds=kinds,
        sum_schemes=tuple(caps.sum_schemes), data_kinds=tuple(DATA_KINDS), specials=True,
    )
    check_forward(backend, case, device=device)


@pytest.mark.parametrize("large_dim", [20, 64, 200, 257])
@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "Min_ArgMin", "ArgKMin", "SumSoftMaxWeight"])
@property_test(0.5)
def test_large_dimensions(backend, device, options, reduction, large_dim, data):
    """Vector dimensions 20 to 257 (chunked code paths), float32 and float64."""
    dtype = data.draw(
        st.sampled_from([d for d in ("float32", "float64") if d in backend.capabilities.dtypes]),
        label="dtype",
    )
    caps = claims(backend, reduction, dtype)
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    kinds = ("torch",) if "torch" in backend.array_kinds() else tuple(backend.array_kinds())
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, array_kinds=kinds, max_depth=2,
        large_dim=large_dim,
    )
    check_forward(backend, case, device=device)
