"""Dense evaluation of a formula through the op table's reference implementations.

``evaluate(formula, xp, values)`` computes the formula on arrays that broadcast
against each other (for instance i-variables of shape ``(..., M, 1, D)`` and
j-variables of shape ``(..., 1, N, D)``).  ``xp`` is an array namespace as
described in :mod:`polykeops.formula.arrays`.  Each distinct sub-formula is
computed once (common sub-expressions are shared).
"""

from __future__ import annotations

from ..errors import FormulaError
from .nodes import Node, walk
from .ops import OPS


def evaluate(formula: Node, xp, values: dict) -> object:
    """Evaluate ``formula``; ``values`` maps each ``Var`` index (or ``Leaf``/``Var`` node) to an array."""
    memo: dict[Node, object] = {}
    for n in walk(formula):
        op = n.op
        if op == "Var":
            try:
                memo[n] = values[n.index] if n.index in values else values[n]
            except KeyError:
                raise FormulaError(f"no value given for variable {n!r}") from None
        elif op == "Leaf":
            try:
                memo[n] = values[n]
            except KeyError:
                raise FormulaError(f"no value given for variable {n!r}") from None
        elif op == "Const":
            memo[n] = xp.const(n.params[0], n.dim)
        elif op == "Zero":
            memo[n] = xp.const(0, n.dim)
        else:
            opdef = OPS[op]
            memo[n] = opdef.ref(xp, *[memo[a] for a in n.args], *n.params)
    return memo[formula]
