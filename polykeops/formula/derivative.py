"""Symbolic differentiation of formulas.

* :func:`grad` -- ``Grad(f, v, e)``: the adjoint (vector-Jacobian product)
  ``sum_k e_k d f_k / d v``, a formula of the dimension of ``v`` (KeOps' Grad);
* :func:`diff` -- the directional derivative (Jacobian-vector product)
  ``d f / d v . u``, a formula of the dimension of ``f``.

Both use the derivative rules of the op table and return simplified formulas.
"""

from __future__ import annotations

from ..errors import FormulaError
from . import algebra as A
from .nodes import Leaf, Node, Zero, walk
from .ops import OPS
from .simplify import simplify


def _depends(f: Node, v: Node) -> set[Node]:
    """The nodes of ``f`` whose value depends on ``v``."""
    dep: set[Node] = set()
    for n in walk(f):
        if n == v or any(a in dep for a in n.args):
            dep.add(n)
    return dep


def grad(f: Node, v: Node, e: Node) -> Node:
    """Adjoint of ``f`` with respect to the variable ``v``, applied to the cotangent ``e``."""
    if v.op not in ("Var", "Leaf"):
        raise FormulaError(f"can only differentiate with respect to a variable, got {v!r}")
    if e.dim != f.dim and e.dim != 1:
        raise FormulaError(
            f"Grad: the cotangent {e!r} has dimension {e.dim}, the formula {f!r} has {f.dim}"
        )
    dep = _depends(f, v)
    if f not in dep:
        return Zero(v.dim)
    order = [n for n in walk(f) if n in dep]
    cot: dict[Node, Node] = {f: A.broadcast_to(e, f.dim)}
    for n in reversed(order):
        g = cot.pop(n, None) if n != v else None
        if g is None or n.op in ("Var", "Leaf", "Zero"):
            continue
        rule = OPS[n.op].vjp
        if rule is None:
            continue
        for arg, ga in zip(n.args, rule(n, g)):
            if ga is None or arg not in dep:
                continue
            if ga.dim != arg.dim:
                ga = A.unbroadcast(ga, arg.dim)
            prev = cot.get(arg)
            cot[arg] = ga if prev is None else A.add(prev, ga)
    return simplify(cot.get(v, Zero(v.dim)))


_DIFF_COTANGENT = "__polykeops_diff_cotangent__"


def diff(f: Node, v: Node, u: Node) -> Node:
    """Directional derivative of ``f`` along ``u`` with respect to the variable ``v``."""
    if u.dim != v.dim:
        raise FormulaError(f"diff: direction {u!r} has dimension {u.dim}, variable {v!r} has {v.dim}")
    e = Leaf((_DIFF_COTANGENT, f.dim), f.dim, 0)
    # grad(f, v, e) = J^T e is linear in e; its adjoint in e applied to u is J u.
    return grad(grad(f, v, e), e, u)
