"""Composite operations, built from the primitive ops of the op table.

These are the KeOps "sugar" operations.  Each returns a formula made of
primitives, so they need no derivative rule or code generator of their own.
"""

from __future__ import annotations

from ..errors import FormulaError
from . import algebra as A
from .nodes import Node
from .ops import PI


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


def tensorprod(a: Node, b: Node) -> Node:
    return A.node("TensorProd", a, b)


#: name (as written in formula strings) -> builder taking nodes then int parameters
COMPOSITES = {
    "SqNorm2": sqnorm2,
    "Norm2": norm2,
    "Normalize": normalize,
    "SqDist": sqdist,
    "WeightedSqNorm": weightedsqnorm,
    "WeightedSqDist": weightedsqdist,
    "Scalprod": A.scalprod,
    "Sinc": sinc,
}
