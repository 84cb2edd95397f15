"""The analysis that finds i x j inner products for the block micro-kernels (formula layer)."""

from __future__ import annotations

import pytest

from polykeops.formula import CAT_I, CAT_J, CAT_P, Var, grad
from polykeops.formula import algebra as A
from polykeops.formula.inner_products import (
    COLUMNS,
    DOT,
    ROWS,
    SQDIST,
    find_inner_products,
    group_by_operand,
)
from polykeops.formula.parser import parse_reduction_formula

ALIASES = ["x = Vi(0, {d})", "y = Vj(1, {d})", "z = Vi(2, {d})", "w = Pm(3, {d})", "b = Vj(4, 4)",
           "s = Pm(5, 1)", "u = Vj(6, {d})"]


def parse(text: str, d: int = 64):
    f, variables = parse_reduction_formula(text, [a.format(d=d) for a in ALIASES])
    return f, {v.params[0]: v for v in variables}


def found(text: str, d: int = 64, **kw):
    f, v = parse(text, d)
    return find_inner_products(f, **kw), v


@pytest.mark.parametrize("text", [
    "SqDist(x, y)", "SqNorm2(x - y)", "SqNorm2(y - x)", "Sum(Square(x - y))", "Sum((x - y) * (x - y))",
    "Exp(-SqDist(x, y))", "Exp(-SqDist(x, y)) * b", "Norm2(x - y)", "Sqrt(SqDist(x, y)) + s",
    "Log(IntCst(1) + SqDist(x, y))", "IfElse(SqDist(x, y) - s, s, -s)",
])
def test_squared_distances(text):
    ps, v = found(text)
    assert len(ps) == 1
    p = ps[0]
    assert (p.kind, p.dim, p.count, p.scale) == (SQDIST, 64, 1, 1)
    assert p.x is v[0] and p.y is v[1]
    assert p.node.op == "Sum" and p.node.dim == 1


@pytest.mark.parametrize("text", ["(x | y)", "(y | x)", "Sum(x * y)", "Exp((x | y)) * b",
                                  "Scalprod(x, y)"])
def test_dot_products(text):
    ps, v = found(text)
    assert [(p.kind, p.dim, p.x, p.y) for p in ps] == [(DOT, 64, v[0], v[1])]


def test_operands_may_be_one_sided_expressions():
    ps, v = found("Exp(-SqDist(x * w, y + u))")
    (p,) = ps
    assert p.x is A.mul(v[0], v[3]) and p.y is A.add(v[1], v[6])
    ps, v = found("(x * w | y)")
    assert ps[0].x is A.mul(v[0], v[3])
    # |x + y|^2 is the distance between x and -y
    ps, v = found("SqNorm2(x + y)")
    assert ps[0].kind == SQDIST and ps[0].x is v[0] and ps[0].y is A.neg(v[1])


def test_constant_scale():
    ps, _ = found("Sum(IntCst(2) * Square(x - y))")
    assert ps[0].kind == SQDIST and ps[0].scale == 2
    ps, _ = found("Sum(-(x * y))")
    assert ps[0].kind == DOT and ps[0].scale == -1


def test_several_products_and_groups():
    ps, v = found("Exp(-SqDist(x, y)) + (z | y) + (x | u)")
    assert {(p.kind, p.x, p.y) for p in ps} == {(SQDIST, v[0], v[1]), (DOT, v[2], v[1]), (DOT, v[0], v[6])}
    groups = group_by_operand(ps)
    assert len(groups[v[1]]) == 2 and len(groups[v[6]]) == 1
    # a node used twice is found once
    ps, _ = found("SqDist(x, y) * Exp(-SqDist(x, y))")
    assert len(ps) == 1


def test_matvec_like():
    f = A.node("MatVecMult", Var(0, 3 * 32, CAT_I), Var(1, 32, CAT_J))
    (p,) = find_inner_products(f)
    assert (p.kind, p.dim, p.count, p.matrix, p.layout) == (DOT, 32, 3, "x", ROWS)
    f = A.node("VecMatMult", Var(0, 32, CAT_I), Var(1, 32 * 5, CAT_J))
    (p,) = find_inner_products(f)
    assert (p.dim, p.count, p.matrix, p.layout) == (32, 5, "y", COLUMNS)
    assert p.pairs_flops == 160


@pytest.mark.parametrize("text, d", [
    ("SqDist(x, y)", 15),  # below the threshold
    ("SqDist(x, z)", 64),  # i with i: a row value, not a pair value
    ("SqDist(y, u)", 64),  # j with j
    ("(x | w)", 64),  # i with a parameter
    ("Sum(Square(x - y + x * y))", 64),  # not a difference of one-sided operands
    ("Sum(Exp(x - y))", 64),
    ("Sum(x * y * u)", 64),  # the j side is y * u (fine) but x * y is mixed: Mult(Mult(x,y),u)
    ("Sum(Sin(x) * Cos(y - x))", 64),
    ("Max(x * y)", 64),
    ("x * y", 64),  # no sum
])
def test_not_found(text, d):
    ps, _ = found(text, d)
    assert ps == []


def test_threshold_parameter():
    ps, _ = found("SqDist(x, y)", 8, min_dim=8)
    assert len(ps) == 1
    ps, _ = found("SqDist(x, y)", 8)
    assert ps == []
    ps, _ = found("SqDist(x, y)", 16)
    assert len(ps) == 1


def test_gradient_keeps_the_distance():
    f, v = parse("Exp(-SqDist(x, y)) * b")
    g = grad(f, v[0], Var(7, 4, CAT_I))
    ps = find_inner_products(g)
    assert any(p.kind == SQDIST and p.x is v[0] and p.y is v[1] for p in ps)


def test_parameters_only_on_one_side_are_allowed():
    w = Var(3, 64, CAT_P)
    f = A.vsum(A.mul(A.mul(Var(0, 64, CAT_I), w), A.add(Var(1, 64, CAT_J), w)))
    (p,) = find_inner_products(f)
    assert p.kind == DOT and p.x is A.mul(Var(0, 64, CAT_I), w)
