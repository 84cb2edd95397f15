"""Every public op of the op table, through the LazyTensor API, against dense torch maths.

Each case builds a formula from an i-variable ``X`` (shape (M, 1, dx)), a
j-variable ``Y`` (shape (1, N, dy)) and a parameter ``P`` (shape (dp,)),
reduces it with ``.sum(dim=1)`` and compares the result with the same maths
written by hand on dense torch tensors (broadcast to (M, N, d), summed over N): each op
through its independent definition in the conformance suite's ``dense_ops`` (the
one the conformance oracle computes with, named like the op), the LazyTensor
conveniences built from several ops through plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops.formula.nodes import walk
from polykeops.formula.ops import public_ops

try:
    from conformance import dense_ops as D  # the suite's folder, in a checkout
except ImportError:  # pragma: no cover - polykeops installed (the suite is shipped inside it)
    from polykeops.conformance import dense_ops as D

M, N = 6, 5

# ---------------------------------------------------------------------------
# input domains
# ---------------------------------------------------------------------------


def _real(shape):
    return torch.randn(shape, dtype=torch.float64)


def _pos(shape):
    return torch.rand(shape, dtype=torch.float64) * 1.5 + 0.2


def _unit(shape):  # products of two of these stay in (-0.81, 0.81)
    return torch.rand(shape, dtype=torch.float64) * 1.8 - 0.9


def _nonzero(shape):
    s = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).double()
    return s * (torch.rand(shape, dtype=torch.float64) + 0.4)


def _int(shape):  # small integers: comparisons and ties actually happen
    return torch.randint(-2, 3, shape).double()


def _onehot_x(shape):
    return torch.randint(0, 3, shape).double()


def _onehot_y(shape):  # x + y in {0, .3, .6, 1, 1.3, ..., 2.6}: no halves
    return torch.randint(0, 3, shape).double() * 0.3


DOMAINS = {
    "real": _real,
    "pos": _pos,
    "unit": _unit,
    "nonzero": _nonzero,
    "int": _int,
    "onehot_x": _onehot_x,
    "onehot_y": _onehot_y,
}


@dataclass
class Case:
    id: str
    ops: set  # op-table names this case covers (checked to appear in the formula)
    lazy: Callable  # (X, Y, P) LazyTensors -> LazyTensor
    dense: Callable  # (x, y, p) dense tensors -> dense tensor (M, N, d) (or broadcastable)
    dom: tuple = ("real", "real", "real")
    dims: tuple = (3, 3, 3)
    kwargs: dict = field(default_factory=dict)


def _wsq_full(v, s):
    return torch.einsum("...i,ij,...j->...", v, s.reshape(3, 3), v)[..., None]


INT = ("int", "int", "real")
PPOS = ("real", "real", "pos")


def _vsum(v):
    return v.sum(-1, keepdim=True)


CASES = [
    # -- arithmetic ----------------------------------------------------------
    Case("minus", {"Minus"}, lambda X, Y, P: -(X * Y), lambda x, y, p: D.Minus(D.Mult(x, y))),
    Case("add", {"Add"}, lambda X, Y, P: X + Y, lambda x, y, p: D.Add(x, y)),
    Case("subtract", {"Subtract"}, lambda X, Y, P: X - Y, lambda x, y, p: D.Subtract(x, y)),
    Case("mult", {"Mult"}, lambda X, Y, P: X * Y, lambda x, y, p: D.Mult(x, y)),
    Case("divide", {"Divide"}, lambda X, Y, P: X / Y, lambda x, y, p: D.Divide(x, y),
         dom=("real", "nonzero", "real")),
    Case("python_scalars", {"Add", "Mult", "Divide"},
         lambda X, Y, P: 2 * X + Y * 1.5 - 0.5 / Y + 3,
         lambda x, y, p: 2 * x + y * 1.5 - 0.5 / y + 3, dom=("real", "nonzero", "real")),
    Case("param_vector", {"Mult", "Add"}, lambda X, Y, P: X * P + Y, lambda x, y, p: x * p + y),
    Case("broadcast_dim1", {"Mult", "Subtract"}, lambda X, Y, P: X * Y - X,
         lambda x, y, p: x * y - x, dims=(3, 1, 3)),
    # -- elementwise unary ---------------------------------------------------
    Case("exp", {"Exp"}, lambda X, Y, P: (X - Y).exp(), lambda x, y, p: D.Exp(x - y)),
    Case("log", {"Log"}, lambda X, Y, P: (X * Y).log(), lambda x, y, p: D.Log(x * y),
         dom=("pos", "pos", "real")),
    Case("xlogx", {"XLogX"}, lambda X, Y, P: (X * Y).xlogx(),
         lambda x, y, p: D.XLogX(x * y), dom=("pos", "pos", "real")),
    Case("sin", {"Sin"}, lambda X, Y, P: (X + Y).sin(), lambda x, y, p: D.Sin(x + y)),
    Case("cos", {"Cos"}, lambda X, Y, P: (X + Y).cos(), lambda x, y, p: D.Cos(x + y)),
    Case("sinxdivx", {"SinXDivX"}, lambda X, Y, P: (X + Y).sinxdivx(),
         lambda x, y, p: D.SinXDivX(x + y)),
    Case("sinc", {"SinXDivX"}, lambda X, Y, P: (X + Y).sinc(), lambda x, y, p: torch.sinc(x + y)),
    Case("asin", {"Asin"}, lambda X, Y, P: (X * Y).asin(), lambda x, y, p: D.Asin(x * y),
         dom=("unit", "unit", "real")),
    Case("acos", {"Acos"}, lambda X, Y, P: (X * Y).acos(), lambda x, y, p: D.Acos(x * y),
         dom=("unit", "unit", "real")),
    Case("atan", {"Atan"}, lambda X, Y, P: (X + Y).atan(), lambda x, y, p: D.Atan(x + y)),
    Case("atan2", {"Atan2"}, lambda X, Y, P: X.atan2(Y), lambda x, y, p: D.Atan2(x, y)),
    Case("sqrt", {"Sqrt"}, lambda X, Y, P: (X * Y).sqrt(), lambda x, y, p: D.Sqrt(x * y),
         dom=("pos", "pos", "real")),
    Case("pow_half", {"Sqrt"}, lambda X, Y, P: (X * Y) ** 0.5, lambda x, y, p: torch.sqrt(x * y),
         dom=("pos", "pos", "real")),
    Case("rsqrt", {"Rsqrt"}, lambda X, Y, P: (X * Y).rsqrt(),
         lambda x, y, p: D.Rsqrt(x * y), dom=("pos", "pos", "real")),
    Case("pow_minus_half", {"Rsqrt"}, lambda X, Y, P: (X * Y) ** -0.5,
         lambda x, y, p: 1 / torch.sqrt(x * y), dom=("pos", "pos", "real")),
    Case("square", {"Square"}, lambda X, Y, P: (X - Y).square(), lambda x, y, p: D.Square(x - y)),
    Case("pow_2", {"Square"}, lambda X, Y, P: (X - Y) ** 2, lambda x, y, p: (x - y) * (x - y)),
    Case("pow_2_float", {"Square"}, lambda X, Y, P: (X - Y) ** 2.0, lambda x, y, p: (x - y) * (x - y)),
    Case("pow_3", {"Pow"}, lambda X, Y, P: (X - Y) ** 3, lambda x, y, p: D.Pow(x - y, 3)),
    Case("pow_3_float", {"Pow"}, lambda X, Y, P: (X - Y) ** 3.0, lambda x, y, p: (x - y) ** 3),
    Case("pow_minus_2", {"Pow"}, lambda X, Y, P: (X * Y) ** -2, lambda x, y, p: 1 / (x * y) ** 2,
         dom=("nonzero", "nonzero", "real")),
    Case("pow_0", set(), lambda X, Y, P: (X * Y) ** 0 + Y, lambda x, y, p: 1 + y),
    Case("pow_float", {"Powf"}, lambda X, Y, P: (X * Y) ** 1.7,
         lambda x, y, p: D.Powf(x * y, torch.tensor(1.7, dtype=x.dtype)), dom=("pos", "pos", "real")),
    Case("pow_lazy", {"Powf"}, lambda X, Y, P: X**Y, lambda x, y, p: D.Powf(x, y),
         dom=("pos", "real", "real")),
    Case("power_method", {"Powf"}, lambda X, Y, P: X.power(Y), lambda x, y, p: torch.pow(x, y),
         dom=("pos", "real", "real")),
    Case("inv", {"Inv"}, lambda X, Y, P: (X * Y).inv(), lambda x, y, p: D.Inv(x * y),
         dom=("nonzero", "nonzero", "real")),
    Case("one_over", {"Inv"}, lambda X, Y, P: 1 / (X * Y), lambda x, y, p: 1 / (x * y),
         dom=("nonzero", "nonzero", "real")),
    Case("abs", {"Abs"}, lambda X, Y, P: (X - Y).abs(), lambda x, y, p: D.Abs(x - y)),
    Case("abs_builtin", {"Abs"}, lambda X, Y, P: abs(X - Y), lambda x, y, p: torch.abs(x - y)),
    Case("sign", {"Sign"}, lambda X, Y, P: (X - Y).sign(), lambda x, y, p: D.Sign(x - y),
         dom=INT),
    Case("step", {"Step"}, lambda X, Y, P: (X - Y).step(), lambda x, y, p: D.Step(x - y),
         dom=INT),
    Case("relu", {"ReLU"}, lambda X, Y, P: (X - Y).relu(), lambda x, y, p: D.ReLU(x - y)),
    Case("round", {"Round"}, lambda X, Y, P: (3 * (X + Y)).round(),
         lambda x, y, p: D.Round(3 * (x + y), 0)),
    Case("round_1", {"Round"}, lambda X, Y, P: (X + Y).round(1),
         lambda x, y, p: D.Round(x + y, 1)),
    Case("round_2", {"Round"}, lambda X, Y, P: (X + Y).round(2),
         lambda x, y, p: D.Round(x + y, 2)),
    # -- clamps, ifelse, mod -------------------------------------------------
    Case("clamp_float", {"Clamp"}, lambda X, Y, P: (X + Y).clamp(-0.5, 0.7),
         lambda x, y, p: torch.clamp(x + y, -0.5, 0.7)),
    Case("clamp_lazy", {"Clamp"}, lambda X, Y, P: (X + Y).clamp(P, P + 1),
         lambda x, y, p: D.Clamp(x + y, p, p + 1)),
    Case("clamp_int", {"ClampInt"}, lambda X, Y, P: (2 * (X + Y)).clamp(-1, 1),
         lambda x, y, p: torch.clamp(2 * (x + y), -1, 1)),
    Case("clampint", {"ClampInt"}, lambda X, Y, P: (2 * (X + Y)).clampint(-2, 1),
         lambda x, y, p: D.ClampInt(2 * (x + y), -2, 1)),
    Case("ifelse", {"IfElse"}, lambda X, Y, P: (X - Y).ifelse(X, Y * 2),
         lambda x, y, p: D.IfElse(x - y, x, 2 * y), dom=INT),
    Case("ifelse_float", {"IfElse"}, lambda X, Y, P: (X - Y).ifelse(1.5, -2.0),
         lambda x, y, p: torch.where(x - y >= 0, 1.5, -2.0).double(), dom=INT),
    Case("mod_float", {"Mod"}, lambda X, Y, P: (3 * (X + Y)).mod(1.5, 0.25),
         lambda x, y, p: torch.remainder(3 * (x + y) - 0.25, 1.5) + 0.25),
    Case("mod_lazy", {"Mod"}, lambda X, Y, P: (3 * (X + Y)).mod(P),
         lambda x, y, p: D.Mod(3 * (x + y), p, torch.zeros_like(p)), dom=PPOS),
    Case("mod_lazy_offset", {"Mod"}, lambda X, Y, P: (3 * X).mod(P, -Y),
         lambda x, y, p: torch.remainder(3 * x + y, p) - y, dom=PPOS),
    # -- comparisons -----------------------------------------------------------
    Case("eq", {"Equal"}, lambda X, Y, P: X == Y, lambda x, y, p: D.Equal(x, y), dom=INT),
    Case("ne", {"NotEqual"}, lambda X, Y, P: X != Y, lambda x, y, p: D.NotEqual(x, y),
         dom=INT),
    Case("lt", {"LessThan"}, lambda X, Y, P: X < Y, lambda x, y, p: D.LessThan(x, y), dom=INT),
    Case("gt", {"GreaterThan"}, lambda X, Y, P: X > Y, lambda x, y, p: D.GreaterThan(x, y),
         dom=INT),
    Case("le", {"LessOrEqual"}, lambda X, Y, P: X <= Y, lambda x, y, p: D.LessOrEqual(x, y),
         dom=INT),
    Case("ge", {"GreaterOrEqual"}, lambda X, Y, P: X >= Y, lambda x, y, p: D.GreaterOrEqual(x, y),
         dom=INT),
    Case("lt_scalar", {"LessThan"}, lambda X, Y, P: (X - Y) < 0.5, lambda x, y, p: (x - y < 0.5).double()),
    # -- vector reductions of the formula (dim=-1) -----------------------------
    Case("vsum", {"Sum"}, lambda X, Y, P: (X * Y).sum(-1), lambda x, y, p: D.Sum(x * y)),
    Case("vsum_dim", {"Sum"}, lambda X, Y, P: (X - Y).sum(dim=-1), lambda x, y, p: _vsum(x - y)),
    Case("vmin", {"Min"}, lambda X, Y, P: (X - Y).min(dim=-1), lambda x, y, p: D.Min(x - y)),
    Case("vmax", {"Max"}, lambda X, Y, P: (X - Y).max(dim=-1), lambda x, y, p: D.Max(x - y)),
    Case("vmin_noarg", {"Min"}, lambda X, Y, P: (X - Y).min(), lambda x, y, p: (x - y).amin(-1, True)),
    Case("vargmin", {"ArgMin"}, lambda X, Y, P: (X - Y).argmin(dim=-1),
         lambda x, y, p: D.ArgMin(x - y), dom=INT, dims=(4, 4, 3)),
    Case("vargmax", {"ArgMax"}, lambda X, Y, P: (X - Y).argmax(dim=-1),
         lambda x, y, p: D.ArgMax(x - y), dom=INT, dims=(4, 4, 3)),
    # -- norms and distances -----------------------------------------------------
    Case("sqnorm2", {"Sum", "Square"}, lambda X, Y, P: (X - Y).sqnorm2(),
         lambda x, y, p: _vsum((x - y) ** 2)),
    Case("norm2", {"Sqrt"}, lambda X, Y, P: (X - Y).norm2(),
         lambda x, y, p: torch.linalg.vector_norm(x - y, dim=-1, keepdim=True)),
    Case("norm", {"Sqrt"}, lambda X, Y, P: (X - Y).norm(dim=-1),
         lambda x, y, p: torch.linalg.vector_norm(x - y, dim=-1, keepdim=True)),
    Case("normalize", {"Rsqrt"}, lambda X, Y, P: (X - Y).normalize(),
         lambda x, y, p: torch.nn.functional.normalize((x - y).expand(M, N, 3), dim=-1)),
    Case("sqdist", {"Sum"}, lambda X, Y, P: X.sqdist(Y), lambda x, y, p: _vsum((x - y) ** 2)),
    Case("weightedsqnorm_scalar", {"Mult"}, lambda X, Y, P: (X - Y).weightedsqnorm(P),
         lambda x, y, p: p * _vsum((x - y) ** 2), dims=(3, 3, 1), dom=PPOS),
    Case("weightedsqnorm_diag", {"Mult"}, lambda X, Y, P: (X - Y).weightedsqnorm(P),
         lambda x, y, p: (p * (x - y) ** 2).sum(-1, keepdim=True), dom=PPOS),
    Case("weightedsqnorm_full", {"MatVecMult"}, lambda X, Y, P: (X - Y).weightedsqnorm(P),
         lambda x, y, p: _wsq_full(x - y, p), dims=(3, 3, 9)),
    Case("weightedsqdist", {"Mult"}, lambda X, Y, P: X.weightedsqdist(Y, P),
         lambda x, y, p: (p * (x - y) ** 2).sum(-1, keepdim=True), dom=PPOS),
    Case("weightedsqdist_full", {"MatVecMult"}, lambda X, Y, P: X.weightedsqdist(Y, P),
         lambda x, y, p: _wsq_full(x - y, p), dims=(3, 3, 9)),
    Case("scalprod", {"Sum", "Mult"}, lambda X, Y, P: (X | Y), lambda x, y, p: (x * y).sum(-1, keepdim=True)),
    # -- indexing --------------------------------------------------------------------
    Case("elem", {"Elem"}, lambda X, Y, P: (X * Y).elem(1), lambda x, y, p: D.Elem(x * y, 1)),
    Case("getitem_int", {"Elem"}, lambda X, Y, P: (X * Y)[2], lambda x, y, p: (x * y)[..., 2:3]),
    Case("getitem_negative", {"Elem"}, lambda X, Y, P: (X - Y)[-1], lambda x, y, p: (x - y)[..., 2:3]),
    Case("extract", {"Extract"}, lambda X, Y, P: (X * Y).extract(1, 2),
         lambda x, y, p: D.Extract(x * y, 1, 2)),
    Case("getitem_slice", {"Extract"}, lambda X, Y, P: (X - Y)[0:2], lambda x, y, p: (x - y)[..., 0:2]),
    Case("getitem_slice_open", {"Extract"}, lambda X, Y, P: (X - Y)[1:], lambda x, y, p: (x - y)[..., 1:]),
    Case("one_hot", {"OneHot"}, lambda X, Y, P: (X + Y).one_hot(4),
         lambda x, y, p: D.OneHot(x + y, 4), dom=("onehot_x", "onehot_y", "real"), dims=(1, 1, 1)),
    Case("take", {"Take"}, lambda X, Y, P: (X * P).take(Y, 2), lambda x, y, p: D.Take(x * p, y, 2),
         dom=("real", "int", "real"), dims=(6, 1, 1)),
    Case("take_scalar_rows", {"Take"}, lambda X, Y, P: X.take(Y + 1),
         lambda x, y, p: D.Take(x, y + 1, 1),
         dom=("real", "int", "real"), dims=(3, 1, 1)),
    # -- vector products -------------------------------------------------------------
    Case("concat", {"Concat"}, lambda X, Y, P: X.concat(Y),
         lambda x, y, p: D.Concat(x, y), dims=(2, 3, 3)),
    Case("matvecmult", {"MatVecMult"}, lambda X, Y, P: X.matvecmult(Y),
         lambda x, y, p: D.MatVecMult(x, y), dims=(6, 3, 3)),
    Case("vecmatmult", {"VecMatMult"}, lambda X, Y, P: X.vecmatmult(Y),
         lambda x, y, p: D.VecMatMult(x, y), dims=(2, 6, 3)),
    Case("tensorprod", {"TensorProd"}, lambda X, Y, P: X.tensorprod(Y),
         lambda x, y, p: D.TensorProd(x, y), dims=(2, 3, 3)),
    # -- hyperbolic functions, erf, log1p, expm1 -----------------------------------------
    Case("tanh", {"Tanh"}, lambda X, Y, P: (X + Y).tanh(), lambda x, y, p: D.Tanh(x + y)),
    Case("sinh", {"Sinh"}, lambda X, Y, P: (X + Y).sinh(), lambda x, y, p: D.Sinh(x + y)),
    Case("cosh", {"Cosh"}, lambda X, Y, P: (X + Y).cosh(), lambda x, y, p: D.Cosh(x + y)),
    Case("erf", {"Erf"}, lambda X, Y, P: (X + Y).erf(), lambda x, y, p: D.Erf(x + y)),
    Case("log1p", {"Log1p"}, lambda X, Y, P: (X * Y).log1p(), lambda x, y, p: D.Log1p(x * y),
         dom=("pos", "pos", "real")),
    Case("expm1", {"Expm1"}, lambda X, Y, P: (X - Y).expm1(), lambda x, y, p: D.Expm1(x - y)),
]


def _inputs(case: Case):
    dx, dy, dp = case.dims
    x = DOMAINS[case.dom[0]]((M, 1, dx))
    y = DOMAINS[case.dom[1]]((1, N, dy))
    p = DOMAINS[case.dom[2]]((dp,))
    return x, y, p


def _dense_sum(case, x, y, p):
    d = case.dense(x, y, p)
    d = d.expand(M, N, d.shape[-1]) if d.dim() == 3 else d
    return d.sum(1)


@pytest.mark.parametrize("frontend", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op(case, dtype, frontend):
    x, y, p = _inputs(case)
    x, y, p = x.to(dtype), y.to(dtype), p.to(dtype)
    expected = _dense_sum(case, x.double(), y.double(), p.double())
    if frontend == "torch":
        LT, conv = pkt.LazyTensor, (lambda t: t)
    else:
        LT, conv = pknp.LazyTensor, (lambda t: t.numpy())
    lazy = case.lazy(LT(conv(x)), LT(conv(y)), LT(conv(p)))
    present = {n.op for n in walk(lazy.formula)}
    assert case.ops <= present, f"formula {lazy.formula} lacks {case.ops - present}"
    res = lazy.sum(dim=1)
    res = torch.as_tensor(np.asarray(res)) if frontend == "numpy" else res
    assert res.dtype == dtype
    assert tuple(res.shape) == tuple(expected.shape)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(res.double(), expected, **tol)


def test_every_public_op_is_covered():
    covered = set().union(*(c.ops for c in CASES)) | set().union(*(c.ops for c in CONVENTION_CASES))
    missing = sorted(o.name for o in public_ops() if o.name not in covered)
    assert not missing, f"public ops without a LazyTensor test in tests/test_ops.py: {missing}"


# ---------------------------------------------------------------------------
# conventions at special points (KeOps semantics), against literal values
# ---------------------------------------------------------------------------

VALUES = [-2.5, -1.0, -0.5, 0.0, 0.5, 1.5, 2.5]


@dataclass
class Conv:
    id: str
    ops: set
    lazy: Callable
    expected: list


CONVENTION_CASES = [
    Conv("rsqrt_0", {"Rsqrt"}, lambda v: (v * v).rsqrt(), [0.4, 1.0, 2.0, 0.0, 2.0, 1 / 1.5, 0.4]),
    Conv("sign_0", {"Sign"}, lambda v: v.sign(), [-1, -1, -1, 0, 1, 1, 1]),
    Conv("step_0", {"Step"}, lambda v: v.step(), [0, 0, 0, 1, 1, 1, 1]),
    Conv("relu_0", {"ReLU"}, lambda v: v.relu(), [0, 0, 0, 0, 0.5, 1.5, 2.5]),
    Conv("sinxdivx_0", {"SinXDivX"}, lambda v: v.sinxdivx(),
         [math.sin(t) / t if t else 1.0 for t in VALUES]),
    Conv("sinc_0", {"SinXDivX"}, lambda v: v.sinc(),
         [math.sin(math.pi * t) / (math.pi * t) if t else 1.0 for t in VALUES]),
    Conv("xlogx_0", {"XLogX"}, lambda v: (v * v).xlogx(),
         [t * t * math.log(t * t) if t else 0.0 for t in VALUES]),
    Conv("round_halves", {"Round"}, lambda v: v.round(), [-3, -1, -1, 0, 1, 2, 3]),
    Conv("round_1_halves", {"Round"}, lambda v: (v / 10).round(1), [-0.3, -0.1, -0.1, 0, 0.1, 0.2, 0.3]),
    Conv("ifelse_0", {"IfElse"}, lambda v: v.ifelse(1.0, -1.0), [-1, -1, -1, 1, 1, 1, 1]),
    Conv("mod", {"Mod"}, lambda v: v.mod(2.0), [1.5, 1.0, 1.5, 0.0, 0.5, 1.5, 0.5]),
    Conv("mod_offset", {"Mod"}, lambda v: v.mod(2.0, -1.0), [-0.5, -1.0, -0.5, 0.0, 0.5, -0.5, 0.5]),
    Conv("clampint", {"ClampInt"}, lambda v: v.clampint(-1, 1), [-1, -1, -0.5, 0, 0.5, 1, 1]),
    Conv("clamp", {"Clamp"}, lambda v: v.clamp(-1.0, 1.0), [-1, -1, -0.5, 0, 0.5, 1, 1]),
    Conv("abs", {"Abs"}, lambda v: v.abs(), [2.5, 1, 0.5, 0, 0.5, 1.5, 2.5]),
    Conv("normalize_0", {"Rsqrt"}, lambda v: v.normalize(), [-1, -1, -1, 0, 1, 1, 1]),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CONVENTION_CASES, ids=[c.id for c in CONVENTION_CASES])
def test_convention_at_special_points(case, dtype):
    x = torch.tensor(VALUES, dtype=dtype)[:, None, None]
    y = torch.zeros(1, 2, 1, dtype=dtype)  # exact zeros: x + y == x, N = 2
    lazy = case.lazy(pkt.LazyTensor(x) + pkt.LazyTensor(y))
    assert case.ops <= {n.op for n in walk(lazy.formula)}
    res = lazy.sum(dim=1)
    expected = 2 * torch.tensor(case.expected, dtype=torch.float64)[:, None]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.double(), expected, **tol)


def test_comparisons_give_zero_or_one():
    x = torch.randint(-2, 3, (50, 1, 2)).double()
    y = torch.randint(-2, 3, (1, 40, 2)).double()
    X, Y = pkt.LazyTensor(x), pkt.LazyTensor(y)
    for lazy, dense in [(X == Y, x == y), (X < Y, x < y), (X >= Y, x >= y)]:
        mx = lazy.max(dim=1)
        mn = lazy.min(dim=1)
        assert set(torch.unique(torch.cat([mx, mn])).tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(lazy.sum(dim=1), dense.double().sum(1))
