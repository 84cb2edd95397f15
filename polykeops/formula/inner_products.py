"""Inner products between an i-side and a j-side vector, found in a formula.

Distances and kernels between high-dimensional features (embeddings, descriptors:
D = 16 to 1000s) spend almost all their time in D-long inner products computed for
every (i, j) pair.  Computed pair by pair, each multiply-add loads both operands; a
BLAS-style micro-kernel computes a whole block of them (several rows i x several
columns j per register tile), loading each operand once per tile.  This module finds
those inner products in a formula, for any backend (CPU register blocking, GPU tensor
cores); it knows no array library and renders no code.

What is found
-------------
A *lane* node (it depends on i and on j) of one of these shapes, where ``x`` depends
on i (and maybe on parameters) but not on j, ``y`` on j (and maybe parameters) but not
on i, both of dimension ``D >= min_dim``:

* ``Sum(Square(Subtract(x, y)))`` -- a squared distance (also written ``SqDist(x, y)``,
  ``SqNorm2(x - y)``, ``((x - y) ** 2).sum()``: all build this node); ``y - x``, and
  ``x + y`` (the distance between ``x`` and ``-y``) too.  Kind ``"sqdist"``.
* ``Sum(Mult(x, y))`` -- a dot product (``(x | y)``, ``(x * y).sum()``).  Kind ``"dot"``.
* ``MatVecMult(A, v)`` / ``VecMatMult(v, A)`` with one operand i-side and the other
  j-side -- ``count`` dot products of dimension ``D`` at once (matvec-like).  Kind ``"dot"``
  with ``count > 1`` and a ``layout`` telling where the ``count`` vectors sit in the
  matrix operand.

A constant factor inside the ``Sum`` (``Sum(c * Square(x - y))``, as the algebra writes
``Sum(Square(x - y) * 2)``) is returned as ``scale``.

The operands are formula nodes: a plain variable (``x_i``) or an i-only / j-only
expression (``x_i * w`` for a parameter ``w``, ``-y_j``...), which a backend evaluates
once per row / once per column (not per pair) before computing the block of inner
products.

How a backend uses it
---------------------
For each :class:`InnerProduct` ``p`` of ``find_inner_products(spec.formulas)``, on a
block of rows I x a tile of columns J:

1. evaluate ``p.x`` for the rows of I (a ``[|I|][D * count]`` array, or the variable's
   own memory) and ``p.y`` for the columns of J (typically the tile's packed
   ``[D][|J|]`` layout);
2. compute ``G[i][j] = sum_k x_i[k] y_j[k]`` for the block (the micro-kernel: a
   GEMM ``X Y^T``); for ``"sqdist"``, also the row norms ``|x_i|^2`` and column norms
   ``|y_j|^2`` and form ``|x_i|^2 + |y_j|^2 - 2 G[i][j]``;
3. multiply by ``p.scale`` and use the result as the value of ``p.node`` in the rest of
   the formula (which then no longer reads the D-long operands through that node).

Accuracy (the backend decides; see README "Precision"): the D-sum is reordered (as in
any BLAS).  The expansion ``|x|^2 + |y|^2 - 2 x.y`` of a squared distance cancels when
``x ~ y``: its absolute error is about ``eps * (|x|^2 + |y|^2)`` instead of
``eps * |x - y|^2``, so a near-zero distance may come out slightly negative (clamp at 0)
or noisy.  It also turns special values wrong: ``x = inf`` gives ``inf - inf = NaN`` where
``(x - y)^2`` gives ``inf``.  A backend that uses the expansion must therefore fall back
to the difference form ``sum_k (x_k - y_k)^2`` where a norm is not finite (inf, NaN, or
overflow), so that NaN propagates and infinities stay infinite.

Interface: :class:`InnerProduct`, :func:`find_inner_products`, :func:`between_variables`,
:func:`group_by_operand`, :data:`MIN_DIM`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .nodes import CAT_I, CAT_J, CAT_P, Node, dependencies, walk

#: default smallest dimension D worth a block micro-kernel (below it the pair-by-pair code wins)
MIN_DIM = 16

SQDIST, DOT = "sqdist", "dot"
#: where the ``count`` vectors of a matvec-like product sit in its matrix operand:
#: ``"rows"``: vector r is ``A[r * D : (r + 1) * D]``; ``"columns"``: vector c is ``A[c::count]``
ROWS, COLUMNS = "rows", "columns"


@dataclass(frozen=True)
class InnerProduct:
    """One inner product (or ``count`` of them) between an i-side and a j-side operand.

    ``node`` is the formula node whose value is, per (i, j) pair and component r < count::

        scale * sum_k (x[k] - y[k])^2          (kind "sqdist", count == 1)
        scale * sum_k X_r[k] * Y_r[k]          (kind "dot")

    where ``X_r`` is ``x`` itself when ``x`` is a vector of dimension ``dim``, else the
    r-th vector of the matrix ``x`` (``matrix`` == "x", laid out as ``layout`` says), and
    likewise for ``y``.
    """

    node: Node  # the node of the formula that this computes
    kind: str  # SQDIST or DOT
    x: Node  # i-side operand: depends on i (and maybe parameters), not on j
    y: Node  # j-side operand: depends on j (and maybe parameters), not on i
    dim: int  # D: the length of each inner product
    scale: int | Fraction | float = 1
    count: int = 1  # number of inner products (node.dim); > 1 for matvec-like products
    matrix: str = ""  # "x" or "y": the operand holding count vectors ("" when count == 1)
    layout: str = ""  # ROWS or COLUMNS (when count > 1)

    @property
    def pairs_flops(self) -> int:
        """Multiply-adds per (i, j) pair."""
        return self.dim * self.count


def _side(dep: frozenset) -> int | None:
    """CAT_I for an i-only node, CAT_J for a j-only one, None otherwise."""
    dep = dep - {CAT_P}
    if dep == {CAT_I}:
        return CAT_I
    if dep == {CAT_J}:
        return CAT_J
    return None


def _split_scale(n: Node):
    """``(scale, core)``: ``n`` is ``Const * core`` (a uniform constant factor) or ``core``."""
    if n.op == "Mult" and len(n.args) == 2:
        a, b = n.args
        for c, core in ((a, b), (b, a)):
            if c.op == "Const":
                return c.params[0], core
    if n.op == "Minus":
        s, core = _split_scale(n.args[0])
        return -s, core
    return 1, n


def _orient(a: Node, b: Node, deps):
    """``(x, y)`` with x the i-side operand, or None."""
    sa, sb = _side(deps[a]), _side(deps[b])
    if sa == CAT_I and sb == CAT_J:
        return a, b
    if sa == CAT_J and sb == CAT_I:
        return b, a
    return None


def _match(n: Node, deps, min_dim: int) -> InnerProduct | None:
    if CAT_I not in deps[n] or CAT_J not in deps[n]:
        return None
    if n.op == "Sum":
        scale, core = _split_scale(n.args[0])
        D = core.dim
        if D < min_dim or D != n.args[0].dim:
            return None
        if core.op == "Square":
            d = core.args[0]
            if d.op in ("Subtract", "Add") and d.args[0].dim == D and d.args[1].dim == D:
                xy = _orient(d.args[0], d.args[1], deps)
                if xy is None:
                    return None
                x, y = xy
                if d.op == "Add":  # |x + y|^2 = |x - (-y)|^2
                    y = Node("Minus", (y,))
                return InnerProduct(n, SQDIST, x, y, D, scale)
            return None
        if core.op == "Mult":
            a, b = core.args
            if a.dim != D or b.dim != D:
                return None
            xy = _orient(a, b, deps)
            if xy is None:
                return None
            return InnerProduct(n, DOT, xy[0], xy[1], D, scale)
        return None
    if n.op in ("MatVecMult", "VecMatMult"):
        m, v = n.args if n.op == "MatVecMult" else (n.args[1], n.args[0])
        D = v.dim
        if D < min_dim:
            return None
        xy = _orient(m, v, deps)
        if xy is None:
            return None
        x, y = xy
        return InnerProduct(n, DOT, x, y, D, 1, n.dim, "x" if x is m else "y",
                            ROWS if n.op == "MatVecMult" else COLUMNS)
    return None


def find_inner_products(formulas, min_dim: int = MIN_DIM) -> list[InnerProduct]:
    """The inner products of dimension >= ``min_dim`` between an i-side and a j-side operand in
    ``formulas`` (a node or a sequence of nodes), each node once, children first."""
    if isinstance(formulas, Node):
        formulas = (formulas,)
    deps = dependencies(formulas)
    found: list[InnerProduct] = []
    seen: set[Node] = set()
    for f in formulas:
        for n in walk(f):
            if n in seen:
                continue
            seen.add(n)
            p = _match(n, deps, min_dim)
            if p is not None:
                found.append(p)
    return found


def between_variables(p: InnerProduct) -> bool:
    """Whether ``p`` is one product (``count == 1``) between an i-variable and a j-variable, the
    operands read in place by the backends' block paths (no expression evaluated first)."""
    return (p.count == 1 and p.x.op == "Var" and p.x.params[2] == CAT_I
            and p.y.op == "Var" and p.y.params[2] == CAT_J)


def group_by_operand(products) -> dict[Node, list[InnerProduct]]:
    """The products grouped by their j-side operand (one block of ``y`` serves the group: stack
    the i-side operands and compute the group as one matrix product)."""
    groups: dict[Node, list[InnerProduct]] = {}
    for p in products:
        groups.setdefault(p.y, []).append(p)
    return groups
