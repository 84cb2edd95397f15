"""Compile-only certification: the generated code of every drawn formula compiles.

For backends with a compile hook (see :mod:`.compile_hooks`): the
built-in ``cuda`` backend is checked with NVRTC on machines without a GPU.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from polykeops.formula.printing import to_string
from polykeops.formula.reductions import REDUCTIONS

from .session import property_test
from .strategies import cases

REDS = sorted(REDUCTIONS)


def _dtypes(target):
    caps = target.capabilities
    return sorted(caps.dtypes) if caps is not None else ["float32", "float64"]


def _compile(target, specs, batch_dims):
    try:
        target.compile(specs, batch_dims=batch_dims)
    except Exception as exc:
        lines = [
            f"polykeops conformance: {target.label} failed to compile generated code "
            f"({len(specs)} specs, {batch_dims} batch dims): {type(exc).__name__}"
        ]
        lines += [f"  {spec}" for spec in specs]
        lines.append(str(exc)[-4000:])
        lines += [
            "Reproduce, one spec at a time:",
            "-" * 60,
            "from polykeops.formula.parser import parse_reduction_formula",
            "from polykeops.formula.spec import ReductionSpec",
            f"from {__package__}.compile_hooks import compile_target, instance_even_if_unavailable",
            f"target = compile_target({target.name!r}, instance_even_if_unavailable({target.name!r}))",
        ]
        for spec in specs:
            forms = ", ".join(f"parse_reduction_formula({to_string(f)!r}, [])[0]" for f in spec.formulas)
            lines.append(
                f"spec = ReductionSpec({spec.reduction!r}, ({forms},), "
                f"parse_reduction_formula({to_string(spec.formulas[0])!r}, [])[1], k={spec.k!r}, "
                f"dtype={spec.dtype!r})  # variables: {spec.variables}"
            )
            lines.append(f"target.compile([spec], batch_dims={batch_dims})")
        lines.append("-" * 60)
        raise AssertionError("\n".join(lines)) from exc


@property_test(0.2, full=0.5)
def test_generated_code_compiles(target, options, data):
    """Two random specs per reduction (random dtype, axis, sizes), compiled in one go per batch rank
    (``target``: each compile-only target of the session, or None)."""
    if target is None:
        pytest.skip("no backend under test has a compile hook (see conformance/compile_hooks.py)")
    if not target.available:
        pytest.skip(f"cannot compile for {target.label} here: {target.reason}")
    per = 2 if not options.full else 4
    groups = {0: [], 1: []}
    for red in REDS:
        for _ in range(per):
            dtype = data.draw(st.sampled_from(_dtypes(target)), label="dtype")
            axis = data.draw(st.sampled_from([0, 1]), label="axis")
            case = data.draw(cases(red, axis, dtype, tier=options.tier, max_size=50), label=f"{red} case")
            groups[min(1, len(case.batch))].append(case.spec.canonical())
    for batch_dims, specs in groups.items():
        if specs:
            _compile(target, specs, batch_dims)
