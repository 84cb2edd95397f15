"""Composite operations, built from the primitive ops of the op table.

These are the KeOps "sugar" operations.  Each returns a formula made of
primitives, so they need no derivative rule or code generator of their own
(SoftDTW_SqDist is the exception: it builds the primitive ``SoftDTWSqDist``).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from fractions import Fraction

from ..errors import FormulaError
from . import algebra as A
from .derivative import grad as _grad
from .nodes import Leaf, Node, is_const, is_zero, substitute, walk
from .ops import PI
from .simplify import simplify


def _same_dims(name: str, *xs: Node) -> None:
    dims = {x.dim for x in xs}
    if len(dims) > 1:
        shown = ", ".join(f"{x!r} (dim {x.dim})" for x in xs)
        raise FormulaError(f"{name} needs operands of equal dimension, got {shown}")


def sqnorm2(x: Node) -> Node:
    """Squared Euclidean norm: Sum(Square(x))."""
    return A.vsum(A.square(x))


def norm2(x: Node) -> Node:
    """Euclidean norm: Sqrt(Sum(Square(x)))."""
    return A.node("Sqrt", sqnorm2(x))


def normalize(x: Node) -> Node:
    """x / |x| (0 where x = 0, through Rsqrt's convention)."""
    return A.mul(x, A.node("Rsqrt", sqnorm2(x)))


def sqdist(x: Node, y: Node) -> Node:
    """Squared Euclidean distance |x - y|^2."""
    _same_dims("SqDist", x, y)
    return sqnorm2(A.sub(x, y))


def weightedsqnorm(s: Node, x: Node) -> Node:
    """Weighted squared norm: s |x|^2 (s scalar), sum_k s_k x_k^2 (diagonal), or x^T S x."""
    d = x.dim
    if s.dim == 1:
        return A.mul(s, sqnorm2(x))
    if s.dim == d:
        return A.vsum(A.mul(s, A.square(x)))
    if s.dim == d * d:
        return A.scalprod(x, A.node("MatVecMult", s, x))
    raise FormulaError(
        f"WeightedSqNorm: weight dimension {s.dim} must be 1, {d} or {d * d} "
        f"for a vector of dimension {d} ({x!r})"
    )


def weightedsqdist(s: Node, x: Node, y: Node) -> Node:
    """Weighted squared distance: WeightedSqNorm(s, x - y)."""
    _same_dims("WeightedSqDist", x, y)
    return weightedsqnorm(s, A.sub(x, y))


def sinc(x: Node) -> Node:
    """Normalised sinc: sin(pi x) / (pi x), 1 at 0."""
    return A.node("SinXDivX", A.mul(A.const(PI), x))


def elem(x: Node, m: int) -> Node:
    return A.node("Elem", x, params=(m,))


def extract(x: Node, start: int, length: int) -> Node:
    return A.node("Extract", x, params=(start, length))


def one_hot(x: Node, dim: int) -> Node:
    return A.node("OneHot", x, params=(dim,))


def concat(a: Node, b: Node) -> Node:
    return A.node("Concat", a, b)


def matvecmult(a: Node, x: Node) -> Node:
    return A.node("MatVecMult", a, x)


def vecmatmult(x: Node, a: Node) -> Node:
    return A.node("VecMatMult", x, a)


def take(a: Node, k: Node, d: int = 1) -> Node:
    """Row ``round(k)`` of ``a`` seen as a ``(dim(a) / d) x d`` matrix; zeros outside."""
    return A.node("Take", a, k, params=(d,))


def tensorprod(a: Node, b: Node) -> Node:
    return A.node("TensorProd", a, b)


# ---------------------------------------------------------------------------
# pykeops' remaining symbolic operations: TensorDot, Kron, BSpline,
# DifferenceMatrix, SoftDTW_SqDist, GradMatrix, Divergence, Laplacian,
# TraceOperator, Factorize, AutoFactorize
# ---------------------------------------------------------------------------
#
# Vectors hold tensors flattened in row-major (C) order, as in KeOps.  Index
# shuffles are written with Elem/Extract pieces joined by a balanced tree of
# Concat nodes (so every backend and the derivative rules see only primitives).


def _ints(value, what: str) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as a tuple of ints, or a FormulaError."""
    if isinstance(value, Node) or isinstance(value, (bool, str, bytes)):
        raise FormulaError(f"{what} must be a sequence of ints, got {value!r}")
    try:
        return (operator.index(value),)
    except TypeError:
        pass
    try:
        items = tuple(value)
    except TypeError:
        raise FormulaError(f"{what} must be a sequence of ints, got {value!r}") from None
    out = []
    for item in items:
        if isinstance(item, bool):
            raise FormulaError(f"{what} must contain ints, got {item!r}")
        try:
            out.append(operator.index(item))
        except TypeError:
            raise FormulaError(f"{what} must contain ints, got {item!r}") from None
    return tuple(out)


def _int(value, what: str) -> int:
    if isinstance(value, (bool, Node)):
        raise FormulaError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise FormulaError(f"{what} must be an int, got {value!r}") from None


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _strides(dims) -> list[int]:
    """Row-major strides of a tensor of shape ``dims``."""
    out = [1] * len(dims)
    for k in range(len(dims) - 2, -1, -1):
        out[k] = out[k + 1] * dims[k + 1]
    return out


def _piece(x: Node, start: int, length: int) -> Node:
    if start == 0 and length == x.dim:
        return x
    if length == 1:
        return A.node("Elem", x, params=(start,))
    return A.node("Extract", x, params=(start, length))


def _balanced(nodes: list[Node], join) -> Node:
    """``join`` applied as a balanced binary tree over ``nodes`` (kept in order)."""
    nodes = list(nodes)
    while len(nodes) > 1:
        nodes = [
            join(nodes[k], nodes[k + 1]) if k + 1 < len(nodes) else nodes[k]
            for k in range(0, len(nodes), 2)
        ]
    return nodes[0]


def _concat_all(nodes: list[Node]) -> Node:
    return _balanced(nodes, lambda a, b: A.node("Concat", a, b))


def gather(x: Node, indices) -> Node:
    """The vector ``(x[indices[0]], x[indices[1]], ...)``, made of Elem/Extract/Concat."""
    idx = list(indices)
    if not idx:
        raise FormulaError("gather needs at least one index")
    if any(not 0 <= k < x.dim for k in idx):
        raise FormulaError(f"gather: index out of range for a vector of dimension {x.dim}")
    if idx == list(range(x.dim)):
        return x
    runs = []
    start, length = idx[0], 1
    for k in idx[1:]:
        if k == start + length:
            length += 1
        else:
            runs.append((start, length))
            start, length = k, 1
    runs.append((start, length))
    return _concat_all([_piece(x, s, n) for s, n in runs])


def _flat_indices(shape, axes, strides) -> list[int]:
    """Flat (row-major) indices of a tensor visited in the row-major order of ``shape``,
    where axis ``k`` of ``shape`` is axis ``axes[k]`` (of stride ``strides[axes[k]]``)."""
    out = []
    for multi in itertools.product(*(range(d) for d in shape)):
        out.append(sum(i * strides[a] for i, a in zip(multi, axes)))
    return out


def tensordot(
    a: Node,
    b: Node,
    dimfa: Sequence[int],
    dimfb: Sequence[int],
    contfa: Sequence[int],
    contfb: Sequence[int],
    permute: Sequence[int] | None = None,
) -> Node:
    """KeOps' TensorDot: ``a`` (shape ``dimfa``) and ``b`` (shape ``dimfb``), both flattened
    row-major, contracted over the axes ``contfa`` of ``a`` paired with ``contfb`` of ``b``.

    The natural result has the kept axes of ``a`` then those of ``b`` (as
    ``np.tensordot(a, b, (contfa, contfb))``); ``permute`` sends natural axis ``k``
    to output position ``permute[k]`` (so the output is
    ``np.transpose(natural, np.argsort(permute))``, KeOps' convention).  Dimension
    ``prod(dimfa) * prod(dimfb) / prod(contracted dims)**2``.
    """
    dimfa, dimfb = _ints(dimfa, "TensorDot: dimfa"), _ints(dimfb, "TensorDot: dimfb")
    contfa, contfb = _ints(contfa, "TensorDot: contfa"), _ints(contfb, "TensorDot: contfb")
    if not isinstance(a, Node) or not isinstance(b, Node):
        raise FormulaError("TensorDot: the first two arguments must be formulas")
    for name, dims, x in (("dimfa", dimfa, a), ("dimfb", dimfb, b)):
        if not dims or any(d < 1 for d in dims):
            raise FormulaError(f"TensorDot: {name} must be a non-empty list of positive ints, got {dims}")
        if _prod(dims) != x.dim:
            raise FormulaError(
                f"TensorDot: {name}={list(dims)} has {_prod(dims)} entries but the formula "
                f"has dimension {x.dim}"
            )
    if len(contfa) != len(contfb):
        raise FormulaError(
            f"TensorDot: contfa={list(contfa)} and contfb={list(contfb)} must have the same length"
        )
    for name, cont, dims in (("contfa", contfa, dimfa), ("contfb", contfb, dimfb)):
        if len(set(cont)) != len(cont) or any(not 0 <= k < len(dims) for k in cont):
            raise FormulaError(
                f"TensorDot: {name}={list(cont)} must list distinct axes in 0..{len(dims) - 1}"
            )
    if [dimfa[k] for k in contfa] != [dimfb[k] for k in contfb]:
        raise FormulaError(
            f"TensorDot: contracted axes have different sizes: {[dimfa[k] for k in contfa]} "
            f"(of a) and {[dimfb[k] for k in contfb]} (of b)"
        )
    keep_a = [k for k in range(len(dimfa)) if k not in contfa]
    keep_b = [k for k in range(len(dimfb)) if k not in contfb]
    keepdims = [dimfa[k] for k in keep_a] + [dimfb[k] for k in keep_b]
    nkeep = len(keepdims)
    if permute is None:
        permute = tuple(range(nkeep))
    permute = _ints(permute, "TensorDot: permute")
    if sorted(permute) != list(range(nkeep)):
        raise FormulaError(
            f"TensorDot: permute={list(permute)} must be a permutation of 0..{nkeep - 1} "
            f"(one entry per kept axis)"
        )
    contdims = [dimfa[k] for k in contfa]
    sa, sb = _strides(dimfa), _strides(dimfb)
    # two constructions of the same values: the matrix product in the natural order (then
    # the output permutation, as a gather), and the product of the two operands gathered
    # directly in the output order
    natural = _tensordot_natural(a, b, dimfa, dimfb, keep_a, keep_b, contfa, contfb)
    if list(permute) != list(range(nkeep)):
        inverse = sorted(range(nkeep), key=permute.__getitem__)  # output axis i: natural axis inverse[i]
        out_shape = [keepdims[k] for k in inverse]
        natural = gather(natural, _flat_indices(out_shape, inverse, _strides(keepdims)))
    expanded = _tensordot_expanded(
        a, b, keepdims, len(keep_a), permute, keep_a, keep_b, contfa, contfb, contdims, sa, sb
    )
    candidates = [natural, expanded]
    # keep the one whose printed text (the formula seen as a tree) is the smallest
    return min(candidates, key=_tree_size)


def _tree_size(f: Node) -> int:
    """Number of nodes of ``f`` seen as a tree (the length of its text, roughly)."""
    size: dict[Node, int] = {}
    for n in walk(f):
        size[n] = 1 + sum(size[a] for a in n.args)
    return size[f]


def _tensordot_natural(a, b, dimfa, dimfb, keep_a, keep_b, contfa, contfb) -> Node:
    """TensorDot in the natural output order: a as a (kept x contracted) matrix times b as a
    (contracted x kept) matrix."""
    contdims = [dimfa[k] for k in contfa]
    ncont = _prod(contdims)
    na, nb = _prod(dimfa[k] for k in keep_a), _prod(dimfb[k] for k in keep_b)
    am = gather(a, _flat_indices([dimfa[k] for k in keep_a] + contdims, keep_a + list(contfa),
                                 _strides(dimfa)))
    bm = gather(b, _flat_indices(contdims + [dimfb[k] for k in keep_b], list(contfb) + keep_b,
                                 _strides(dimfb)))
    if ncont == 1:
        return A.node("TensorProd", am, bm)
    if na == 1:
        return A.node("VecMatMult", am, bm)
    if nb == 1:
        return A.node("MatVecMult", am, bm)
    return _concat_all([A.node("VecMatMult", _piece(am, p * ncont, ncont), bm) for p in range(na)])


def _tensordot_expanded(a, b, keepdims, nka, permute, keep_a, keep_b, contfa, contfb, contdims,
                        sa, sb) -> Node:
    """TensorDot in the output order directly: for every output entry, the contracted fibres
    of a and b gathered side by side, multiplied, and summed by blocks."""
    nkeep = len(keepdims)
    inverse = sorted(range(nkeep), key=permute.__getitem__)
    out_shape = [keepdims[k] for k in inverse]
    ia, ib = [], []
    for o in itertools.product(*(range(d) for d in out_shape)):
        nat = [0] * nkeep
        for i, v in zip(inverse, o):
            nat[i] = v
        base_a = sum(v * sa[ax] for v, ax in zip(nat[:nka], keep_a))
        base_b = sum(v * sb[ax] for v, ax in zip(nat[nka:], keep_b))
        for c in itertools.product(*(range(d) for d in contdims)):
            ia.append(base_a + sum(v * sa[ax] for v, ax in zip(c, contfa)))
            ib.append(base_b + sum(v * sb[ax] for v, ax in zip(c, contfb)))
    prod = A.mul(gather(a, ia), gather(b, ib))
    ncont = _prod(contdims)
    if ncont == 1:
        return prod
    return A.node("MatVecMult", prod, A.const(1, ncont))


def kron(a: Node, b: Node, dimfa: Sequence[int], dimfb: Sequence[int]) -> Node:
    """Flattened Kronecker product of ``a`` (shape ``dimfa``) and ``b`` (shape ``dimfb``):
    ``np.kron(a.reshape(dimfa), b.reshape(dimfb)).ravel()`` (KeOps' Kron, a TensorDot
    without contraction whose output axes are interleaved a0 b0 a1 b1 ...)."""
    dimfa, dimfb = _ints(dimfa, "Kron: dimfa"), _ints(dimfb, "Kron: dimfb")
    if len(dimfa) != len(dimfb):
        raise FormulaError(
            f"Kron: dimfa={list(dimfa)} and dimfb={list(dimfb)} must have the same length"
        )
    n = len(dimfa)
    permute = tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2))
    return tensordot(a, b, dimfa, dimfb, (), (), permute)


def difference_matrix(x: Node, y: Node) -> Node:
    """All differences ``x_k - y_l``, row-major (index ``k * y.dim + l``), dimension
    ``x.dim * y.dim`` (the layout of TensorProd, with ``-`` in place of ``*``)."""
    if x.dim == 1 or y.dim == 1:
        return A.sub(x, y)
    left = A.node("TensorProd", x, A.const(1, y.dim))
    right = A.node("TensorProd", A.const(1, x.dim), y)
    return A.sub(left, right)


def bspline(knots: Node, x: Node, order: int = 0) -> Node:
    """The B-spline basis functions of order ``order`` for the knots ``knots``, at ``x``.

    Cox-de Boor recursion with KeOps' conventions: order 0 is the indicator of
    ``t_j <= x < t_{j+1}`` (so every function is 0 at the last knot), and a ratio
    ``(x - t_i) / (t_{i+k} - t_i)`` is 0 where ``t_i >= t_{i+k}`` (repeated knots).
    ``x`` has dimension 1; the result has dimension ``knots.dim - order - 1``.
    """
    order = _int(order, "BSpline: order")
    if not isinstance(knots, Node) or not isinstance(x, Node):
        raise FormulaError("BSpline: the knots and the sampling point must be formulas")
    if order < 0:
        raise FormulaError(f"BSpline: the order must be >= 0, got {order}")
    if x.dim != 1:
        raise FormulaError(f"BSpline: the sampling point must be a scalar, got dimension {x.dim}")
    nk = knots.dim
    if nk < order + 2:
        raise FormulaError(
            f"BSpline: order {order} needs at least {order + 2} knots, got a vector of dimension {nk}"
        )
    lo, hi = _piece(knots, 0, nk - 1), _piece(knots, 1, nk - 1)
    basis = A.mul(A.node("LessOrEqual", lo, x), A.node("LessThan", x, hi))
    for k in range(1, order + 1):
        n = nk - k  # ratios omega_{i,k} for i = 0 .. n-1
        lo, hi = _piece(knots, 0, n), _piece(knots, k, n)
        mask = A.node("LessThan", lo, hi)
        # 1 where the knots coincide: both branches stay finite (IfElse evaluates both)
        denom = A.node("IfElse", A.sub(mask, A.const(Fraction(1, 2))), A.sub(hi, lo), A.const(1))
        omega = A.div(A.mul(mask, A.sub(x, lo)), denom)
        size = n - 1
        basis = A.add(
            A.mul(_piece(omega, 0, size), _piece(basis, 0, size)),
            A.mul(A.sub(A.const(1), _piece(omega, 1, size)), _piece(basis, 1, size)),
        )
    return basis


def softdtw_sqdist(x: Node, y: Node, gamma: Node) -> Node:
    """Soft-DTW discrepancy between the sequences ``x`` and ``y`` (their components), with
    the cost ``(x_i - y_j)**2`` and the smoothing ``gamma`` (a scalar, > 0): KeOps'
    SoftDTW_SqDist.  A primitive of the op table (``SoftDTWSqDist(gamma, x, y)``): the
    dynamic programme is not written as a formula (its DAG would have exponentially many
    paths, which text printing and structural comparison would walk)."""
    if not all(isinstance(t, Node) for t in (x, y, gamma)):
        raise FormulaError("SoftDTW_SqDist: the arguments must be formulas")
    if is_const(gamma) and gamma.value <= 0:
        raise FormulaError(f"SoftDTW_SqDist: gamma must be > 0, got {gamma.value}")
    return A.node("SoftDTWSqDist", gamma, x, y)


def _variable(v, what: str) -> Node:
    if not isinstance(v, Node) or v.op not in ("Var", "Leaf"):
        raise FormulaError(f"{what}: can only differentiate with respect to a variable, got {v!r}")
    return v


def _basis(k: int, dim: int) -> Node:
    """The k-th vector of the standard basis of R^dim."""
    if dim == 1:
        return A.const(1)
    return A.node("ElemT", A.const(1), params=(k, dim))


def _temporary(tag: str, dim: int) -> Node:
    """A variable used while a formula is built, substituted away before it is returned."""
    return Leaf(("__polykeops_" + tag + "__", dim), dim, 0)


def grad_matrix(f: Node, v: Node) -> Node:
    """KeOps' GradMatrix: the gradients of the components of ``f`` with respect to ``v``,
    concatenated: component ``k * v.dim + l`` is ``d f_k / d v_l`` (the Jacobian of ``f``
    in row-major order, i.e. its transpose in column-major order); dimension ``f.dim * v.dim``."""
    v = _variable(v, "GradMatrix")
    if f.dim == 1:
        return _grad(f, v, A.const(1))
    e = _temporary("gradmatrix", f.dim)
    g = _grad(f, v, e)
    return _concat_all([simplify(substitute(g, {e: _basis(k, f.dim)})) for k in range(f.dim)])


_LINEAR_OPS = frozenset(
    {"Add", "Subtract", "Minus", "Sum", "SumT", "Elem", "ElemT", "Extract", "ExtractT", "Concat"}
)
_BILINEAR_OPS = frozenset({"Mult", "TensorProd", "MatVecMult", "VecMatMult"})


def _check_linear(f: Node, v: Node, what: str) -> None:
    """Raise a FormulaError unless ``f`` is (structurally) a linear function of ``v``."""
    dep: set[Node] = set()
    for n in walk(f):
        if n == v or any(a in dep for a in n.args):
            dep.add(n)
    if f not in dep:
        if not is_zero(f):
            raise FormulaError(f"{what}: the formula does not depend on {v!r}, so it is not linear in it")
        return
    for n in walk(f):
        if n not in dep or n == v:
            continue
        uses = [a in dep for a in n.args]
        if n.op in _LINEAR_OPS:
            ok = all(u or is_zero(a) for a, u in zip(n.args, uses))
        elif n.op in _BILINEAR_OPS:
            ok = sum(uses) == 1
        elif n.op == "Divide":
            ok = uses == [True, False]
        elif n.op == "IfElse":
            ok = not uses[0] and all(u or is_zero(a) for a, u in zip(n.args[1:], uses[1:]))
        else:
            ok = False
        if not ok:
            raise FormulaError(
                f"{what}: the formula is not linear in {v!r} (its {n.op} node is not)"
            )


def trace_operator(f: Node, v: Node) -> Node:
    """KeOps' TraceOperator: the trace of the linear map ``v -> f`` (``f`` must be linear in
    the variable ``v``, with ``f.dim`` equal to ``v.dim`` or 1; for ``f.dim == 1`` the map is
    a row ``M`` and the result is ``sum_l M_l``).  ``v`` does not appear in the result."""
    v = _variable(v, "TraceOperator")
    if f.dim not in (1, v.dim):
        raise FormulaError(
            f"TraceOperator: the formula has dimension {f.dim}; it must be 1 or {v.dim} "
            f"(the dimension of {v!r})"
        )
    _check_linear(f, v, "TraceOperator")
    terms = []
    for k in range(v.dim):
        fk = simplify(substitute(f, {v: _basis(k, v.dim)}))
        terms.append(fk if f.dim == 1 else elem(fk, k))
    return simplify(_balanced(terms, A.add))


def divergence(f: Node, v: Node) -> Node:
    """KeOps' Divergence: ``sum_k d f_k / d v_k`` (``f`` and ``v`` of the same dimension)."""
    v = _variable(v, "Divergence")
    if f.dim != v.dim:
        raise FormulaError(
            f"Divergence needs a formula of the dimension of the variable: {f.dim} != {v.dim}"
        )
    e = _temporary("divergence", v.dim)
    return trace_operator(_grad(f, v, e), e)


def laplacian(f: Node, v: Node) -> Node:
    """KeOps' Laplacian: ``sum_k d^2 f / d v_k^2`` of a scalar formula ``f``."""
    v = _variable(v, "Laplacian")
    if f.dim != 1:
        raise FormulaError(f"Laplacian needs a scalar formula, got dimension {f.dim}")
    return divergence(_grad(f, v, A.const(1)), v)


def factorize(f: Node, g: Node) -> Node:
    """KeOps' Factorize(f, g): ``f``, computing its sub-formula ``g`` once.

    In polykeops this is the formula ``f`` itself: formulas are DAGs whose equal
    sub-trees are one shared node, and every backend evaluates each distinct node
    once per (i, j) pair, so every common sub-expression is already factorized.
    """
    if not isinstance(g, Node):
        raise FormulaError("Factorize: the arguments must be formulas")
    return f


def auto_factorize(f: Node) -> Node:
    """KeOps' AutoFactorize(f): ``f`` itself (see :func:`factorize`)."""
    return f


#: name (as written in formula strings) -> builder taking nodes then int parameters (or
#: lists of ints, annotated ``Sequence[int]``; parameters with a default are optional)
COMPOSITES = {
    "SqNorm2": sqnorm2,
    "Norm2": norm2,
    "Normalize": normalize,
    "SqDist": sqdist,
    "WeightedSqNorm": weightedsqnorm,
    "WeightedSqDist": weightedsqdist,
    "Scalprod": A.scalprod,
    "Sinc": sinc,
    "TensorDot": tensordot,
    "Kron": kron,
    "BSpline": bspline,
    "DifferenceMatrix": difference_matrix,
    "SoftDTW_SqDist": softdtw_sqdist,
    "GradMatrix": grad_matrix,
    "TraceOperator": trace_operator,
    "Divergence": divergence,
    "Laplacian": laplacian,
    "Factorize": factorize,
    "AutoFactorize": auto_factorize,
}
