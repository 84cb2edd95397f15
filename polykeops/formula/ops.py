"""The op table: every formula operation, with its rules side by side.

Each entry (:class:`~polykeops.formula.optable.OpDef`, registered in the table
of :mod:`polykeops.formula.optable`) gives, for one operation:

* ``arity`` and the names of its static parameters;
* ``dim``: the dimension rule (vector dimension of the result from those of the
  arguments and the parameters), which also validates the operands;
* ``vjp``: the derivative rule, as a vector-Jacobian product: given the node and
  a cotangent ``g`` (a node of the node's dimension), the cotangent of each
  argument (``None`` where the op does not depend differentiably on it);
* ``ref``: a reference implementation on dense arrays, written against the small
  array namespace described in :mod:`polykeops.formula.arrays` (so the same code
  evaluates NumPy arrays and torch tensors);
* ``domain``: for each argument, the input domain used by test generators
  ("real", "positive", "unit" for |x| < 1, "nonzero");
* ``random_params``: how test generators draw valid static parameters;
* ``method``: the LazyTensor method applying a unary op (``x.tanh()``), if any.

An op declared here is picked up by the formula-string parser, the LazyTensor
methods and the conformance suite; its C rule (one line in
:mod:`polykeops.backends.codegen.c_renderer`) makes the compiled engines run it.

Composite operations (``SqDist``, ``Norm2``, ``WeightedSqNorm``...) are not
entries: they are built from these by :mod:`polykeops.formula.composite`.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import FormulaError
from . import algebra as A
from .nodes import Node, Zero
from .optable import OPS, OpDef, infer_dim, public_ops, register_op

__all__ = ["OPS", "PI", "OpDef", "infer_dim", "public_ops", "register_op"]

# ---------------------------------------------------------------------------
# dimension rules
# ---------------------------------------------------------------------------


def _same(d: int) -> int:
    return d


def _broadcast(da: int, db: int, *rest) -> int:
    dims = {da, db, *rest} - {1}
    if len(dims) > 1:
        raise FormulaError(
            f"incompatible vector dimensions {sorted({da, db, *rest})}: "
            "dimensions must be equal or 1 (KeOps broadcasting rule)"
        )
    return dims.pop() if dims else 1


def _one(*_args) -> int:
    return 1


def _check_int(name, value, lo=None, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormulaError(f"parameter {name} must be an int, got {value!r}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise FormulaError(f"parameter {name}={value} out of range [{lo}, {hi}]")
    return value


# ---------------------------------------------------------------------------
# helpers for derivative rules
# ---------------------------------------------------------------------------


def _unb(g: Node, arg: Node) -> Node:
    """Cotangent ``g`` brought back to the dimension of ``arg`` (sums broadcast components)."""
    return A.unbroadcast(g, arg.dim)


# ---------------------------------------------------------------------------
# elementwise unary ops
# ---------------------------------------------------------------------------

TWO_OVER_SQRT_PI = Fraction(2 / math.sqrt(math.pi))  # exact rational image of the double nearest


def _unary(
    name, ref, vjp, domain="real", smooth=True, doc="", public=True, linear=False, build=None, method=None
):
    """Register an elementwise unary op; a public one is also the LazyTensor method ``name.lower()``."""
    register_op(
        OpDef(
            name,
            1,
            _same,
            ref,
            vjp,
            domain=(domain,),
            smooth=smooth,
            doc=doc,
            public=public,
            linear=linear,
            build=build,
            method=(name.lower() if public else "") if method is None else method,
        )
    )


_unary(
    "Minus", lambda xp, a: -a, lambda n, g: (A.neg(g),), linear=True, build=A.neg, doc="-x", method=""
)
_unary("Exp", lambda xp, a: xp.exp(a), lambda n, g: (A.mul(g, n),), doc="exp(x)")
_unary(
    "Log",
    lambda xp, a: xp.log(a),
    lambda n, g: (A.div(g, n.args[0]),),
    domain="positive",
    doc="natural logarithm",
)
_unary(
    "XLogX",
    lambda xp, a: xp.where(a == 0, a * 0, a * xp.log(a)),
    lambda n, g: (A.mul(g, A.add(A.node("Log", n.args[0]), A.const(1))),),
    domain="positive",
    doc="x log(x), 0 at 0",
)
_unary("Sin", lambda xp, a: xp.sin(a), lambda n, g: (A.mul(g, A.node("Cos", n.args[0])),))
_unary("Cos", lambda xp, a: xp.cos(a), lambda n, g: (A.neg(A.mul(g, A.node("Sin", n.args[0]))),))
_unary(
    "SinXDivX",
    lambda xp, a: xp.where(a == 0, a * 0 + 1, xp.sin(a) / xp.where(a == 0, a * 0 + 1, a)),
    lambda n, g: (A.mul(g, A.node("SinXDivXDeriv", n.args[0])),),
    doc="sin(x)/x, 1 at 0",
)
_unary(
    "SinXDivXDeriv",
    lambda xp, a: xp.where(
        a == 0,
        a * 0,
        (xp.cos(a) - xp.sin(a) / xp.where(a == 0, a * 0 + 1, a)) / xp.where(a == 0, a * 0 + 1, a),
    ),
    lambda n, g: (
        A.mul(
            g,
            A.sub(
                A.neg(A.node("SinXDivX", n.args[0])),
                A.mul(A.const(2), A.div(A.node("SinXDivXDeriv", n.args[0]), n.args[0])),
            ),
        ),
    ),
    public=False,
    doc="derivative of sin(x)/x: (cos x - sin(x)/x)/x, 0 at 0",
)
_unary(
    "Asin",
    lambda xp, a: xp.asin(a),
    lambda n, g: (A.mul(g, A.node("Rsqrt", A.sub(A.const(1), A.square(n.args[0])))),),
    domain="unit",
)
_unary(
    "Acos",
    lambda xp, a: xp.acos(a),
    lambda n, g: (A.neg(A.mul(g, A.node("Rsqrt", A.sub(A.const(1), A.square(n.args[0]))))),),
    domain="unit",
)
_unary(
    "Atan",
    lambda xp, a: xp.atan(a),
    lambda n, g: (A.div(g, A.add(A.const(1), A.square(n.args[0]))),),
)
_unary(
    "Sqrt",
    lambda xp, a: xp.sqrt(a),
    lambda n, g: (A.mul(A.mul(A.const(Fraction(1, 2)), g), A.node("Rsqrt", n.args[0])),),
    domain="positive",
)
_unary(
    "Rsqrt",
    lambda xp, a: xp.where(a == 0, a * 0, 1 / xp.sqrt(xp.where(a == 0, a * 0 + 1, a))),
    lambda n, g: (
        A.mul(A.mul(A.const(Fraction(-1, 2)), g), A.mul(n, A.node("Inv", n.args[0]))),
    ),
    domain="positive",
    doc="1/sqrt(x), 0 at 0 (KeOps convention)",
)
_unary(
    "Inv",
    lambda xp, a: 1 / a,
    lambda n, g: (A.neg(A.mul(g, A.square(n))),),
    domain="nonzero",
    doc="1/x",
)
register_op(
    OpDef(
        "Square",
        1,
        _same,
        lambda xp, a: a * a,
        lambda n, g: (A.mul(A.mul(A.const(2), g), n.args[0]),),
        domain=("real",),
        build=A.square,
        method="square",
    )
)
_unary(
    "Abs",
    lambda xp, a: xp.abs(a),
    lambda n, g: (_where_positive(n.args[0], g, _where_positive(A.neg(n.args[0]), A.neg(g), Zero(g.dim))),),
)
_unary(
    "Sign",
    lambda xp, a: xp.cast(a > 0, a) - xp.cast(a < 0, a),
    None,
    smooth=False,
    doc="-1, 0 or 1 (0 at NaN, as torch.sign)",
)
_unary(
    "Step", lambda xp, a: xp.cast(a >= 0, a), None, smooth=False, doc="0 for x < 0, 1 for x >= 0"
)
_unary(
    "ReLU",
    lambda xp, a: xp.where(a <= 0, 0.0, a),
    # torch's rule: 0 where x <= 0, g elsewhere (NaN included), selected (g may be infinite)
    lambda n, g: (A.node("IfElse", A.neg(n.args[0]), Zero(g.dim), g),),
    doc="max(x, 0) (NaN stays NaN, as torch.relu)",
)
_unary("Floor", lambda xp, a: xp.floor(a), None, smooth=False, public=False, doc="floor(x)")
_unary(
    "Tanh",
    lambda xp, a: xp.tanh(a),
    lambda n, g: (A.mul(g, A.sub(A.const(1), A.square(n))),),
    doc="hyperbolic tangent",
)
_unary(
    "Sinh",
    lambda xp, a: xp.sinh(a),
    lambda n, g: (A.mul(g, A.node("Cosh", n.args[0])),),
    doc="hyperbolic sine",
)
_unary(
    "Cosh",
    lambda xp, a: xp.cosh(a),
    lambda n, g: (A.mul(g, A.node("Sinh", n.args[0])),),
    doc="hyperbolic cosine",
)
_unary(
    "Erf",
    lambda xp, a: xp.erf(a),
    lambda n, g: (A.mul(g, A.mul(A.const(TWO_OVER_SQRT_PI), A.node("Exp", A.neg(A.square(n.args[0]))))),),
    doc="error function",
)
_unary(
    "Log1p",
    lambda xp, a: xp.log1p(a),
    lambda n, g: (A.div(g, A.add(A.const(1), n.args[0])),),
    domain="positive",
    doc="log(1 + x), accurate for small x",
)
_unary(
    "Expm1",
    lambda xp, a: xp.expm1(a),
    lambda n, g: (A.mul(g, A.node("Exp", n.args[0])),),
    doc="exp(x) - 1, accurate for small x",
)


# ---------------------------------------------------------------------------
# elementwise binary ops (KeOps broadcasting: equal dimensions, or 1)
# ---------------------------------------------------------------------------


def _binary(name, ref, vjp, domain=("real", "real"), smooth=True, doc="", linear=False, build=None):
    register_op(
        OpDef(
            name,
            2,
            _broadcast,
            ref,
            vjp,
            domain=domain,
            smooth=smooth,
            doc=doc,
            linear=linear,
            build=build,
        )
    )


def _vjp_add(n, g):
    a, b = n.args
    return (_unb(g, a), _unb(g, b))


def _vjp_sub(n, g):
    a, b = n.args
    return (_unb(g, a), _unb(A.neg(g), b))


def _vjp_mult(n, g):
    a, b = n.args
    return (_unb(A.mul(g, b), a), _unb(A.mul(g, a), b))


def _vjp_div(n, g):
    a, b = n.args
    ga = A.div(g, b)
    return (_unb(ga, a), _unb(A.neg(A.mul(ga, n)), b))


_binary("Add", lambda xp, a, b: a + b, _vjp_add, build=A.add)
_binary("Subtract", lambda xp, a, b: a - b, _vjp_sub, build=A.sub)
_binary("Mult", lambda xp, a, b: a * b, _vjp_mult, linear=True, build=A.mul)
_binary("Divide", lambda xp, a, b: a / b, _vjp_div, domain=("real", "nonzero"), build=A.div)


def _vjp_powf(n, g):
    a, b = n.args
    ga = A.mul(g, A.mul(b, A.node("Powf", a, A.sub(b, A.const(1)))))
    gb = A.mul(g, A.mul(A.node("Log", a), n))
    return (_unb(ga, a), _unb(gb, b))


_binary(
    "Powf",
    lambda xp, a, b: a**b,
    _vjp_powf,
    domain=("positive", "real"),
    doc="x ** y for real y (x > 0)",
)


def _vjp_atan2(n, g):
    y, x = n.args
    r2 = A.add(A.square(y), A.square(x))
    return (_unb(A.div(A.mul(g, x), r2), y), _unb(A.neg(A.div(A.mul(g, y), r2)), x))


_binary("Atan2", lambda xp, y, x: xp.atan2(y, x), _vjp_atan2, doc="atan2(y, x)")

for _name, _fn in (
    ("Equal", lambda xp, a, b: xp.cast(a == b, a + b)),
    ("NotEqual", lambda xp, a, b: xp.cast(a != b, a + b)),
    ("LessThan", lambda xp, a, b: xp.cast(a < b, a + b)),
    ("GreaterThan", lambda xp, a, b: xp.cast(a > b, a + b)),
    ("LessOrEqual", lambda xp, a, b: xp.cast(a <= b, a + b)),
    ("GreaterOrEqual", lambda xp, a, b: xp.cast(a >= b, a + b)),
):
    _binary(_name, _fn, None, smooth=False, doc="comparison: 1 where true, 0 elsewhere")


# ---------------------------------------------------------------------------
# ternary and parametrised elementwise ops
# ---------------------------------------------------------------------------


def _where_positive(x: Node, a: Node, b: Node) -> Node:
    """``a`` where ``x > 0``, ``b`` elsewhere (NaN included): a selection, never a product with a
    0/1 factor (an infinite or NaN ``a`` must not leak where ``b`` is chosen)."""
    return _where_true(A.node("GreaterThan", x, A.const(0)), a, b)


def _where_true(mask: Node, a: Node, b: Node) -> Node:
    """``a`` where the 0/1 ``mask`` is 1, ``b`` where it is 0 (``mask - 1`` is 0 or -1, never NaN)."""
    if mask.op == "Const":
        return a if mask.value == 1 else b
    if mask.op == "Zero":
        return b
    return A.node("IfElse", A.sub(mask, A.const(1)), a, b)


def _vjp_ifelse(n, g):
    c, a, b = n.args
    z = Zero(g.dim)
    return (
        None,
        _unb(A.node("IfElse", c, g, z), a),
        _unb(A.node("IfElse", c, z, g), b),
    )


def _build_ifelse(c, a, b):
    if a == b:
        return A.broadcast_to(a, _broadcast(c.dim, a.dim, b.dim))
    return Node("IfElse", (c, a, b))


register_op(
    OpDef(
        "IfElse",
        3,
        _broadcast,
        lambda xp, c, a, b: xp.where(c >= 0, a, b),
        _vjp_ifelse,
        domain=("real", "real", "real"),
        build=_build_ifelse,
        doc="a where x >= 0, b elsewhere",
    )
)


def _vjp_clamp(n, g):
    x, a, b = n.args
    z = Zero(g.dim)
    inside = A.mul(A.node("GreaterOrEqual", x, a), A.node("LessOrEqual", x, b))
    return (
        _unb(_where_true(inside, g, z), x),
        _unb(_where_true(A.node("LessThan", x, a), g, z), a),
        _unb(_where_true(A.mul(A.node("GreaterThan", x, b), A.node("GreaterOrEqual", x, a)), g, z), b),
    )


register_op(
    OpDef(
        "Clamp",
        3,
        _broadcast,
        lambda xp, x, a, b: xp.where(x < a, a, xp.where(x > b, b, x)),
        _vjp_clamp,
        domain=("real", "real", "real"),
        doc="min(max(x, a), b)",
    )
)


def _dim_clampint(d, a, b):
    _check_int("a", a)
    _check_int("b", b)
    return d


register_op(
    OpDef(
        "ClampInt",
        1,
        _dim_clampint,
        lambda xp, x, a, b: xp.where(x < a, float(a), xp.where(x > b, float(b), x)),
        lambda n, g: (
            _where_true(
                A.mul(
                    A.node("GreaterOrEqual", n.args[0], A.const(n.params[0])),
                    A.node("LessOrEqual", n.args[0], A.const(n.params[1])),
                ),
                g,
                Zero(g.dim),
            ),
        ),
        params=("a", "b"),
        domain=("real",),
        random_params=lambda dims, rnd: tuple(sorted((rnd.randint(-2, 1), rnd.randint(0, 2)))),
        doc="clamp to the integer bounds [a, b]",
    )
)


def _vjp_mod(n, g):
    x, m, off = n.args
    q = A.node("Floor", A.div(A.sub(x, off), m))
    return (_unb(g, x), _unb(A.neg(A.mul(g, q)), m), None)


register_op(
    OpDef(
        "Mod",
        3,
        _broadcast,
        lambda xp, x, m, off: x - m * xp.floor((x - off) / m),
        _vjp_mod,
        domain=("real", "positive", "real"),
        doc="x - m * floor((x - offset) / m): x modulo m, in [offset, offset + m)",
    )
)


def _dim_round(d, decimals):
    _check_int("decimals", decimals, -10, 10)
    return d


def _ref_round(xp, x, decimals):
    s = 10.0**decimals
    return xp.sign(x) * xp.floor(xp.abs(x) * s + 0.5) / s


register_op(
    OpDef(
        "Round",
        1,
        _dim_round,
        _ref_round,
        None,
        params=("decimals",),
        domain=("real",),
        random_params=lambda dims, rnd: (rnd.randint(0, 2),),
        smooth=False,
        doc="round to `decimals` decimals, halves away from zero",
    )
)


def _dim_pow(d, n):
    _check_int("n", n, -((1 << 31) - 1), (1 << 31) - 1)
    return d


register_op(
    OpDef(
        "Pow",
        1,
        _dim_pow,
        lambda xp, x, n: x**n,
        lambda node, g: (
            A.mul(g, A.mul(A.const(node.params[0]), A.power(node.args[0], node.params[0] - 1))),
        ),
        params=("n",),
        domain=("nonzero",),
        build=A.power,
        random_params=lambda dims, rnd: (rnd.choice([-2, -1, 3, 4]),),
        doc="x ** n for an integer n",
    )
)


# ---------------------------------------------------------------------------
# vector ops
# ---------------------------------------------------------------------------

register_op(
    OpDef(
        "Sum",
        1,
        _one,
        lambda xp, x: xp.sum(x),
        lambda n, g: (A.broadcast_to(g, n.args[0].dim),),
        domain=("real",),
        linear=True,
        build=A.vsum,
        doc="sum of the components",
    )
)


def _dim_sumt(d, dim):
    if d != 1:
        raise FormulaError(f"SumT broadcasts a scalar; got an argument of dimension {d}")
    _check_int("dim", dim, 1)
    return dim


register_op(
    OpDef(
        "SumT",
        1,
        _dim_sumt,
        lambda xp, x, dim: x + xp.const(0, dim),
        lambda n, g: (A.vsum(g),),
        params=("dim",),
        domain=("real",),
        linear=True,
        build=lambda x, dim: A.broadcast_to(x, _dim_sumt(x.dim, dim)),
        public=False,
        random_params=lambda dims, rnd: (rnd.randint(1, 4),),
        doc="broadcast a scalar to a vector of dimension dim (adjoint of Sum)",
    )
)


def _vjp_vmax(n, g):
    x = n.args[0]
    arg = A.node("ArgMax" if n.op == "Max" else "ArgMin", x)
    return (_where_true(Node("OneHot", (arg,), (x.dim,)), g, Zero(x.dim)),)


register_op(
    OpDef("Max", 1, _one, lambda xp, x: xp.amax(x), _vjp_vmax, domain=("real",), doc="largest component")
)
register_op(
    OpDef("Min", 1, _one, lambda xp, x: xp.amin(x), _vjp_vmax, domain=("real",), doc="smallest component")
)
register_op(
    OpDef(
        "ArgMax",
        1,
        _one,
        lambda xp, x: xp.argmax(x),
        None,
        domain=("real",),
        smooth=False,
        doc="index of the largest component (first one on ties)",
    )
)
register_op(
    OpDef(
        "ArgMin",
        1,
        _one,
        lambda xp, x: xp.argmin(x),
        None,
        domain=("real",),
        smooth=False,
        doc="index of the smallest component (first one on ties)",
    )
)


def _dim_onehot(d, dim):
    if d != 1:
        raise FormulaError(f"OneHot needs a scalar argument, got dimension {d}")
    _check_int("dim", dim, 1)
    return dim


register_op(
    OpDef(
        "OneHot",
        1,
        _dim_onehot,
        lambda xp, x, dim: xp.cast(_ref_round(xp, x, 0) == xp.arange(dim), x),
        None,
        params=("dim",),
        domain=("real",),
        smooth=False,
        random_params=lambda dims, rnd: (rnd.randint(1, 5),),
        doc="one-hot encoding of round(x) in dimension dim",
    )
)


def _dim_take(da, dk, d):
    if dk != 1:
        raise FormulaError(f"Take needs a scalar index, got dimension {dk}")
    _check_int("d", d, 1)
    if da % d:
        raise FormulaError(f"Take: the table's dimension {da} is not a multiple of the row length d={d}")
    return d


def _ref_take(xp, a, k, d):
    rows = a.shape[-1] // d
    hit = _ref_round(xp, k, 0)[..., None] == xp.arange(rows)[:, None]  # (..., rows, 1)
    table = xp.reshape(a, a.shape[:-1] + (rows, d))
    return xp.sum_axis(xp.where(hit, table, xp.const(0, d)), -2)  # exact: never 0 * inf


def _vjp_take(n, g):
    """The scatter of ``g`` to row ``round(k)``: a selection (``g`` tiled over the rows, kept
    where the one-hot mask is 1), never ``OneHot(k) * g``, whose 0 * inf would leak NaN into
    the other rows when ``g`` is infinite."""
    a, k = n.args
    rows = a.dim // n.dim
    hit = A.node("TensorProd", A.node("OneHot", k, params=(rows,)), A.const(1, n.dim))
    tiled = A.node("TensorProd", A.const(1, rows), g)
    return (_where_true(hit, tiled, Zero(a.dim)), None)


register_op(
    OpDef(
        "Take",
        2,
        _dim_take,
        _ref_take,
        _vjp_take,
        params=("d",),
        domain=("real", "real"),
        random_params=lambda dims, rnd: (rnd.choice([q for q in range(1, dims[0] + 1) if dims[0] % q == 0]),),
        doc="row round(k) of a seen as a (dim(a)/d) x d matrix (d values), zeros when round(k) is "
        "outside [0, dim(a)/d): a gather, O(d) per pair",
    )
)


def _dim_elem(d, m):
    _check_int("m", m, 0, d - 1)
    return 1


register_op(
    OpDef(
        "Elem",
        1,
        _dim_elem,
        lambda xp, x, m: x[..., m : m + 1],
        lambda n, g: (Node("ElemT", (g,), (n.params[0], n.args[0].dim)),),
        params=("m",),
        domain=("real",),
        linear=True,
        random_params=lambda dims, rnd: (rnd.randrange(dims[0]),),
        doc="component m",
    )
)


def _dim_elemt(d, m, dim):
    if d != 1:
        raise FormulaError(f"ElemT needs a scalar argument, got dimension {d}")
    _check_int("m", m, 0, dim - 1)
    return dim


register_op(
    OpDef(
        "ElemT",
        1,
        _dim_elemt,
        lambda xp, x, m, dim: xp.concat(
            [x * xp.const(0, m), x, x * xp.const(0, dim - m - 1)] if dim > 1 else [x]
        ),
        lambda n, g: (Node("Elem", (g,), (n.params[0],)),),
        params=("m", "dim"),
        domain=("real",),
        linear=True,
        public=False,
        random_params=lambda dims, rnd: (lambda d: (rnd.randrange(d), d))(rnd.randint(1, 4)),
        doc="vector of dimension dim with x at position m, zeros elsewhere",
    )
)


def _dim_extract(d, start, length):
    _check_int("start", start, 0, d - 1)
    _check_int("length", length, 1, d - start)
    return length


register_op(
    OpDef(
        "Extract",
        1,
        _dim_extract,
        lambda xp, x, start, length: x[..., start : start + length],
        lambda n, g: (Node("ExtractT", (g,), (n.params[0], n.args[0].dim)),),
        params=("start", "length"),
        domain=("real",),
        linear=True,
        random_params=lambda dims, rnd: (lambda s: (s, rnd.randint(1, dims[0] - s)))(
            rnd.randrange(dims[0])
        ),
        doc="components start .. start+length-1",
    )
)


def _dim_extractt(d, start, dim):
    _check_int("start", start, 0)
    _check_int("dim", dim, start + d, None)
    return dim


def _ref_extractt(xp, x, start, dim):
    parts = []
    if start:
        parts.append(x[..., :1] * xp.const(0, start))
    parts.append(x)
    tail = dim - start - x.shape[-1]
    if tail:
        parts.append(x[..., :1] * xp.const(0, tail))
    return xp.concat(parts) if len(parts) > 1 else x


register_op(
    OpDef(
        "ExtractT",
        1,
        _dim_extractt,
        _ref_extractt,
        lambda n, g: (Node("Extract", (g,), (n.params[0], n.args[0].dim)),),
        params=("start", "dim"),
        domain=("real",),
        linear=True,
        public=False,
        random_params=lambda dims, rnd: (lambda s: (s, s + dims[0] + rnd.randint(0, 2)))(
            rnd.randint(0, 2)
        ),
        doc="adjoint of Extract: x placed at start in a zero vector of dimension dim",
    )
)


register_op(
    OpDef(
        "Concat",
        2,
        lambda da, db: da + db,
        lambda xp, a, b: xp.concat([a, b]),
        lambda n, g: (
            Node("Extract", (g,), (0, n.args[0].dim)),
            Node("Extract", (g,), (n.args[0].dim, n.args[1].dim)),
        ),
        domain=("real", "real"),
        doc="concatenation of two vectors",
    )
)


def _dim_matvec(da, dx):
    if da % dx:
        raise FormulaError(
            f"MatVecMult: the matrix dimension {da} is not a multiple of the vector dimension {dx}"
        )
    return da // dx


def _dim_vecmat(dx, da):
    if da % dx:
        raise FormulaError(
            f"VecMatMult: the matrix dimension {da} is not a multiple of the vector dimension {dx}"
        )
    return da // dx


def _ref_matvec(xp, a, x):
    n = x.shape[-1]
    m = a.shape[-1] // n
    return xp.sum_axis(xp.reshape(a, a.shape[:-1] + (m, n)) * x[..., None, :], -1)


def _ref_vecmat(xp, x, a):
    m = x.shape[-1]
    n = a.shape[-1] // m
    return xp.sum_axis(xp.reshape(a, a.shape[:-1] + (m, n)) * x[..., :, None], -2)


def _ref_tensorprod(xp, a, b):
    m, n = a.shape[-1], b.shape[-1]
    p = a[..., :, None] * b[..., None, :]
    return xp.reshape(p, p.shape[:-2] + (m * n,))


register_op(
    OpDef(
        "MatVecMult",
        2,
        _dim_matvec,
        _ref_matvec,
        lambda n, g: (
            Node("TensorProd", (g, n.args[1])),
            Node("VecMatMult", (g, n.args[0])),
        ),
        domain=("real", "real"),
        linear=True,
        doc="A x with A (m x n, row-major, dimension m*n) and x (dimension n)",
    )
)
register_op(
    OpDef(
        "VecMatMult",
        2,
        _dim_vecmat,
        _ref_vecmat,
        lambda n, g: (
            Node("MatVecMult", (n.args[1], g)),
            Node("TensorProd", (n.args[0], g)),
        ),
        domain=("real", "real"),
        linear=True,
        doc="x^T A with x (dimension m) and A (m x n, row-major, dimension m*n)",
    )
)
register_op(
    OpDef(
        "TensorProd",
        2,
        lambda da, db: da * db,
        _ref_tensorprod,
        lambda n, g: (
            Node("MatVecMult", (g, n.args[1])),
            Node("VecMatMult", (n.args[0], g)),
        ),
        domain=("real", "real"),
        linear=True,
        doc="outer product, row-major (dimension m*n)",
    )
)


PI = Fraction(math.pi)  # exact rational image of the double nearest pi


# ---------------------------------------------------------------------------
# Soft-DTW with the squared-difference cost (KeOps' SoftDTW_SqDist)
# ---------------------------------------------------------------------------
#
# The dynamic programme over the (i, j) cells is a primitive: written with
# formula nodes, its DAG would have exponentially many paths.  The arguments are
# (gamma, x, y); the formula-string form SoftDTW_SqDist(x, y, gamma) is the
# composite of the same name.  Not public (not drawn by test generators, and the
# C code generators have no rule for it: backends without one fall back to the
# reference backend).


def _dim_softdtw(dg, dx, dy):
    if dg != 1:
        raise FormulaError(f"SoftDTW_SqDist: gamma must be a scalar, got dimension {dg}")
    return 1


def _dim_softdtw_grad(dg, dx, dy):
    _dim_softdtw(dg, dx, dy)
    return dx + dy + 1


def _softmin3(xp, a, b, c, gamma):
    low = xp.minimum(xp.minimum(a, b), c)
    total = xp.exp((low - a) / gamma) + xp.exp((low - b) / gamma) + xp.exp((low - c) / gamma)
    return low - gamma * xp.log(total)


def _softdtw_table(xp, gamma, x, y):
    """Cumulative costs r[i][j] and the soft minimum s[i][j] of each cell's predecessors."""
    n, m = x.shape[-1], y.shape[-1]
    r = [[None] * m for _ in range(n)]
    s = [[None] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            d = x[..., i : i + 1] - y[..., j : j + 1]
            if i == 0 and j == 0:
                r[i][j] = d * d
                continue
            if i == 0:
                s[i][j] = r[0][j - 1]  # first row and column: one predecessor, no smoothing
            elif j == 0:
                s[i][j] = r[i - 1][0]
            else:
                s[i][j] = _softmin3(xp, r[i - 1][j - 1], r[i - 1][j], r[i][j - 1], gamma)
            r[i][j] = d * d + s[i][j]
    return r, s


def _ref_softdtw(xp, gamma, x, y):
    r, _ = _softdtw_table(xp, gamma, x, y)
    return r[-1][-1] + 0 * gamma


def _ref_softdtw_grad(xp, gamma, x, y):
    """(d/dx, d/dy, d/dgamma) of the Soft-DTW value, by the backward (adjoint) recursion."""
    n, m = x.shape[-1], y.shape[-1]
    r, s = _softdtw_table(xp, gamma, x, y)
    zero = 0 * (x[..., :1] + y[..., :1] + gamma)
    e = [[None] * m for _ in range(n)]  # e[i][j] = d value / d r[i][j]
    gx = [zero] * n
    gy = [zero] * m
    gg = zero
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if i == n - 1 and j == m - 1:
                eij = zero + 1
            else:
                eij = zero
                if i + 1 < n:  # successor (i+1, j); weight 1 on the first column
                    w = 1 if j == 0 else xp.exp((s[i + 1][j] - r[i][j]) / gamma)
                    eij = eij + w * e[i + 1][j]
                if j + 1 < m:  # successor (i, j+1); weight 1 on the first row
                    w = 1 if i == 0 else xp.exp((s[i][j + 1] - r[i][j]) / gamma)
                    eij = eij + w * e[i][j + 1]
                if i + 1 < n and j + 1 < m:
                    eij = eij + xp.exp((s[i + 1][j + 1] - r[i][j]) / gamma) * e[i + 1][j + 1]
            e[i][j] = eij
            d2 = 2 * (x[..., i : i + 1] - y[..., j : j + 1]) * eij
            gx[i] = gx[i] + d2
            gy[j] = gy[j] - d2
            if i > 0 and j > 0:
                # explicit d softmin / d gamma = (softmin - sum_k p_k r_k) / gamma
                preds = (r[i - 1][j - 1], r[i - 1][j], r[i][j - 1])
                mean = sum(xp.exp((s[i][j] - p) / gamma) * p for p in preds)
                gg = gg + eij * (s[i][j] - mean) / gamma
    return xp.concat(gx + gy + [gg])


def _vjp_softdtw(n, g):
    gamma, x, y = n.args
    full = Node("GradSoftDTWSqDist", n.args)
    return (
        A.mul(g, Node("Elem", (full,), (x.dim + y.dim,))),
        A.mul(g, Node("Extract", (full,), (0, x.dim))),
        A.mul(g, Node("Extract", (full,), (x.dim, y.dim))),
    )


_NO_SECOND_ORDER = (
    "second derivatives of SoftDTW_SqDist are not implemented "
    "(first derivatives, with respect to x, y and gamma, are)"
)


def _vjp_softdtw_grad(n, g):
    # Second derivatives would need another dynamic programme.  Building them must not
    # fail (symbolic derivatives are built eagerly, e.g. for Grad strings), so the
    # cotangents are made of a marker op whose evaluation raises this error.
    gamma, x, y = n.args
    marker = Node("SoftDTWSqDistGrad2", n.args)
    scale = A.vsum(g)
    return (
        A.mul(scale, Node("Elem", (marker,), (x.dim + y.dim,))),
        A.mul(scale, Node("Extract", (marker,), (0, x.dim))),
        A.mul(scale, Node("Extract", (marker,), (x.dim, y.dim))),
    )


def _ref_softdtw_grad2(xp, gamma, x, y):
    from ..errors import NotDifferentiableError

    raise NotDifferentiableError(_NO_SECOND_ORDER)


register_op(
    OpDef(
        "SoftDTWSqDist",
        3,
        _dim_softdtw,
        _ref_softdtw,
        _vjp_softdtw,
        domain=("positive", "real", "real"),
        public=False,
        doc="Soft-DTW(x, y) with cost (x_i - y_j)^2 and smoothing gamma (arguments: gamma, x, y)",
    )
)
register_op(
    OpDef(
        "GradSoftDTWSqDist",
        3,
        _dim_softdtw_grad,
        _ref_softdtw_grad,
        _vjp_softdtw_grad,
        domain=("positive", "real", "real"),
        public=False,
        doc="gradient of SoftDTWSqDist(gamma, x, y): (d/dx, d/dy, d/dgamma), dimension n + m + 1",
    )
)
register_op(
    OpDef(
        "SoftDTWSqDistGrad2",
        3,
        _dim_softdtw_grad,
        _ref_softdtw_grad2,
        _vjp_softdtw_grad,
        domain=("positive", "real", "real"),
        public=False,
        doc="marker of the (unimplemented) second derivatives of SoftDTWSqDist: evaluating it raises",
    )
)
