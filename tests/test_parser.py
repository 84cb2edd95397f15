"""Tests of the KeOps formula-string parser (polykeops.formula.parser)."""

from __future__ import annotations

import inspect
import random
import re
import sys
from fractions import Fraction

import pytest

from polykeops.errors import FormulaError, FormulaSyntaxError
from polykeops.formula import algebra as A
from polykeops.formula import composite as C
from polykeops.formula import parser as P
from polykeops.formula.composite import COMPOSITES
from polykeops.formula.derivative import diff, grad
from polykeops.formula.nodes import Const, Node, Var, Zero, variables
from polykeops.formula.ops import OPS, PI, public_ops
from polykeops.formula.parser import (
    parse_alias,
    parse_aliases,
    parse_formula,
    parse_reduction_formula,
)
from polykeops.formula.printing import to_string

X = Var(0, 3, 0)
Y = Var(1, 3, 1)
B = Var(2, 1, 1)
S = Var(3, 1, 2)
M = Var(4, 9, 2)
ALIASES = {"x": X, "y": Y, "b": B, "s": S, "m": M}


def parse(text: str) -> Node:
    return parse_formula(text, ALIASES)


def syntax_error(text: str, aliases=None) -> FormulaSyntaxError:
    with pytest.raises(FormulaSyntaxError) as info:
        parse_formula(text, ALIASES if aliases is None else aliases)
    return info.value


# ---------------------------------------------------------------------------
# precedence, associativity, numbers
# ---------------------------------------------------------------------------

PRECEDENCE_CASES = [
    ("x + y * b", A.add(X, A.mul(Y, B))),
    ("x * y + b", A.add(A.mul(X, Y), B)),
    ("(x + y) * b", A.mul(A.add(X, Y), B)),
    ("x - y - b", A.sub(A.sub(X, Y), B)),
    ("x - (y - b)", A.sub(X, A.sub(Y, B))),
    ("x / y / b", A.div(A.div(X, Y), B)),
    ("x * y / b", A.div(A.mul(X, Y), B)),
    ("x / y * b", A.mul(A.div(X, Y), B)),
    ("x + y - b + x", A.add(A.sub(A.add(X, Y), B), X)),
    ("-x * y", A.mul(A.neg(X), Y)),
    ("x * -y", A.mul(X, A.neg(Y))),
    ("x - -y", A.add(X, Y)),
    ("--x", X),
    ("+x", X),
    ("-x ** 3", A.neg(A.power(X, 3))),
    ("(-x) ** 3", A.power(A.neg(X), 3)),
    ("-x**2", Node("Minus", (Node("Square", (X,)),))),
    ("x ** 2 ** 3", A.power(X, 8)),
    ("2 ** 3 ** 2", Const(512)),
    ("x ** 2 * y", A.mul(A.square(X), Y)),
    ("b ** -1", Node("Inv", (B,))),
    ("b ** -2", Node("Pow", (B,), (-2,))),
    ("x ** 0", Const(1, 3)),
    ("x ** 1", X),
    ("x ** 0.5", Node("Sqrt", (X,))),
    ("x ** -0.5", Node("Rsqrt", (X,))),
    ("x ** (1/2)", Node("Sqrt", (X,))),
    ("x ** 1.5", Node("Powf", (X, Const(Fraction(3, 2))))),
    ("x ** -0.25", Node("Powf", (X, Const(Fraction(-1, 4))))),
    ("x ** b", Node("Powf", (X, B))),
    ("x ** (b + s)", Node("Powf", (X, A.add(B, S)))),
    ("2 * x", Node("Mult", (Const(2), X))),
    ("x * 2", Node("Mult", (Const(2), X))),
    ("x / 2", Node("Mult", (Const(Fraction(1, 2)), X))),
    ("1 / x", Node("Inv", (X,))),
    ("0.1 * x", Node("Mult", (Const(Fraction(1, 10)), X))),
    ("(x | y)", A.vsum(A.mul(X, Y))),
    ("(x + y | y)", A.scalprod(A.add(X, Y), Y)),
    ("(x | y) * b", A.mul(A.scalprod(X, Y), B)),
    ("((x))", X),
    (" x\t+\n y ", A.add(X, Y)),
    ("x*0", Zero(3)),
    ("x + x", Node("Mult", (Const(2), X))),
]


@pytest.mark.parametrize("text, expected", PRECEDENCE_CASES)
def test_precedence_and_associativity(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("0", 0),
        ("-3", -3),
        ("2.5", Fraction(5, 2)),
        (".5", Fraction(1, 2)),
        ("3.", 3),
        ("1e3", 1000),
        ("1E-3", Fraction(1, 1000)),
        ("2.5e-1", Fraction(1, 4)),
        ("0.1", Fraction(1, 10)),
        ("12345678901234567890", 12345678901234567890),
        ("1/3", Fraction(1, 3)),
        ("2 - 1/2", Fraction(3, 2)),
    ],
)
def test_number_literals_are_exact(text, value):
    node = parse(text)
    assert node == Const(value)
    assert node.value == value
    assert type(node.value) is type(Const(value).value)


# ---------------------------------------------------------------------------
# special forms, ops, composites
# ---------------------------------------------------------------------------

SPECIAL_CASES = [
    ("Var(0, 3, 0)", X),
    ("Var(7,2,2)", Var(7, 2, 2)),
    ("Vi(5, 2)", Var(5, 2, 0)),
    ("Vj(5, 2)", Var(5, 2, 1)),
    ("Pm(5, 2)", Var(5, 2, 2)),
    ("IntCst(7)", Const(7)),
    ("IntCst(-7)", Const(-7)),
    ("IntCst(0)", Zero(1)),
    ("Cst(0.25)", Const(0.25)),
    ("Cst(-1.5e-3)", Const(-1.5e-3)),
    ("Cst(3)", Const(3)),
    ("Cst(1e+300)", Const(1e300)),
    ("Cst(inf)", Const(float("inf"))),
    ("Cst(-inf)", Const(float("-inf"))),
    ("IntInv(3)", Const(Fraction(1, 3))),
    ("IntInv(-4)", Const(Fraction(-1, 4))),
    ("Rational(2, 6)", Const(Fraction(1, 3))),
    ("Rational(-3, 4)", Const(Fraction(-3, 4))),
    ("Rational(4, 2)", Const(2)),
    ("Zero(4)", Zero(4)),
    ("SumT(IntCst(2), 3)", Const(2, 3)),
    ("SumT(IntCst(1)/IntCst(2), 3)", Const(Fraction(1, 2), 3)),
    ("SumT(Cst(0.25), 2)", Const(0.25, 2)),
    ("SumT(Zero(1), 5)", Zero(5)),
    ("SumT(b, 4)", Node("SumT", (B,), (4,))),
    ("Elem(x, 2)", Node("Elem", (X,), (2,))),
    ("Extract(x, 0, 2)", Node("Extract", (X,), (0, 2))),
    ("Round(x, 1)", Node("Round", (X,), (1,))),
    ("Round(x, -1)", Node("Round", (X,), (-1,))),
    ("Pow(x, 3)", Node("Pow", (X,), (3,))),
    ("Pow(x, 2)", Node("Square", (X,))),
    ("Pow(x, +3)", Node("Pow", (X,), (3,))),
    ("ClampInt(x, -1, 1)", Node("ClampInt", (X,), (-1, 1))),
    ("OneHot(b, 4)", Node("OneHot", (B,), (4,))),
    ("ElemT(b, 1, 3)", Node("ElemT", (B,), (1, 3))),
    ("ExtractT(x, 1, 5)", Node("ExtractT", (X,), (1, 5))),
    ("Square(x)", Node("Square", (X,))),
    ("Sqrt(x)", Node("Sqrt", (X,))),
    ("Rsqrt(x)", Node("Rsqrt", (X,))),
    ("Inv(x)", Node("Inv", (X,))),
    ("Exp(x)", Node("Exp", (X,))),
    ("Exp(2)", Node("Exp", (Const(2),))),
    ("Exp(-2)", Node("Exp", (Const(-2),))),
    ("Minus(x)", Node("Minus", (X,))),
    ("Sum(x)", Node("Sum", (X,))),
    ("Add(x, y)", A.add(X, Y)),
    ("Powf(x, b)", Node("Powf", (X, B))),
    ("IfElse(b, x, y)", Node("IfElse", (B, X, Y))),
    ("Concat(x, b)", Node("Concat", (X, B))),
    ("MatVecMult(m, x)", Node("MatVecMult", (M, X))),
    ("SqNorm2(x)", C.sqnorm2(X)),
    ("Norm2(x)", C.norm2(X)),
    ("Normalize(x)", C.normalize(X)),
    ("SqDist(x, y)", C.sqdist(X, Y)),
    ("WeightedSqNorm(s, x)", C.weightedsqnorm(S, X)),
    ("WeightedSqNorm(m, x)", C.weightedsqnorm(M, X)),
    ("WeightedSqDist(m, x, y)", C.weightedsqdist(M, X, Y)),
    ("Scalprod(x, y)", A.scalprod(X, Y)),
    ("Sinc(b)", C.sinc(B)),
    ("Exp(-SqDist(x,y)) * b", A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)),
]


@pytest.mark.parametrize("text, expected", SPECIAL_CASES)
def test_special_forms_ops_and_composites(text, expected):
    assert parse(text) == expected


def test_inline_variables_need_no_aliases():
    f = parse_formula("Exp(-SqDist(Vi(0,3), Vj(1,3))) * Vj(2,1)")
    assert f == A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)
    assert variables(f) == [X, Y, B]


def test_sinc_uses_exact_pi():
    assert parse("Sinc(b)").args[0].args[0] == Const(PI)


def test_alias_shadowing_a_function_name():
    # an alias may reuse a function's name: Exp(...) is the op, a bare Exp the alias
    f = parse_formula("Exp(Exp)", {"Exp": X})
    assert f == Node("Exp", (X,))


# ---------------------------------------------------------------------------
# Grad, Diff, GradFromPos
# ---------------------------------------------------------------------------


def test_grad_equals_derivative_grad():
    f = A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)
    e = Var(5, 1, 0)
    text = "Grad(Exp(-SqDist(x, y)) * b, x, e)"
    aliases = {**ALIASES, "e": e}
    assert parse_formula(text, aliases) == grad(f, X, e)
    assert parse_formula(text.replace(", x,", ", y,"), aliases) == grad(f, Y, e)
    assert parse_formula(text.replace(", x,", ", Var(0,3,0),"), aliases) == grad(f, X, e)


def test_grad_with_respect_to_an_absent_variable_is_zero():
    assert parse("Grad(SqNorm2(x), y, b)") == Zero(3)


def test_nested_grad():
    e = Var(5, 1, 0)
    inner = grad(C.sqnorm2(X), X, e)
    expected = grad(A.scalprod(inner, Y), X, e)
    assert parse_formula("Grad((Grad(SqNorm2(x), x, e) | y), x, e)", {**ALIASES, "e": e}) == (
        expected
    )


def test_diff_equals_derivative_diff():
    f = A.mul(A.node("Sin", X), Y)
    assert parse("Diff(Sin(x) * y, x, y)") == diff(f, X, Y)


def test_grad_from_pos():
    f = C.sqdist(X, Y)
    assert parse("GradFromPos(SqDist(x, y), 1, b)") == grad(f, Y, B)
    assert parse("GradFromPos(SqDist(x, y), 0, b)") == grad(f, X, B)
    # a variable that only an alias defines: zero gradient of its dimension
    assert parse("GradFromPos(SqDist(x, y), 4, b)") == Zero(9)


def test_grad_string_matches_grad_of_random_formulas():
    rnd = random.Random(1)
    e = Var(9, 1, 1)
    count = 0
    for _ in range(400):
        f = _random_formula(rnd, 3)
        vs = variables(f)
        if not vs:
            continue
        v = rnd.choice(vs)
        ee = Var(9, f.dim, 1) if rnd.random() < 0.5 else e
        text = f"Grad({to_string(f)},{to_string(v)},{to_string(ee)})"
        assert parse_formula(text) == grad(f, v, ee), text
        count += 1
    assert count > 100


# ---------------------------------------------------------------------------
# aliases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, position, name, var",
    [
        ("x = Vi(3)", 0, "x", Var(0, 3, 0)),
        ("y = Vj(3)", 1, "y", Var(1, 3, 1)),
        ("p = Pm(2)", 4, "p", Var(4, 2, 2)),
        ("b = Vj(0, 1)", 5, "b", Var(0, 1, 1)),
        ("x = Var(0, 3, 0)", 2, "x", Var(0, 3, 0)),
        ("w=Var(6,2,2)", 0, "w", Var(6, 2, 2)),
        ("  long_name1\t=  Vi ( 7 , 4 ) ", 0, "long_name1", Var(7, 4, 0)),
        ("x=Vi(3)", 3, "x", Var(3, 3, 0)),
    ],
)
def test_parse_alias(text, position, name, var):
    assert parse_alias(text, position) == (name, var)


@pytest.mark.parametrize(
    "text, position, fragment",
    [
        ("", 0, "empty alias"),
        ("x Vi(3)", 2, "expected '='"),
        ("= Vi(3)", 0, "starts with a name"),
        ("3 = Vi(3)", 0, "starts with a name"),
        ("x = Vii(3)", 4, "did you mean 'Vi'"),
        ("x = Vk(3)", 4, "did you mean"),
        ("x = Foo(3)", 4, "'Foo'"),
        ("x = ", 4, "the end of the text"),
        ("x = Vi 3", 7, "expected '('"),
        ("x = Vi(y)", 7, "'y'"),
        ("x = Vi(1.5)", 7, "integer literal"),
        ("x = Vi(3", 6, "never closed"),
        ("x = Vi(3) z", 10, "'z'"),
        ("x = Vi(3))", 9, "unmatched ')'"),
        ("x = Var(1, 2)", 12, "Var takes 3 arguments"),
        ("x = Vi(1, 2, 3)", 13, "Vi takes 2 arguments"),
        ("x = Vi()", 7, "Vi takes 2 arguments"),
        ("x = Vi(0)", 4, "dimension must be a positive int"),
        ("x = Vi(-1, 3)", 4, "index must be a non-negative int"),
        ("x = Var(0, 3, 5)", 4, "category"),
        ("x = Vi(3) # c", 10, "'#'"),
    ],
)
def test_parse_alias_errors(text, position, fragment):
    with pytest.raises(FormulaSyntaxError) as info:
        parse_alias(text, 0)
    assert info.value.position == position
    assert fragment in str(info.value)
    assert info.value.text == text


def test_parse_aliases():
    got = parse_aliases(["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "s=Pm(1)", "m = Pm(9)"])
    assert got == ALIASES
    assert list(got) == ["x", "y", "b", "s", "m"]
    # explicit indices, and the same index twice with the same signature
    got = parse_aliases(["b = Vj(2, 1)", "x = Vi(0, 3)", "c = Vj(2, 1)"])
    assert got == {"b": B, "x": X, "c": B}
    assert parse_aliases([]) == {}


def test_parse_aliases_errors():
    with pytest.raises(FormulaError, match="'x' is defined twice"):
        parse_aliases(["x = Vi(3)", "x = Vj(3)"])
    with pytest.raises(FormulaError, match="index 0"):
        parse_aliases(["x = Vi(0, 3)", "y = Vj(0, 3)"])
    with pytest.raises(FormulaError, match="index 1"):
        parse_aliases(["x = Vi(3)", "y = Vj(1, 2)", "z = Vj(1, 3)"])
    with pytest.raises(FormulaSyntaxError) as info:
        parse_aliases(["x = Vi(3)", "y = Vj(3"])
    assert "alias #1" in str(info.value)


# ---------------------------------------------------------------------------
# parse_reduction_formula
# ---------------------------------------------------------------------------


def test_parse_reduction_formula():
    f, args = parse_reduction_formula(
        "Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]
    )
    assert f == A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)
    assert args == (X, Y, B)
    # sorted by index, unused aliases kept, inline variables included
    f, args = parse_reduction_formula(
        "SqNorm2(x) * Var(3, 1, 2)", ["b = Vj(2, 1)", "x = Vi(0, 3)", "y = Vj(1, 3)"]
    )
    assert args == (X, Y, B, Var(3, 1, 2))


def test_parse_reduction_formula_holes():
    with pytest.raises(FormulaError, match="variable index 1 is missing"):
        parse_reduction_formula("x + z", ["x = Vi(0, 3)", "z = Vi(2, 3)"])
    with pytest.raises(FormulaError, match="variable index 0 is missing"):
        parse_reduction_formula("Var(1, 2, 0)", [])
    f, args = parse_reduction_formula("IntCst(3)", [])
    assert f == Const(3) and args == ()


# ---------------------------------------------------------------------------
# round trip of to_string
# ---------------------------------------------------------------------------

_LEAVES = [
    X,
    Y,
    B,
    S,
    M,
    Var(5, 2, 0),
    Const(2),
    Const(-7),
    Const(Fraction(1, 3)),
    Const(Fraction(-5, 2), 3),
    Const(0.1, 3),
    Const(-1.25),
    Const(1e-300),
    Const(PI),
    Zero(1),
    Zero(3),
]


def _random_formula(rnd: random.Random, depth: int) -> Node:
    """A random formula built through the smart constructors (canonical form)."""
    if depth == 0 or rnd.random() < 0.2:
        return rnd.choice(_LEAVES)
    names = sorted(OPS)
    for _ in range(30):
        try:
            if rnd.random() < 0.15:
                name = rnd.choice(sorted(COMPOSITES))
                n = len(inspect.signature(COMPOSITES[name]).parameters)
                return COMPOSITES[name](*[_random_formula(rnd, depth - 1) for _ in range(n)])
            op = OPS[rnd.choice(names)]
            args = [_random_formula(rnd, depth - 1) for _ in range(op.arity)]
            params = op.random_params([a.dim for a in args], rnd) if op.random_params else ()
            if op.name == "SumT" and args[0].op in ("Const", "Zero"):
                return A.broadcast_to(args[0], params[0])
            return A.node(op.name, *args, params=params)
        except (FormulaError, ValueError, IndexError):
            continue
    return rnd.choice(_LEAVES)


ROUND_TRIP = [
    X,
    Const(3),
    Const(-3),
    Const(Fraction(1, 2)),
    Const(Fraction(-1, 2)),
    Const(Fraction(7, 3), 4),
    Const(0.25),
    Const(-0.1),
    Const(1e20),
    Const(1.5e-8, 2),
    Const(float("inf")),
    Const(PI),
    Zero(1),
    Zero(5),
    A.add(X, Y),
    A.sub(X, Y),
    A.mul(X, Y),
    A.div(X, Y),
    A.neg(X),
    A.neg(A.add(X, Y)),
    A.sub(Const(1), X),
    A.mul(Const(2), X),
    A.mul(Const(-2), X),
    A.mul(Const(Fraction(1, 2)), X),
    A.mul(Const(Fraction(-1, 2), 3), X),
    A.mul(Const(0.25), X),
    A.add(X, Const(0.5, 3)),
    A.div(Const(1), B),
    A.div(Const(3), B),
    A.square(X),
    A.power(X, 5),
    A.power(X, -3),
    A.vsum(X),
    A.scalprod(X, Y),
    A.broadcast_to(B, 3),
    A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B),
    C.norm2(A.sub(X, Y)),
    C.normalize(X),
    C.weightedsqdist(M, X, Y),
    C.weightedsqnorm(X, Y),
    C.sinc(B),
    A.node("Powf", X, Const(Fraction(1, 3))),
    A.node("Powf", X, Const(0.7)),
    A.node("ClampInt", X, params=(-1, 1)),
    A.node("Round", X, params=(-2,)),
    A.node("Extract", A.node("ElemT", B, params=(1, 4)), params=(1, 2)),
    A.node("IfElse", A.sub(B, S), X, A.neg(Y)),
    A.node("Concat", A.node("OneHot", B, params=(3,)), Y),
    A.node("TensorProd", X, Y),
    A.node("VecMatMult", X, M),
    grad(A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B), X, Var(6, 1, 0)),
    grad(C.norm2(A.sub(X, Y)), Y, Var(6, 1, 0)),
    grad(C.weightedsqdist(M, X, Y), M, Var(6, 1, 0)),
    diff(A.node("Atan2", A.node("Sin", X), Y), X, Y),
]


@pytest.mark.parametrize("f", ROUND_TRIP, ids=lambda f: to_string(f)[:60])
def test_round_trip_listed_formulas(f):
    assert parse_formula(to_string(f)) == f


def _example_of_op(name: str, rnd: random.Random) -> Node:
    """A valid node of op ``name``, built through algebra.node with valid parameters."""
    op = OPS[name]
    dims_choices = [(3,), (1,), (3, 3), (9, 3), (3, 9), (3, 1), (1, 3), (3, 3, 3), (1, 3, 3)]
    for dims in dims_choices * 10:
        if len(dims) != op.arity:
            continue
        args = [Var(k, d, k % 3) for k, d in enumerate(dims)]
        params = op.random_params(dims, rnd) if op.random_params else ()
        try:
            node = A.node(name, *args, params=params)
        except FormulaError:
            continue
        if node.op == name:  # not rewritten (Pow(x, -1) is Inv(x))
            return node
    raise AssertionError(f"no example for {name}")


@pytest.mark.parametrize("name", sorted(OPS))
def test_round_trip_every_op(name):
    rnd = random.Random(name)
    for _ in range(5):
        f = _example_of_op(name, rnd)
        text = to_string(f)
        assert parse_formula(text) == f, text
        # the same op written by hand, with spaces
        args = [to_string(a) for a in f.args] + [str(p) for p in f.params]
        assert parse_formula(f"{name}( {' , '.join(args)} )") == f


def test_every_public_op_is_covered():
    assert {o.name for o in public_ops()} <= set(OPS)
    rnd = random.Random(0)
    for o in public_ops():
        assert _example_of_op(o.name, rnd).op == o.name


def test_round_trip_random_formulas():
    rnd = random.Random(0)
    for _ in range(3000):
        f = _random_formula(rnd, 4)
        text = to_string(f)
        assert parse_formula(text) == f, text


def test_round_trip_with_alias_names():
    f = A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)
    names = {v: k for k, v in ALIASES.items()}
    text = to_string(f, names)
    assert text == "(Exp((-Sum(Square((x-y)))))*b)"
    assert parse(text) == f


def test_printed_examples():
    assert parse_formula("(Exp((-Sum(Square((Var(0,3,0)-Var(1,3,1))))))*Var(2,1,1))") == (
        A.mul(A.node("Exp", A.neg(C.sqdist(X, Y))), B)
    )
    assert parse_formula("(IntCst(1)/IntCst(2))") == Const(Fraction(1, 2))
    assert parse_formula("SumT(x,3)", {"x": B}) == Node("SumT", (B,), (3,))


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

ERROR_CASES = [
    # text, position, fragment of the message
    ("", 0, "empty formula"),
    ("   ", 0, "empty formula"),
    ("Exq(x)", 0, "'Exq'"),
    ("x + z", 4, "unknown name 'z'"),
    ("x + y +", 7, "end of the text"),
    ("* x", 0, "'*'"),
    ("x + * y", 4, "'*'"),
    ("(x + y", 0, "never closed"),
    ("Exp(x + y", 3, "never closed"),
    ("x + y)", 5, "unmatched ')'"),
    ("Exp(x))", 6, "unmatched ')'"),
    ("x y", 2, "'y'"),
    ("Exp(x) 2", 7, "'2'"),
    ("Exp(x y)", 6, "'y'"),
    ("x $ y", 2, "'$'"),
    ("x = y", 2, "'='"),
    ("()", 1, "')'"),
    ("Exp()", 4, "Exp takes 1 argument"),
    ("Exp(x, y)", 7, "Exp takes 1 argument"),
    ("Exp(x,)", 6, "')'"),
    ("Elem(x)", 6, "Elem takes 2 arguments"),
    ("Elem(x, 1, 2)", 11, "Elem takes 2 arguments"),
    ("Elem(x, y)", 8, "integer literal, got 'y'"),
    ("Elem(x, 1.0)", 8, "integer literal, got '1.0'"),
    ("Elem(x, 1 + 1)", 8, "integer literal, got '1 + 1'"),
    ("ClampInt(x, -1, b)", 16, "integer literal"),
    ("Var(x, 3, 0)", 4, "integer literal, got 'x'"),
    ("IntCst(1.5)", 7, "integer literal"),
    ("IntCst(x)", 7, "integer literal"),
    ("Cst(x)", 4, "number literal"),
    ("Cst(1e999)", 4, "overflows"),
    ("Exp(inf)", 4, "Cst(inf)"),
    ("Zero(0)", 0, "positive"),
    ("IntInv(0)", 7, "division by zero"),
    ("Rational(1, 0)", 12, "division by zero"),
    ("Grad(x, x + y, b)", 8, "must be a variable (an alias or Var(...)), got 'x + y'"),
    ("Grad(x, 2, b)", 8, "must be a variable"),
    ("Diff(x, Exp(y), y)", 8, "must be a variable"),
    ("GradFromPos(x, 7, b)", 15, "no variable of index 7"),
    ("GradFromPos(x, y, b)", 15, "integer literal"),
    ("Exp", 0, "'Exp' is a function"),
    ("x(2)", 0, "'x' is a variable"),
    ("x + Var(0, 2, 0)", 4, "index 0"),
    ("1e5000", 0, "too large"),
    ("2 ** 3 ** 20", 2, "too large"),
]


@pytest.mark.parametrize("text, position, fragment", ERROR_CASES)
def test_error_positions(text, position, fragment):
    err = syntax_error(text)
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert err.text == text
    if text.strip():
        # the rendered message has a caret under the position
        assert "\n    " + " " * position + "^" in str(err)


@pytest.mark.parametrize(
    "text, position, fragment",
    [
        ("x + y * b * Var(5, 2, 0)", 10, "incompatible vector dimensions"),
        ("x + Var(5, 2, 0)", 2, "incompatible vector dimensions 3 and 2"),
        ("x - Var(5, 2, 0)", 2, "subtraction"),
        ("x / Var(5, 2, 0)", 2, "division"),
        ("(x | b)", 3, "scalar product (a|b) needs equal dimensions"),
        ("Elem(x, 3)", 0, "parameter m=3 out of range"),
        ("Extract(x, 1, 3)", 0, "out of range"),
        ("SumT(x, 2)", 0, "SumT broadcasts a scalar"),
        ("Exp(x) + SqDist(x, b)", 9, "SqDist needs operands of equal dimension"),
        ("Atan2(x, Var(5, 2, 0))", 0, "incompatible vector dimensions"),
        ("x ** Var(5, 2, 0)", 2, "incompatible vector dimensions"),
        ("MatVecMult(x, m)", 0, "not a multiple"),
        ("Grad(SqNorm2(x), x, y)", 0, "cotangent"),
        ("Diff(x, x, b)", 0, "direction"),
        ("WeightedSqNorm(Var(5, 2, 0), x)", 0, "weight dimension 2"),
    ],
)
def test_dimension_errors_are_positioned(text, position, fragment):
    err = syntax_error(text)
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert isinstance(err, FormulaError)
    assert isinstance(err.__cause__, FormulaError)
    # the original message is kept as is
    assert str(err).startswith(str(err.__cause__))


@pytest.mark.parametrize(
    "text, bad, suggestion",
    [
        ("Exq(x)", "Exq", "Exp"),
        ("exp(x)", "exp", "Exp"),
        ("SqDst(x, y)", "SqDst", "SqDist"),
        ("Sqrtt(x)", "Sqrtt", "Sqrt"),
        ("Norm(x)", "Norm", "Norm2"),
        ("IntCts(2)", "IntCts", "IntCst"),
        ("Exp(xx)", "xx", "x"),
        ("Exp(X)", "X", "x"),
    ],
)
def test_did_you_mean(text, bad, suggestion):
    err = syntax_error(text)
    message = str(err).splitlines()[0]
    assert repr(bad) in message
    assert f"did you mean {suggestion!r}" in message
    assert err.position == text.index(bad)


def test_no_aliases_hint():
    err = syntax_error("Exp(qqq)", aliases={})
    assert "no aliases were given" in str(err)
    assert err.position == 4


def test_errors_are_formula_errors_and_value_errors():
    err = syntax_error("x +")
    assert isinstance(err, FormulaError) and isinstance(err, ValueError)


def test_deep_nesting_parses_and_absurd_nesting_is_an_error_not_a_crash():
    assert parse("(" * 50 + "x" + ")" * 50) == X
    assert parse("Exp(" * 50 + "x" + ")" * 50).op == "Exp"
    # 10,000 levels: parsed on a thread with a deep stack (the caller's limits are untouched)
    limit = sys.getrecursionlimit()
    assert parse("(" * 10_000 + "x" + ")" * 10_000) == X
    node = parse("Exp(" * 10_000 + "x" + ")" * 10_000)
    depth = 0
    while node.op == "Exp":
        node, depth = node.args[0], depth + 1
    assert depth == 10_000 and node == X and sys.getrecursionlimit() == limit
    deep = "(" * 60_000 + "x" + ")" * 60_000
    err = syntax_error(deep)
    assert "nested too deeply" in str(err) and sys.getrecursionlimit() == limit


def test_long_flat_formulas():
    f = parse(" + ".join(["b"] * 2000))
    assert f.dim == 1


# ---------------------------------------------------------------------------
# implementation constraints
# ---------------------------------------------------------------------------


def test_parser_never_evaluates_python():
    source = inspect.getsource(P)
    assert not re.search(r"\beval\s*\(", source)
    assert not re.search(r"\bexec\s*\(", source)
    assert "literal_eval" not in source
    assert not re.search(r"(?<![\w.])compile\s*\(", source)  # re.compile is fine
    # a formula that would be valid Python is rejected, not executed
    with pytest.raises(FormulaSyntaxError):
        parse_formula("__import__('os')")


def test_parser_imports_no_array_library():
    source = inspect.getsource(P)
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, flags=re.MULTILINE)
    for module in imports:
        assert module.split(".")[0] not in ("numpy", "torch", "jax", "cupy"), module


def test_formula_layer_has_no_import_cycle():
    """The modules of polykeops.formula import each other in one direction (imports inside
    functions included): the op table's record (optable) below nodes, the rules (ops) above."""
    import ast
    from pathlib import Path

    root = Path(P.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = {d.split(".")[0] for d in deps} & {p.stem for p in root.glob("*.py")}
    done, active = set(), []

    def visit(m):
        assert m not in active, f"import cycle: {' -> '.join(active[active.index(m):] + [m])}"
        if m not in done:
            active.append(m)
            for d in sorted(graph[m]):
                visit(d)
            active.pop()
            done.add(m)

    for m in sorted(graph):
        visit(m)


def test_public_api_has_docstrings_and_annotations():
    for fn in (parse_alias, parse_aliases, parse_formula, parse_reduction_formula):
        assert fn.__doc__
        assert "return" in fn.__annotations__
    assert sorted(P.__all__) == sorted(
        ["parse_alias", "parse_aliases", "parse_formula", "parse_reduction_formula"]
    )
