"""Smart constructors: build formula nodes with local simplifications.

These functions are what derivative rules, the simplifier, the parser and the
front ends use to build formulas.  Each one applies only *local*, always-valid
rewrites (``x * 0 -> 0``, ``x + 0 -> x``, folding of exact constants,
``x * x -> Square(x)``), so formulas stay small while they are built.  The
rewrites never change the vector dimension of the result.
"""

from __future__ import annotations

from fractions import Fraction

from ..errors import FormulaError
from .nodes import Const, Node, Zero, _short, is_const, is_zero
from .optable import OPS

_EXACT = (int, Fraction)
#: largest |exponent| of Pow (a C int in the compiled engines)
MAX_POW = (1 << 31) - 1


def _exact(n: Node) -> bool:
    return n.op in ("Const", "Zero") and isinstance(n.value, _EXACT)


def _bdim(a: Node, b: Node, what: str) -> int:
    if a.dim == b.dim or b.dim == 1:
        return a.dim
    if a.dim == 1:
        return b.dim
    raise FormulaError(
        f"{what}: incompatible vector dimensions {a.dim} and {b.dim} "
        f"(operands {a!r} and {b!r}); dimensions must be equal or one of them 1"
    )


def broadcast_to(x: Node, dim: int) -> Node:
    """``x`` (of dimension 1 or ``dim``) as a vector of dimension ``dim``."""
    if x.dim == dim:
        return x
    if x.dim != 1:
        raise FormulaError(f"cannot broadcast {x!r} of dimension {x.dim} to dimension {dim}")
    if is_const(x):
        return Const(x.value, dim)
    return Node("SumT", (x,), (dim,))


def unbroadcast(x: Node, dim: int) -> Node:
    """Adjoint of :func:`broadcast_to`: sum the components of ``x`` when ``dim`` is 1."""
    if x.dim == dim:
        return x
    if dim == 1:
        return vsum(x)
    return broadcast_to(x, dim)


def const(value, dim: int = 1) -> Node:
    return Const(value, dim)


def _strip_sumt(a: Node, b: Node) -> tuple[Node, Node]:
    """Drop an explicit broadcast (SumT) that the other operand makes implicit."""
    if a.op == "SumT" and b.dim == a.dim:
        a = a.args[0]
    if b.op == "SumT" and a.dim == b.dim:
        b = b.args[0]
    return a, b


def add(a: Node, b: Node) -> Node:
    d = _bdim(a, b, "addition")
    a, b = _strip_sumt(a, b)
    if is_zero(a):
        return broadcast_to(b, d)
    if is_zero(b):
        return broadcast_to(a, d)
    if _exact(a) and _exact(b):
        return Const(a.value + b.value, d)
    if a == b:
        return mul(Const(2), a)
    if b.op == "Minus":
        return sub(a, b.args[0])
    return Node("Add", (a, b))


def sub(a: Node, b: Node) -> Node:
    d = _bdim(a, b, "subtraction")
    a, b = _strip_sumt(a, b)
    if is_zero(b):
        return broadcast_to(a, d)
    if is_zero(a):
        return broadcast_to(neg(b), d)
    if _exact(a) and _exact(b):
        return Const(a.value - b.value, d)
    if a == b:
        return Zero(d)
    if b.op == "Minus":
        return add(a, b.args[0])
    return Node("Subtract", (a, b))


def neg(a: Node) -> Node:
    if is_zero(a):
        return a
    if _exact(a):
        return Const(-a.value, a.dim)
    if a.op == "Minus":
        return a.args[0]
    if a.op == "Subtract":
        return Node("Subtract", (a.args[1], a.args[0]))
    return Node("Minus", (a,))


def mul(a: Node, b: Node) -> Node:
    d = _bdim(a, b, "multiplication")
    a, b = _strip_sumt(a, b)
    if is_zero(a) or is_zero(b):
        return Zero(d)
    if _exact(a) and _exact(b):
        return Const(a.value * b.value, d)
    if is_const(a, 1):
        return broadcast_to(b, d)
    if is_const(b, 1):
        return broadcast_to(a, d)
    if is_const(a, -1):
        return broadcast_to(neg(b), d)
    if is_const(b, -1):
        return broadcast_to(neg(a), d)
    if _exact(b) and not _exact(a):
        a, b = b, a
    if _exact(a) and b.op == "Mult" and _exact(b.args[0]):
        return mul(Const(a.value * b.args[0].value, a.dim), b.args[1])
    if a == b:
        return Node("Square", (a,))
    if a.op == "Minus" and b.op == "Minus":
        return mul(a.args[0], b.args[0])
    return Node("Mult", (a, b))


def div(a: Node, b: Node) -> Node:
    d = _bdim(a, b, "division")
    a, b = _strip_sumt(a, b)
    if is_zero(a):
        return Zero(d)
    if is_const(b, 1):
        return broadcast_to(a, d)
    if _exact(b) and not is_zero(b):
        return mul(Const(Fraction(1) / Fraction(b.value), b.dim), a)
    if _exact(a) and _exact(b) and not is_zero(b):
        return Const(Fraction(a.value) / Fraction(b.value), d)
    if is_const(a, 1):
        return Node("Inv", (b,)) if b.dim == d else Node("Inv", (broadcast_to(b, d),))
    return Node("Divide", (a, b))


def square(a: Node) -> Node:
    if is_zero(a):
        return a
    if _exact(a):
        return Const(a.value * a.value, a.dim)
    if a.op == "Minus":
        a = a.args[0]
    if a.op == "Sqrt":
        return a.args[0]
    return Node("Square", (a,))


def power(a: Node, n: int) -> Node:
    """``a ** n`` for an integer exponent ``n``."""
    if n == 0:
        return Const(1, a.dim)
    if n == 1:
        return a
    if n == 2:
        return square(a)
    if n == -1:
        return Node("Inv", (a,))
    if not isinstance(n, int) or isinstance(n, bool) or abs(n) > MAX_POW:
        raise FormulaError(f"Pow: the exponent must be an int in [-{MAX_POW}, {MAX_POW}], got {_short(n)}")
    if _exact(a) and not (is_zero(a) and n < 0):
        v = Fraction(a.value)
        if abs(v) != 1 and v != 0:
            bits = abs(n) * max(v.numerator.bit_length(), v.denominator.bit_length(), 2)
            if bits > 2 * 1100:  # the exact power is far outside float64's range: refuse, fast
                raise FormulaError(
                    f"Pow: the constant {_short(a.value)} ** {n} is outside float64's range"
                )
        return Const(v**n, a.dim)
    return Node("Pow", (a,), (int(n),))


def vsum(a: Node) -> Node:
    """Sum of the components of ``a`` (dimension 1)."""
    if a.dim == 1:
        return a
    if is_zero(a):
        return Zero(1)
    if _exact(a):
        return Const(a.value * a.dim, 1)
    if a.op == "SumT":
        return mul(Const(a.dim), a.args[0])
    return Node("Sum", (a,))


def scalprod(a: Node, b: Node) -> Node:
    """Scalar product ``(a | b)``; the dimensions must be equal."""
    if a.dim != b.dim:
        raise FormulaError(
            f"scalar product (a|b) needs equal dimensions, got {a.dim} for {a!r} and {b.dim} for {b!r}"
        )
    return vsum(mul(a, b))


def node(op: str, *args: Node, params: tuple = ()) -> Node:
    """Generic constructor: the node ``op(*args)`` after the op's own folding rule, if any."""
    opdef = OPS.get(op)
    if opdef is None:
        raise FormulaError(f"unknown operation {op!r}")
    if opdef.build is not None:
        return opdef.build(*args, *params)
    if opdef.linear and any(is_zero(a) for a in args):
        return Zero(Node(op, args, params).dim)
    return Node(op, args, params)
