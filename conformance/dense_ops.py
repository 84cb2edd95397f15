"""Independent dense definitions of the ops, one per op, named like the op.

The oracle of the suite evaluates formulas with these functions, not with the
op table's own reference implementations (``OpDef.ref``): a wrong ``ref`` then
fails the suite instead of certifying the same mistake in every backend built
on it (``test_op_table.py`` checks every ``ref`` against its definition here).
In the spirit of JAX's ``lax_reference``: each op of
:data:`polykeops.formula.ops.OPS` has a function of the same name, written
directly with torch.

Conventions, shared by every definition:

* arguments are torch tensors whose last axis holds the vector components; the
  leading axes broadcast against each other (KeOps' rule: a dimension-1 operand
  broadcasts against any dimension);
* the op's static parameters follow its arguments, in the op table's order
  (``Round(x, decimals)``, ``Take(a, k, d)``...);
* results keep the arguments' floating dtype, and the definitions are
  differentiable with ``torch.autograd`` wherever the op is (the oracle takes its
  expected gradients that way);
* special points follow the documented KeOps conventions (``Rsqrt(0) = 0``,
  ``SinXDivX(0) = 1``, ``Step(0) = 1``, rounding halves away from zero, the first
  NaN, else the first extremum, for ``ArgMin``/``ArgMax``...); ``IfElse``,
  ``Clamp``, ``ClampInt`` and ``ReLU`` are selections: an infinite or NaN operand that is
  not selected never reaches the result (nor, through ``torch.where``, the gradients).

An op without a definition here (an op a third party registers, or the Soft-DTW
primitives) is evaluated through its ``ref``; :func:`define` adds a definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: op name -> independent definition
DEFINITIONS: dict[str, Callable] = {}


def define(fn: Callable, name: str | None = None) -> Callable:
    """Register ``fn`` as the independent definition of the op ``name`` (default: ``fn.__name__``)."""
    DEFINITIONS[name or fn.__name__] = fn
    return fn


def definition(name: str) -> Callable | None:
    """The independent definition of the op ``name`` (None if it has none)."""
    return DEFINITIONS.get(name)


def _round_half_away(x, decimals: int = 0):
    s = 10.0**decimals
    return torch.sign(x) * torch.floor(torch.abs(x) * s + 0.5) / s


def _nonzero(x):
    """``x`` with its zeros replaced by ones (for the branch ``torch.where`` does not select)."""
    return torch.where(x == 0, torch.ones_like(x), x)


# ---------------------------------------------------------------------------
# elementwise unary ops
# ---------------------------------------------------------------------------


@define
def Minus(x):
    return -x


@define
def Exp(x):
    return torch.exp(x)


@define
def Log(x):
    return torch.log(x)


@define
def XLogX(x):
    return torch.special.xlogy(x, x)  # 0 at 0


@define
def Sin(x):
    return torch.sin(x)


@define
def Cos(x):
    return torch.cos(x)


@define
def SinXDivX(x):
    return torch.sinc(x / math.pi)  # sin(x)/x, 1 at 0


@define
def SinXDivXDeriv(x):
    safe = _nonzero(x)
    return torch.where(x == 0, torch.zeros_like(x), (torch.cos(safe) - torch.sin(safe) / safe) / safe)


@define
def Asin(x):
    return torch.asin(x)


@define
def Acos(x):
    return torch.acos(x)


@define
def Atan(x):
    return torch.atan(x)


@define
def Sqrt(x):
    return torch.sqrt(x)


@define
def Rsqrt(x):
    return torch.where(x == 0, torch.zeros_like(x), torch.rsqrt(_nonzero(x)))  # 0 at 0


@define
def Inv(x):
    return torch.reciprocal(x)


@define
def Square(x):
    return x * x


@define
def Abs(x):
    return torch.abs(x)


@define
def Sign(x):
    return torch.sign(x)


@define
def Step(x):
    return (x >= 0).to(x.dtype)


@define
def ReLU(x):
    return torch.relu(x)


@define
def Floor(x):
    return torch.floor(x)


@define
def Tanh(x):
    return torch.tanh(x)


@define
def Sinh(x):
    return torch.sinh(x)


@define
def Cosh(x):
    return torch.cosh(x)


@define
def Erf(x):
    return torch.erf(x)


@define
def Log1p(x):
    return torch.log1p(x)


@define
def Expm1(x):
    return torch.expm1(x)


# ---------------------------------------------------------------------------
# elementwise binary and ternary ops
# ---------------------------------------------------------------------------


@define
def Add(a, b):
    return a + b


@define
def Subtract(a, b):
    return a - b


@define
def Mult(a, b):
    return a * b


@define
def Divide(a, b):
    return a / b


@define
def Powf(a, b):
    return torch.pow(a, b)


@define
def Atan2(y, x):
    return torch.atan2(y, x)


def _indicator(mask, a, b):
    """1 where ``mask`` holds, 0 elsewhere, in the operands' dtype."""
    return mask.to(torch.result_type(a, b))


@define
def Equal(a, b):
    return _indicator(a == b, a, b)


@define
def NotEqual(a, b):
    return _indicator(a != b, a, b)


@define
def LessThan(a, b):
    return _indicator(a < b, a, b)


@define
def GreaterThan(a, b):
    return _indicator(a > b, a, b)


@define
def LessOrEqual(a, b):
    return _indicator(a <= b, a, b)


@define
def GreaterOrEqual(a, b):
    return _indicator(a >= b, a, b)


@define
def IfElse(c, a, b):
    """``a`` where ``c >= 0``, else ``b``: the branch not taken does not matter, even when it is
    infinite or NaN (torch.where; NaN ``c`` takes ``b``)."""
    c, a, b = torch.broadcast_tensors(c, a, b)
    return torch.where(c >= 0, a, b)


@define
def Clamp(x, a, b):
    """``a`` below ``a``, else ``b`` above ``b``, else ``x`` (``a`` wins when ``a > b``); infinite
    ``x`` clamps to ``a`` or ``b``, NaN ``x`` stays NaN (as torch.clamp)."""
    x, a, b = torch.broadcast_tensors(x, a, b)
    return torch.where(x < a, a, torch.where(x > b, b, x))


@define
def ClampInt(x, a, b):
    """:func:`Clamp` with integer bounds."""
    return torch.where(x < a, torch.full_like(x, a), torch.where(x > b, torch.full_like(x, b), x))


@define
def Mod(x, m, offset):
    """``x`` modulo ``m``, in ``[offset, offset + m)``."""
    return x - m * torch.floor((x - offset) / m)


@define
def Round(x, decimals):
    return _round_half_away(x, decimals)


@define
def Pow(x, n):
    return x**n


# ---------------------------------------------------------------------------
# vector ops
# ---------------------------------------------------------------------------


@define
def Sum(x):
    return x.sum(-1, keepdim=True)


@define
def SumT(x, dim):
    return x.expand(*x.shape[:-1], dim)


@define
def Max(x):
    return torch.amax(x, -1, keepdim=True)


@define
def Min(x):
    return torch.amin(x, -1, keepdim=True)


def _first_index(x, kind: str):
    """Index of the first NaN if any, else of the first smallest (largest) component."""
    nan = torch.isnan(x)
    clean = torch.where(nan, torch.full_like(x, math.inf if kind == "min" else -math.inf), x)
    best = clean.amin(-1, keepdim=True) if kind == "min" else clean.amax(-1, keepdim=True)
    positions = torch.arange(x.shape[-1], device=x.device).expand(x.shape)
    never = torch.full_like(positions, x.shape[-1])
    first_best = torch.where(clean == best, positions, never).amin(-1, keepdim=True)
    first_nan = torch.where(nan, positions, never).amin(-1, keepdim=True)
    return torch.where(nan.any(-1, keepdim=True), first_nan, first_best).to(x.dtype)


@define
def ArgMax(x):
    return _first_index(x, "max")


@define
def ArgMin(x):
    return _first_index(x, "min")


@define
def OneHot(x, dim):
    return (_round_half_away(x) == torch.arange(dim, dtype=x.dtype, device=x.device)).to(x.dtype)


@define
def Take(a, k, d):
    """Row ``round(k)`` of ``a`` seen as a ``(dim(a) / d) x d`` matrix; zeros outside."""
    lead = torch.broadcast_shapes(a.shape[:-1], k.shape[:-1])
    a, k = a.expand(*lead, a.shape[-1]), k.expand(*lead, 1)
    rows = a.shape[-1] // d
    r = _round_half_away(k[..., 0])
    inside = (r >= 0) & (r < rows)
    index = torch.where(inside, r, torch.zeros_like(r)).long()
    table = a.reshape(*lead, rows, d)
    got = torch.take_along_dim(table, index[..., None, None].expand(*index.shape, 1, d), dim=-2)[..., 0, :]
    return torch.where(inside[..., None], got, torch.zeros_like(got))


@define
def Elem(x, m):
    return x[..., m : m + 1]


def _placed(x, start: int, dim: int):
    """``x`` at components ``start ..`` of a zero vector of dimension ``dim``."""
    before = x[..., :1] * torch.zeros(start, dtype=x.dtype, device=x.device)
    after = x[..., :1] * torch.zeros(dim - start - x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.cat([before, x, after], -1)


@define
def ElemT(x, m, dim):
    return _placed(x, m, dim)


@define
def Extract(x, start, length):
    return x[..., start : start + length]


@define
def ExtractT(x, start, dim):
    return _placed(x, start, dim)


@define
def Concat(a, b):
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])], -1)


@define
def MatVecMult(a, x):
    """``A x``, ``A`` row-major ``m x n`` (dimension ``m n``), ``x`` of dimension ``n``."""
    n = x.shape[-1]
    return torch.einsum("...mn,...n->...m", a.reshape(*a.shape[:-1], a.shape[-1] // n, n), x)


@define
def VecMatMult(x, a):
    """``x^T A``, ``x`` of dimension ``m``, ``A`` row-major ``m x n``."""
    m = x.shape[-1]
    return torch.einsum("...m,...mn->...n", x, a.reshape(*a.shape[:-1], m, a.shape[-1] // m))


@define
def TensorProd(a, b):
    """The outer product ``a b^T``, row-major (dimension ``dim(a) dim(b)``)."""
    outer = a[..., :, None] * b[..., None, :]
    return outer.reshape(*outer.shape[:-2], a.shape[-1] * b.shape[-1])
