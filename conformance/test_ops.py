"""Every public op of the op table, alone: forward values and (for smooth ops) gradients.

Parametrised over :func:`polykeops.formula.ops.public_ops`, so an op registered
later is certified here without editing the suite.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from polykeops.formula.ops import OPS, public_ops

from .checks import check_forward, check_gradients
from .session import property_test
from .strategies import _feasible, draw_case, formulas

OP_NAMES = [o.name for o in public_ops()]


@pytest.mark.parametrize("op", OP_NAMES)
@property_test(0.5)
def test_op(backend, device, options, op, data):
    """``op`` applied to variables (arguments kept in its domain), Sum-reduced; gradient if smooth;
    a third of the cases with finite special values (zeros, halves, tiny, subnormal, ties)."""
    caps = backend.capabilities
    dtype = "float64" if "float64" in caps.dtypes else sorted(caps.dtypes)[-1]
    opdef = OPS[op]
    dims = [d for d in (1, 2, 3, 4) if _feasible(op, d, 16)]
    if not dims:
        pytest.skip(f"the suite cannot draw {op} with a result of dimension <= 4")
    forms = formulas("Sum", max_depth=1, ops=[opdef], consts=False, out_dims=dims)
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    kinds = tuple(backend.array_kinds())
    case = draw_case(
        data, caps, "Sum", axis, dtype, tier=options.tier, forms=forms, array_kinds=kinds,
        max_size=options.max_size(100), specials=True,
    )
    check_forward(backend, case, device=device)
    if opdef.smooth and opdef.vjp is not None and "torch" in caps.array_kinds:
        from dataclasses import replace

        check_gradients(backend, replace(case, array_kind="torch"), device=device)
