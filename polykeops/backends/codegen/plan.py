"""What each sub-formula depends on, and where a map-reduce engine computes it.

A reduction over j evaluates its formulas for every pair (i, j).  A sub-formula
that depends on i only is the same for every j of a row: it is computed once per
row (or block of rows); one that depends on j only is computed once per tile of
columns and shared by the rows; one that depends on neither, once per call.
The CPU kernels, the generic engine and the CUDA kernels all place their code by
these *phases*; this module computes them once.
"""

from __future__ import annotations

from ...formula.nodes import CAT_I, CAT_J, Node, dependencies, walk  # (dependencies: re-exported)

#: phases of a node: depends on nothing (parameters and constants only), on i only,
#: on j only, on i and j
UNIFORM, ROW, TILE, LANE = "uniform", "row", "tile", "lane"


def phase(dep: frozenset) -> str:
    """The phase of a node that depends on the categories ``dep``."""
    if CAT_I in dep:
        return LANE if CAT_J in dep else ROW
    return TILE if CAT_J in dep else UNIFORM


def phases(formulas) -> dict[Node, str]:
    """node -> its phase, for every node of ``formulas``."""
    return {n: phase(d) for n, d in dependencies(formulas).items()}


def ordered(formulas) -> list[Node]:
    """The distinct nodes of ``formulas``, children first (formula after formula)."""
    seen = set()
    order = []
    for f in formulas:
        for n in walk(f):
            if n not in seen:
                seen.add(n)
                order.append(n)
    return order


def frontier(formulas, inner, keep) -> list[Node]:
    """Hoisting: the nodes satisfying ``keep`` that an ``inner`` node reads, or that are roots, in
    :func:`ordered` order.  With ``inner`` the nodes of a deeper loop (e.g. those depending on i
    and j) and ``keep`` those of an outer one (e.g. depending on j only), these are the values
    the outer loop computes and stores for the inner one."""
    read: set[Node] = set()
    for n in ordered(formulas):
        if inner(n):
            read.update(n.args)
    roots = set(formulas)
    return [n for n in ordered(formulas) if keep(n) and (n in read or n in roots)]


def postorder(roots, stop) -> list[Node]:
    """Distinct nodes reachable from ``roots`` without crossing ``stop`` nodes, children first."""
    order: list[Node] = []
    seen: set[Node] = set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
                continue
            if n in seen or stop(n):
                continue
            seen.add(n)
            stack.append((n, True))
            stack.extend((a, False) for a in reversed(n.args) if a not in seen)
    return order


def computed_between(roots, known) -> list[Node]:
    """The computed (non-leaf) nodes reachable from ``roots`` without crossing ``known`` nodes,
    children first: what remains to compute once the ``known`` values are available."""
    return postorder(roots, stop=lambda n: n in known or n.is_leaf)
