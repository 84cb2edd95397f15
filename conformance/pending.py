"""Known bugs of polykeops' own backends that are being fixed elsewhere: the one place that filters them.

``ISSUE11_PENDING``: the C rules of piecewise ops (issue 11) -- ``ReLU(x)`` is computed as
``x * 0`` for ``x <= 0`` (a negative zero where torch gives +0, and NaN for ``x = -inf``),
``Clamp``/``IfElse``/``Step``/``Sign`` at infinities and the derivatives of piecewise ops
(0 * inf = NaN where torch masks).  While it is True, the generic tests reject the few drawn
cases whose result depends on these points (a ``ReLU`` feeding an op that sees the sign of
zero), and the dedicated special-value tests mark those cases ``xfail(strict=False)``.  Set it
to False (or delete this switch and its uses) once issue 11 is merged: every such case must
then pass.
"""

from __future__ import annotations

from polykeops.formula.nodes import walk

ISSUE11_PENDING = False

#: ops whose result differs for +0 and -0 (after a ReLU that returns -0), or whose derivative is
#: singular at 0 (0 x inf = NaN in the derivative of a ReLU that clamps to 0)
SIGNED_ZERO_SENSITIVE = frozenset(
    {"Atan2", "Inv", "Divide", "Rsqrt", "Pow", "Powf", "SqrtInv", "SinXDivX", "Log", "Sqrt", "XLogX"}
)
#: the piecewise ops of issue 11
PIECEWISE = frozenset({"ReLU", "Step", "Clamp", "ClampInt", "IfElse", "Abs", "Sign"})


def issue11_sensitive(spec) -> bool:
    """Whether the formulas of ``spec`` may hit the known issue-11 semantics on finite data (a
    piecewise op together with an op that sees the sign of zero or is singular at 0)."""
    if not ISSUE11_PENDING:
        return False
    ops = {n.op for f in spec.formulas for n in walk(f)}
    return bool(ops & PIECEWISE) and bool(ops & SIGNED_ZERO_SENSITIVE)


def issue11_xfail(reason: str):
    """Marks for a test parameter that hits issue 11 (none once ``ISSUE11_PENDING`` is False)."""
    import pytest

    if not ISSUE11_PENDING:
        return ()
    return (pytest.mark.xfail(strict=False, reason=f"issue 11: {reason}"),)


#: ops that produce exact zeros (indicators, piecewise ops, rounding)
ZERO_MAKERS = PIECEWISE | frozenset(
    {"Equal", "NotEqual", "LessThan", "GreaterThan", "LessOrEqual", "GreaterOrEqual", "OneHot",
     "Round", "Floor", "Mod"}
)
#: ops whose result depends on the sign of a zero argument
SIGN_OF_ZERO = frozenset({"Atan2", "Inv", "Divide", "Rsqrt", "Pow", "Powf", "SqrtInv"})


def signed_zero_ambiguous(spec) -> bool:
    """Whether an exact zero (an indicator, a piecewise op, and sums or products of them, e.g.
    ``VecMatMult(Equal(x, y), M)``) may reach an op that sees the sign of zero.  IEEE leaves the
    sign of such a zero to the order of the operations (``0 + -0 = +0``, ``-0 + -0 = -0``), so two
    correct backends may give ``atan2(+-0, -1) = +-pi``: out of the suite's scope (rejected),
    whatever issue 11 decides."""
    ops = {n.op for f in spec.formulas for n in walk(f)}
    return bool(ops & ZERO_MAKERS) and bool(ops & SIGN_OF_ZERO)
