"""The simplification pass, applied before code generation.

Rebuilds a formula bottom-up through the smart constructors of
:mod:`polykeops.formula.algebra` (``x * 0``, ``x + 0``, ``x * 1``, ``--x``,
exact constant folding, ``x * x -> Square(x)``, scalar factors merged, linear
ops of zero), repeated until a fixed point.  Common sub-expressions need no
rewrite: equal sub-trees are equal nodes, evaluated once by every backend.
"""

from __future__ import annotations

from . import algebra as A
from .nodes import Node, walk


def simplify_once(f: Node) -> Node:
    memo: dict[Node, Node] = {}
    for n in walk(f):
        if not n.args or n._simple:  # a known fixed point (and so are its arguments)
            memo[n] = n
            continue
        args = tuple(memo[a] for a in n.args)
        out = A.node(n.op, *args, params=n.params)
        memo[n] = out
    return memo[f]


def simplify(f: Node, max_rounds: int = 8) -> Node:
    """The simplified form of ``f`` (same value, same dimension)."""
    for _ in range(max_rounds):
        g = simplify_once(f)
        if g == f:
            # every node of a fixed point is one: later passes skip them (nodes are hash-consed
            # and immutable, so this is a property of the node, shared by every formula using it)
            for n in walk(g):
                object.__setattr__(n, "_simple", True)
            return g
        f = g
    return f
