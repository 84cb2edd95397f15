"""Reduction specs as text: an exact, compact serialization (and its inverse).

:func:`spec_to_text` writes a :class:`~polykeops.formula.spec.ReductionSpec` as a
JSON string: the formula DAG as a list of nodes in topological order (each
``[op, [argument positions], params]``, shared sub-trees written once), the
variables and the options.  Parameters keep their types (floats as their exact
hex text, fractions as numerator and denominator), so that
``spec_from_text(spec_to_text(s)) == s`` for every spec: the text is what the
torch custom operator ``polykeops::reduce`` receives as its formula argument.
No ``eval``: the text is read back with ``json`` and rebuilt node by node.
"""

from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache

from ..errors import FormulaError
from .nodes import Node, walk
from .spec import ReductionSpec

#: version of the text format (its first field)
FORMAT = "pk1"


def _param(p):
    if isinstance(p, bool) or p is None or isinstance(p, str):
        return p
    if isinstance(p, int):
        return {"i": str(p)}
    if isinstance(p, float):
        return {"f": p.hex()}
    if isinstance(p, Fraction):
        return {"q": [str(p.numerator), str(p.denominator)]}
    if isinstance(p, tuple):
        return {"t": [_param(x) for x in p]}
    raise FormulaError(f"cannot serialize the formula parameter {p!r} ({type(p).__name__})")


def _unparam(p):
    if not isinstance(p, dict):
        return p
    (kind, value), = p.items()
    if kind == "i":
        return int(value)
    if kind == "f":
        return float.fromhex(value)
    if kind == "q":
        return Fraction(int(value[0]), int(value[1]))
    if kind == "t":
        return tuple(_unparam(x) for x in value)
    raise FormulaError(f"unknown parameter kind {kind!r} in a serialized spec")


def _dag(roots) -> tuple[list, dict]:
    position: dict[Node, int] = {}
    nodes = []
    for root in roots:
        for n in walk(root):
            if n not in position:
                position[n] = len(nodes)
                nodes.append([n.op, [position[a] for a in n.args], [_param(p) for p in n.params], n.dim])
    return nodes, position


def _undag(nodes) -> list[Node]:
    built: list[Node] = []
    for op, args, params, dim in nodes:
        built.append(Node(op, tuple(built[a] for a in args), tuple(_unparam(p) for p in params), dim))
    return built


def formula_to_text(node: Node) -> str:
    """The exact text of one formula (its DAG, as in :func:`spec_to_text`)."""
    nodes, _ = _dag((node,))
    return json.dumps([FORMAT, nodes], separators=(",", ":"))


def formula_from_text(text: str) -> Node:
    """The formula written by :func:`formula_to_text`."""
    fmt, nodes = json.loads(text)
    if fmt != FORMAT:
        raise FormulaError(f"serialized formula format {fmt!r}; this version reads {FORMAT!r}")
    return _undag(nodes)[-1]


def spec_to_text(spec: ReductionSpec) -> str:
    """The exact text of ``spec`` (see the module docstring)."""
    nodes, position = _dag(tuple(spec.formulas) + tuple(spec.variables))
    fields = [
        FORMAT, spec.reduction, nodes,
        [position[f] for f in spec.formulas], [position[v] for v in spec.variables],
        spec.axis, spec.k, spec.dtype, spec.dtype_acc, spec.sum_scheme,
    ]
    if spec.precision != "ieee":  # written only when set: the texts of other specs are unchanged
        fields.append(spec.precision)
    return json.dumps(fields, separators=(",", ":"))


@lru_cache(maxsize=1024)
def spec_from_text(text: str) -> ReductionSpec:
    """The spec written by :func:`spec_to_text` (cached: one parse per distinct text)."""
    try:
        fields = json.loads(text)
        precision = fields.pop() if isinstance(fields, list) and len(fields) == 11 else "ieee"
        fmt, reduction, nodes, forms, vars_, axis, k, dtype, dtype_acc, scheme = fields
    except (ValueError, TypeError) as exc:
        raise FormulaError(f"not a serialized polykeops spec: {text[:80]!r}") from exc
    if fmt != FORMAT:
        raise FormulaError(f"serialized spec format {fmt!r}; this version reads {FORMAT!r}")
    built = _undag(nodes)
    return ReductionSpec(
        reduction=reduction, formulas=tuple(built[f] for f in forms),
        variables=tuple(built[v] for v in vars_),
        axis=axis, k=k, dtype=dtype, dtype_acc=dtype_acc, sum_scheme=scheme,
        precision=precision,
    )
