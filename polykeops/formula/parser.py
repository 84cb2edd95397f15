"""The KeOps formula-string language: a tokenizer and a recursive-descent parser.

Formula strings (``"Exp(-SqDist(x, y)) * b"``) and pykeops alias strings
(``"x = Vi(3)"``) are turned into :class:`~polykeops.formula.nodes.Node` trees
through the smart constructors of :mod:`polykeops.formula.algebra`, so a parsed
formula is exactly the formula the LazyTensor front ends would build.  Nothing
is ever evaluated by Python (no ``eval``): the text goes through a hand-written
tokenizer and a precedence-climbing parser.

Grammar (lowest precedence first)::

    formula  := binary
    binary   := unary (("+" | "-" | "*" | "/") unary)*   -- usual precedence, left assoc.
    unary    := ("-" | "+") unary | primary ("**" unary)?  -- "**" right assoc., above "-"
    primary  := NUMBER | NAME | NAME "(" args? ")" | "(" formula ("|" formula)? ")"
    args     := arg ("," arg)*
    arg      := formula | "[" (INT ("," INT)*)? "]"   -- lists: TensorDot, Kron parameters

``(a | b)`` is the scalar product.  A ``NAME(...)`` call is an op of the op
table (formula arguments, then integer-literal parameters: ``Elem(x, 2)``), a
composite (``SqDist(x, y)``) or one of the special forms ``Var(i, d, c)``,
``Vi(i, d)``, ``Vj(i, d)``, ``Pm(i, d)``, ``IntCst(n)``, ``Cst(number)``,
``IntInv(n)``, ``Rational(p, q)``, ``Zero(d)``, ``Grad(f, x, e)``,
``Diff(f, x, u)`` and ``GradFromPos(f, k, e)``.  Every error is a
:class:`~polykeops.errors.FormulaSyntaxError` whose caret points at the
offending token.

The text printed by :func:`polykeops.formula.printing.to_string` parses back to
an equal node (for formulas built through the smart constructors).  Being
recursive, the parser accepts some 150 levels of nested parentheses/calls under
Python's default recursion limit; deeper text gives a FormulaSyntaxError.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

from ..errors import FormulaError, FormulaSyntaxError
from . import algebra as A
from .composite import COMPOSITES
from .derivative import diff as _diff
from .derivative import grad as _grad
from .nodes import CAT_I, CAT_J, CAT_P, Const, Node, Var, Zero, variables
from .ops import OPS

__all__ = [
    "parse_alias",
    "parse_aliases",
    "parse_formula",
    "parse_reduction_formula",
]

# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------

_NUM, _NAME, _OP, _END = "number", "name", "op", "end"

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|[-+*/(),|=\[\]])
    """,
    re.VERBOSE,
)

#: largest decimal exponent accepted in a number literal (keeps Fractions small)
_MAX_LITERAL_EXPONENT = 1000
#: largest size, in bits, of an exactly folded constant power
_MAX_FOLDED_BITS = 1 << 16


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int

    @property
    def end(self) -> int:
        return self.pos + len(self.text)


def _tokenize(text: str, what: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise FormulaSyntaxError(f"{what}: unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup
        if kind != "ws":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Token(_END, "", len(text)))
    return tokens


def _show(tok: _Token) -> str:
    return "the end of the text" if tok.kind == _END else repr(tok.text)


def _suggestion(name: str, candidates, cutoff: float = 0.6) -> str:
    """``"; did you mean 'Exp'?"`` (or ``""``) for an unknown ``name``."""
    pool = sorted(set(candidates))
    same_case = [c for c in pool if c.lower() == name.lower()]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=cutoff)
    matches = list(dict.fromkeys(same_case + close))
    if not matches:
        return ""
    if len(matches) == 1:
        return f"; did you mean {matches[0]!r}?"
    others = ", ".join(repr(m) for m in matches[1:])
    return f"; did you mean {matches[0]!r} (or {others})?"


# ---------------------------------------------------------------------------
# arguments of calls
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arg:
    """One argument of a call: a parsed formula, or a bare number literal."""

    pos: int
    end: int
    node: Node | None = None
    literal: str | None = None  # "-3", "2.5", "inf": a signed number literal
    ints: tuple[int, ...] | None = None  # "[2, 3]": a list of integer literals

    @property
    def is_int(self) -> bool:
        return self.literal is not None and self.literal.lstrip("+-").isdigit()


_SPECIAL_FLOATS = ("inf", "infinity", "nan")

_BINARY_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_BINARY_FN: dict[str, Callable[[Node, Node], Node]] = {
    "+": A.add,
    "-": A.sub,
    "*": A.mul,
    "/": A.div,
}

#: special forms of the formula language: name -> signature shown in errors
_SPECIAL_SIGNATURES = {
    "Var": "Var(index, dim, cat)",
    "Vi": "Vi(index, dim)",
    "Vj": "Vj(index, dim)",
    "Pm": "Pm(index, dim)",
    "IntCst": "IntCst(n)",
    "Cst": "Cst(number)",
    "IntInv": "IntInv(n)",
    "Rational": "Rational(p, q)",
    "Zero": "Zero(dim)",
    "Grad": "Grad(formula, variable, cotangent)",
    "Diff": "Diff(formula, variable, direction)",
    "GradFromPos": "GradFromPos(formula, index, cotangent)",
}

_VAR_CATEGORIES = {"Vi": CAT_I, "Vj": CAT_J, "Pm": CAT_P}


_INT_LIST_ANNOTATIONS = ("Sequence[int]", "tuple[int,...]", "list[int]")


def _composite_params(name: str) -> list:
    return [
        p
        for p in inspect.signature(COMPOSITES[name]).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _composite_kinds(name: str) -> tuple[str, ...]:
    """For each argument of a composite builder: "formula", "int" or "ints" (a list of
    ints, written ``[2, 3]``), from its annotations."""
    kinds = []
    for p in _composite_params(name):
        ann = p.annotation if isinstance(p.annotation, str) else ""
        ann = ann.replace(" ", "").removesuffix("|None")
        if p.annotation in (int, "int"):
            kinds.append("int")
        elif ann in _INT_LIST_ANNOTATIONS:
            kinds.append("ints")
        else:
            kinds.append("formula")
    return tuple(kinds)


def _composite_required(name: str) -> int:
    """How many leading arguments of a composite are required (the others have defaults)."""
    return sum(p.default is inspect.Parameter.empty for p in _composite_params(name))


def _function_names() -> set[str]:
    return set(OPS) | set(COMPOSITES) | set(_SPECIAL_SIGNATURES)


# ---------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------


class _Parser:
    """Recursive-descent parser over the token list of one text."""

    def __init__(self, text: str, aliases: dict[str, Node], what: str = "formula"):
        self.text = text
        self.what = what  # prefix of error messages: "formula", "alias #2"
        self.noun = what.split()[0]
        self.aliases = aliases
        self.tokens = _tokenize(text, what)
        self.i = 0
        # variables by index (aliases, then inline Var(...)), to catch conflicting signatures
        self.known_vars: dict[int, Node] = {}
        for v in aliases.values():
            if isinstance(v, Node) and v.op == "Var":
                self.known_vars.setdefault(v.index, v)

    # -- token helpers ---------------------------------------------------
    def error(self, message: str, pos: int) -> NoReturn:
        raise FormulaSyntaxError(f"{self.what}: {message}", self.text, pos)

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != _END:
            self.i += 1
        return tok

    def at_op(self, text: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == _OP and tok.text == text

    def expect_open(self, after: _Token) -> _Token:
        tok = self.peek()
        if not self.at_op("("):
            self.error(f"expected '(' after {after.text!r}, got {_show(tok)}", tok.pos)
        return self.advance()

    def expect_close(self, opening: _Token, context: str = "") -> _Token:
        tok = self.peek()
        if self.at_op(")"):
            return self.advance()
        if tok.kind == _END:
            self.error(f"'(' {context}was never closed", opening.pos)
        self.error(f"expected ')' {context}but got {_show(tok)}", tok.pos)

    def expect_end(self) -> None:
        tok = self.peek()
        if tok.kind == _END:
            return
        if tok.kind == _OP and tok.text == ")":
            self.error("unmatched ')'", tok.pos)
        self.error(f"unexpected {_show(tok)} after the end of the {self.noun}", tok.pos)

    def build(self, pos: int, fn: Callable[..., Node], *args, **kwargs) -> Node:
        """Call an IR constructor, turning its FormulaError into a positioned syntax error."""
        try:
            return fn(*args, **kwargs)
        except FormulaSyntaxError:
            raise
        except (FormulaError, ZeroDivisionError, OverflowError) as exc:
            raise FormulaSyntaxError(str(exc), self.text, pos) from exc

    # -- grammar -----------------------------------------------------------
    def parse(self) -> Node:
        if self.peek().kind == _END:
            self.error(f"empty {self.noun}", 0)
        node = self.binary(1)
        self.expect_end()
        return node

    def binary(self, min_prec: int) -> Node:
        """Precedence climbing over the left-associative operators + - * /."""
        left = self.unary()
        while True:
            tok = self.peek()
            prec = _BINARY_PREC.get(tok.text) if tok.kind == _OP else None
            if prec is None or prec < min_prec:
                return left
            self.advance()
            right = self.binary(prec + 1)
            left = self.build(tok.pos, _BINARY_FN[tok.text], left, right)

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == _OP and tok.text == "-":
            self.advance()
            return self.build(tok.pos, A.neg, self.unary())
        if tok.kind == _OP and tok.text == "+":
            self.advance()
            return self.unary()
        base = self.primary()
        if self.at_op("**"):
            op = self.advance()
            exponent = self.unary()  # right associative, and 'x**-2' is allowed
            return self.power(op, base, exponent)
        return base

    def power(self, op: _Token, base: Node, exponent: Node) -> Node:
        """``base ** exponent``: Pow/Square/Inv for integers, Sqrt/Rsqrt for +-1/2, else Powf."""
        if exponent.op in ("Const", "Zero") and exponent.dim == 1:
            value = exponent.value
            if isinstance(value, int):
                self._check_fold_size(op, base, value)
                return self.build(op.pos, A.power, base, value)
            if value == Fraction(1, 2):
                return self.build(op.pos, A.node, "Sqrt", base)
            if value == Fraction(-1, 2):
                return self.build(op.pos, A.node, "Rsqrt", base)
        return self.build(op.pos, A.node, "Powf", base, exponent)

    def _check_fold_size(self, op: _Token, base: Node, n: int) -> None:
        if base.op != "Const" or not isinstance(base.value, (int, Fraction)):
            return
        v = Fraction(base.value)
        bits = max(abs(v.numerator).bit_length(), v.denominator.bit_length())
        if bits > 1 and abs(n) * bits > _MAX_FOLDED_BITS:
            self.error(f"the constant power {base!r} ** {n} is too large to fold exactly", op.pos)

    def primary(self) -> Node:
        tok = self.advance()
        if tok.kind == _NUM:
            return Const(self.number_value(tok.text, tok.pos))
        if tok.kind == _NAME:
            if self.at_op("("):
                return self.call(tok)
            return self.name(tok)
        if tok.kind == _OP and tok.text == "(":
            inner = self.binary(1)
            if self.at_op("|"):
                bar = self.advance()
                right = self.binary(1)
                self.expect_close(tok, "of the scalar product (a|b) ")
                return self.build(bar.pos, A.scalprod, inner, right)
            self.expect_close(tok)
            return inner
        if tok.kind == _END:
            self.error("unexpected end of the text: expected a number, a name or '('", tok.pos)
        self.error(f"expected a number, a name or '(', got {_show(tok)}", tok.pos)

    def number_value(self, text: str, pos: int) -> int | Fraction:
        """Exact value of an (optionally signed) number literal."""
        try:
            if text.lstrip("+-").isdigit():
                return int(text)
            exp = text.lower().partition("e")[2]
            if exp and abs(int(exp)) > _MAX_LITERAL_EXPONENT:
                self.error(f"the exponent of the number {text!r} is too large", pos)
            return Fraction(text)
        except (ValueError, OverflowError) as exc:
            self.error(f"invalid number literal {text!r} ({exc})", pos)

    def name(self, tok: _Token) -> Node:
        if tok.text in self.aliases:
            return self.aliases[tok.text]
        if tok.text in _function_names():
            self.error(f"{tok.text!r} is a function: expected '(' after it", tok.pos)
        hint = _suggestion(tok.text, set(self.aliases) | _function_names())
        if not self.aliases and not hint:
            hint = " (no aliases were given)"
        self.error(f"unknown name {tok.text!r}{hint}", tok.pos)

    # -- calls -------------------------------------------------------------
    def call(self, tok: _Token) -> Node:
        name = tok.text
        if name in _SPECIAL_SIGNATURES:
            handler = getattr(self, "special_" + name)
            return handler(tok, *self.arguments(tok))
        if name in OPS:
            return self.op_call(tok, *self.arguments(tok))
        if name in COMPOSITES:
            return self.composite_call(tok, *self.arguments(tok))
        if name in self.aliases:
            self.error(f"{name!r} is a variable (an alias), not a function", tok.pos)
        hint = _suggestion(name, _function_names())
        self.error(f"unknown function {name!r}{hint}", tok.pos)

    def arguments(self, name: _Token) -> tuple[list[_Arg], _Token]:
        """The comma-separated arguments after ``name`` and the closing ')'."""
        opening = self.expect_open(name)
        args: list[_Arg] = []
        if self.at_op(")"):
            return args, self.advance()
        while True:
            args.append(self.argument())
            if self.at_op(","):
                self.advance()
                continue
            close = self.expect_close(opening, f"of {name.text}(...) ")
            return args, close

    def argument(self) -> _Arg:
        start = self.peek()
        if self.at_op("["):
            return self.int_list()
        literal = self.try_literal()
        if literal is not None:
            return literal
        node = self.binary(1)
        return _Arg(start.pos, self.tokens[self.i - 1].end, node=node)

    def int_list(self) -> _Arg:
        """A list of integer literals, ``[2, 3]`` or ``[]`` (parameters of TensorDot, Kron)."""
        opening = self.advance()
        values: list[int] = []
        while not self.at_op("]"):
            if values:
                if not self.at_op(","):
                    tok = self.peek()
                    if tok.kind == _END:
                        self.error("'[' was never closed", opening.pos)
                    self.error(f"expected ',' or ']' in a list of integers, got {_show(tok)}", tok.pos)
                self.advance()
            arg = self.try_list_literal()
            if arg is None:
                tok = self.peek()
                if tok.kind == _END:
                    self.error("'[' was never closed", opening.pos)
                self.error(f"a list may only hold integer literals, got {_show(tok)}", tok.pos)
            values.append(int(self.number_value(arg.literal, arg.pos)))
        close = self.advance()
        return _Arg(opening.pos, close.end, ints=tuple(values))

    def try_list_literal(self) -> _Arg | None:
        """An optionally signed integer literal (an entry of a list)."""
        k = 1 if self.at_op("-") or self.at_op("+") else 0
        tok = self.peek(k)
        if tok.kind != _NUM or not tok.text.isdigit():
            return None
        start = self.peek().pos
        sign = self.peek().text if k else ""
        self.i += k + 1
        return _Arg(start, tok.end, literal=sign + tok.text)

    def try_literal(self) -> _Arg | None:
        """A bare, optionally signed, number literal ending the argument, if there is one."""
        k = 0
        sign = ""
        if self.at_op("-") or self.at_op("+"):
            sign, k = self.peek().text, 1
        tok = self.peek(k)
        special = (
            tok.kind == _NAME
            and tok.text.lower() in _SPECIAL_FLOATS
            and tok.text not in self.aliases
        )
        if tok.kind != _NUM and not special:
            return None
        if not (self.at_op(",", k + 1) or self.at_op(")", k + 1) or self.peek(k + 1).kind == _END):
            return None
        start = self.peek().pos
        self.i += k + 1
        return _Arg(start, tok.end, literal=sign + tok.text)

    def check_count(
        self, name: _Token, args: list[_Arg], close: _Token, n: int, signature: str
    ) -> None:
        if len(args) == n:
            return
        plural = "" if n == 1 else "s"
        message = f"{name.text} takes {n} argument{plural}: {signature}; got {len(args)}"
        self.error(message, close.pos if len(args) < n else args[n].pos)

    def source(self, arg: _Arg) -> str:
        return self.text[arg.pos : arg.end]

    def formula_arg(self, name: _Token, arg: _Arg, k: int) -> Node:
        if arg.node is not None:
            return arg.node
        if arg.ints is not None:
            self.error(f"{name.text}: argument {k + 1} must be a formula, got a list", arg.pos)
        assert arg.literal is not None
        if arg.literal.lstrip("+-").lower() in _SPECIAL_FLOATS:
            self.error(
                f"{name.text}: argument {k + 1} must be a formula; write Cst({arg.literal}) "
                f"for a non-finite constant",
                arg.pos,
            )
        return Const(self.number_value(arg.literal, arg.pos))

    def int_arg(self, name: _Token, arg: _Arg, k: int, what: str) -> int:
        if not arg.is_int:
            self.error(
                f"{name.text}: argument {k + 1} ({what}) must be an integer literal, "
                f"got {self.source(arg)!r}",
                arg.pos,
            )
        return int(self.number_value(arg.literal, arg.pos))

    def literal_arguments(self, name: _Token) -> tuple[list[_Arg], _Token]:
        """Like :meth:`arguments`, for calls whose arguments must all be number literals."""
        opening = self.expect_open(name)
        args: list[_Arg] = []
        if self.at_op(")"):
            return args, self.advance()
        while True:
            arg = self.try_literal()
            if arg is None:
                tok = self.peek()
                if tok.kind == _END:
                    self.error(f"'(' of {name.text}(...) was never closed", opening.pos)
                self.error(
                    f"{name.text}: argument {len(args) + 1} must be an integer literal, "
                    f"got {_show(tok)}",
                    tok.pos,
                )
            args.append(arg)
            if self.at_op(","):
                self.advance()
                continue
            return args, self.expect_close(opening, f"of {name.text}(...) ")

    def variable_arg(self, name: _Token, arg: _Arg, k: int) -> Node:
        node = self.formula_arg(name, arg, k)
        if node.op not in ("Var", "Leaf"):
            self.error(
                f"{name.text}: argument {k + 1} must be a variable (an alias or Var(...)), "
                f"got {self.source(arg)!r}",
                arg.pos,
            )
        return node

    def op_call(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        opdef = OPS[name.text]
        signature = ", ".join([f"x{k}" for k in range(opdef.arity)] + list(opdef.params))
        signature = f"{name.text}({signature})"
        self.check_count(name, args, close, opdef.arity + len(opdef.params), signature)
        nodes = [self.formula_arg(name, a, k) for k, a in enumerate(args[: opdef.arity])]
        params = tuple(
            self.int_arg(name, a, opdef.arity + k, p)
            for k, (a, p) in enumerate(zip(args[opdef.arity :], opdef.params))
        )
        out = self.build(name.pos, A.node, name.text, *nodes, params=params)
        if out.op == "SumT" and out.args[0].op == "Const":
            # to_string prints a constant vector as SumT(c, dim): rebuild the constant
            out = Const(out.args[0].value, out.dim)
        return out

    def composite_call(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        kinds = _composite_kinds(name.text)
        required = _composite_required(name.text)
        shown = {"formula": "x{k}", "int": "n{k}", "ints": "[l{k}...]"}
        parts = [shown[kd].format(k=k) for k, kd in enumerate(kinds)]
        parts = parts[:required] + [f"{p}=..." for p in parts[required:]]
        signature = f"{name.text}({', '.join(parts)})"
        count = min(max(len(args), required), len(kinds))  # optional trailing arguments
        self.check_count(name, args, close, count, signature)
        kinds = kinds[:count]
        values = [
            self.formula_arg(name, a, k)
            if kd == "formula"
            else self.int_list_arg(name, a, k)
            if kd == "ints"
            else self.int_arg(name, a, k, "int")
            for k, (a, kd) in enumerate(zip(args, kinds))
        ]
        return self.build(name.pos, COMPOSITES[name.text], *values)

    def int_list_arg(self, name: _Token, arg: _Arg, k: int) -> tuple[int, ...]:
        if arg.ints is not None:
            return arg.ints
        if arg.is_int:
            return (int(self.number_value(arg.literal, arg.pos)),)
        self.error(
            f"{name.text}: argument {k + 1} must be a list of integers such as [2, 3], "
            f"got {self.source(arg)!r}",
            arg.pos,
        )

    # -- special forms -----------------------------------------------------
    def ints(self, name: _Token, args: list[_Arg], close: _Token, names: Sequence[str]) -> list:
        signature = _SPECIAL_SIGNATURES.get(name.text, f"{name.text}({', '.join(names)})")
        self.check_count(name, args, close, len(names), signature)
        return [self.int_arg(name, a, k, w) for k, (a, w) in enumerate(zip(args, names))]

    def variable(self, name: _Token, index: int, dim: int, cat: int) -> Node:
        v = self.build(name.pos, Var, index, dim, cat)
        other = self.known_vars.setdefault(index, v)
        if other != v:
            self.error(
                f"{v!r} conflicts with {other!r}: variable index {index} "
                "is used with two signatures",
                name.pos,
            )
        return v

    def special_Var(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        index, dim, cat = self.ints(name, args, close, ("index", "dim", "cat"))
        return self.variable(name, index, dim, cat)

    def _special_vi(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        index, dim = self.ints(name, args, close, ("index", "dim"))
        return self.variable(name, index, dim, _VAR_CATEGORIES[name.text])

    special_Vi = special_Vj = special_Pm = _special_vi

    def special_IntCst(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        (n,) = self.ints(name, args, close, ("n",))
        return Const(n)

    def special_IntInv(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        (n,) = self.ints(name, args, close, ("n",))
        if n == 0:
            self.error("IntInv(0): division by zero", args[0].pos)
        return Const(Fraction(1, n))

    def special_Rational(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        p, q = self.ints(name, args, close, ("p", "q"))
        if q == 0:
            self.error("Rational(p, 0): division by zero", args[1].pos)
        return Const(Fraction(p, q))

    def special_Zero(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        (dim,) = self.ints(name, args, close, ("dim",))
        return self.build(name.pos, Zero, dim)

    def special_Cst(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        self.check_count(name, args, close, 1, _SPECIAL_SIGNATURES["Cst"])
        arg = args[0]
        if arg.literal is None:
            self.error(
                f"Cst: the argument must be a number literal, got {self.source(arg)!r}", arg.pos
            )
        try:
            value = float(arg.literal)
        except (ValueError, OverflowError) as exc:
            self.error(f"invalid number literal {arg.literal!r} ({exc})", arg.pos)
        if math.isinf(value) and arg.literal.lstrip("+-").lower() not in _SPECIAL_FLOATS:
            self.error(f"the number {arg.literal!r} overflows a double", arg.pos)
        return Const(value)

    def special_Grad(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        self.check_count(name, args, close, 3, _SPECIAL_SIGNATURES["Grad"])
        f = self.formula_arg(name, args[0], 0)
        v = self.variable_arg(name, args[1], 1)
        e = self.formula_arg(name, args[2], 2)
        return self.build(name.pos, _grad, f, v, e)

    def special_Diff(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        self.check_count(name, args, close, 3, _SPECIAL_SIGNATURES["Diff"])
        f = self.formula_arg(name, args[0], 0)
        v = self.variable_arg(name, args[1], 1)
        u = self.formula_arg(name, args[2], 2)
        return self.build(name.pos, _diff, f, v, u)

    def special_GradFromPos(self, name: _Token, args: list[_Arg], close: _Token) -> Node:
        self.check_count(name, args, close, 3, _SPECIAL_SIGNATURES["GradFromPos"])
        f = self.formula_arg(name, args[0], 0)
        k = self.int_arg(name, args[1], 1, "index")
        e = self.formula_arg(name, args[2], 2)
        found = {v.index: v for v in self.build(name.pos, variables, f)}
        v = found.get(k, self.known_vars.get(k))
        if v is None:
            self.error(
                f"GradFromPos: no variable of index {k} appears in the formula or the aliases",
                args[1].pos,
            )
        return self.build(name.pos, _grad, f, v, e)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def parse_alias(text: str, position: int) -> tuple[str, Node]:
    """Parse one pykeops alias string into ``(name, Var node)``.

    Accepted forms (whitespace-insensitive)::

        "x = Vi(3)"         i-variable of dimension 3, index ``position``
        "y = Vj(3)"         j-variable of dimension 3, index ``position``
        "p = Pm(2)"         parameter of dimension 2, index ``position``
        "b = Vj(0, 1)"      explicit index 0, dimension 1
        "x = Var(0, 3, 0)"  explicit index, dimension and category (0 i, 1 j, 2 parameter)

    ``position`` is the position of the alias in its list (the default index).
    Raises :class:`FormulaSyntaxError` pointing at the offending character.
    """
    if not isinstance(text, str):
        raise FormulaError(f"an alias must be a string such as 'x = Vi(3)', got {text!r}")
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise FormulaError(f"alias position must be a non-negative int, got {position!r}")
    p = _Parser(text, {}, what=f"alias #{position}")
    if p.peek().kind == _END:
        p.error("empty alias (expected e.g. 'x = Vi(3)')", 0)
    name = p.advance()
    if name.kind != _NAME:
        p.error(f"an alias starts with a name (as in 'x = Vi(3)'), got {_show(name)}", name.pos)
    if not p.at_op("="):
        tok = p.peek()
        p.error(f"expected '=' after the alias name {name.text!r}, got {_show(tok)}", tok.pos)
    p.advance()
    kind = p.advance()
    kinds = ("Vi", "Vj", "Pm", "Var")
    if kind.kind != _NAME or kind.text not in kinds:
        hint = _suggestion(kind.text, kinds, cutoff=0.5) if kind.kind == _NAME else ""
        p.error(
            f"expected Vi(...), Vj(...), Pm(...) or Var(...), got {_show(kind)}{hint}", kind.pos
        )
    args, close = p.literal_arguments(kind)
    if kind.text == "Var":
        index, dim, cat = p.ints(kind, args, close, ("index", "dim", "cat"))
    else:
        cat = _VAR_CATEGORIES[kind.text]
        if len(args) == 1:
            index = position
            (dim,) = p.ints(kind, args, close, ("dim",))
        else:
            signature = f"{kind.text}(dim) or {kind.text}(index, dim)"
            p.check_count(kind, args, close, 2, signature)
            index = p.int_arg(kind, args[0], 0, "index")
            dim = p.int_arg(kind, args[1], 1, "dim")
    p.expect_end()
    return name.text, p.build(kind.pos, Var, index, dim, cat)


def parse_aliases(aliases: Sequence[str]) -> dict[str, Node]:
    """Parse a list of alias strings into ``{name: Var node}`` (in list order).

    Raises :class:`FormulaError` when a name is defined twice or when two aliases
    give one index two different signatures (the same signature twice is fine).
    """
    if isinstance(aliases, str):
        aliases = [aliases]
    out: dict[str, Node] = {}
    where: dict[str, int] = {}
    by_index: dict[int, tuple[str, Node]] = {}
    for pos, text in enumerate(aliases):
        name, var = parse_alias(text, pos)
        if name in out:
            raise FormulaError(
                f"alias name {name!r} is defined twice (aliases #{where[name]} and #{pos})"
            )
        previous = by_index.get(var.index)
        if previous is not None and previous[1] != var:
            raise FormulaError(
                f"aliases {previous[0]!r} ({previous[1]!r}) and {name!r} ({var!r}) give "
                f"variable index {var.index} two different signatures"
            )
        by_index.setdefault(var.index, (name, var))
        out[name] = var
        where[name] = pos
    return out


def parse_formula(text: str, aliases: dict[str, Node] | None = None) -> Node:
    """Parse a formula string of the KeOps language into a :class:`Node`.

    ``aliases`` maps names to nodes (usually the output of :func:`parse_aliases`).
    See the module docstring for the grammar.  Every error (unknown name, wrong
    arguments, unbalanced parentheses, incompatible dimensions...) is a
    :class:`FormulaSyntaxError` whose ``position`` is the offending character.
    """
    return _parse_with_variables(text, aliases)[0]


def _parse_with_variables(text: str, aliases: dict[str, Node] | None = None) -> tuple[Node, dict]:
    """The formula and every variable written in it or in the aliases, by index (including those
    that simplification removed from the formula, as ``Var(0,3,0) * 0``)."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, got {type(text).__name__}")
    parser = _Parser(text, dict(aliases or {}))
    try:
        return parser.parse(), parser.known_vars
    except RecursionError:
        pass
    # deeply nested (hundreds of levels): parsed again on a thread with a deep stack and a
    # recursion limit sized to the text (each level of nesting costs a handful of frames)
    parser = _Parser(text, dict(aliases or {}))
    try:
        return _deep(parser.parse, frames=40 * len(parser.tokens) + 1000), parser.known_vars
    except RecursionError:
        raise FormulaSyntaxError(
            f"formula: nested too deeply to be parsed (more than {MAX_DEPTH_FRAMES // 40} tokens)",
            text, parser.peek().pos
        ) from None


#: the most Python frames a deeply nested formula may use while parsed (see :func:`_deep`)
MAX_DEPTH_FRAMES = 2_000_000
_deep_lock = threading.Lock()


def _deep(fn: Callable[[], Node], frames: int) -> Node:
    """``fn()`` on a new thread with a 1 GiB stack (reserved, not committed) and a recursion
    limit of ``frames`` (at most :data:`MAX_DEPTH_FRAMES`); RecursionError past it."""
    if frames > MAX_DEPTH_FRAMES:
        raise RecursionError
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    with _deep_lock:  # (both settings are process-wide: changed and restored under one lock)
        old_stack, old_limit = threading.stack_size(), sys.getrecursionlimit()
        threading.stack_size(1 << 30)
        sys.setrecursionlimit(max(old_limit, frames))
        try:
            worker = threading.Thread(target=run, name="polykeops-deep-parse")
            worker.start()
        finally:
            threading.stack_size(old_stack)
        try:
            worker.join()
        finally:
            sys.setrecursionlimit(old_limit)
    if "error" in out:
        raise out["error"]
    return out["value"]


def parse_reduction_formula(text: str, aliases: Sequence[str]) -> tuple[Node, tuple[Node, ...]]:
    """Parse ``aliases`` and the formula ``text``, as Genred does.

    Returns the formula and every variable (those of the aliases and those
    written inline in the formula) sorted by index.  The indices must be exactly
    ``0 .. n-1``: a hole raises :class:`FormulaError` naming the missing index.
    """
    alias_map = parse_aliases(aliases)
    formula, written = _parse_with_variables(text, alias_map)
    by_index: dict[int, Node] = {}
    # as pykeops: every variable of the formula as written counts (the call takes all of them),
    # even one that simplification removed (``Var(0,3,0) * 0``)
    for v in [*(n for n in alias_map.values() if n.op == "Var"), *written.values(), *variables(formula)]:
        other = by_index.setdefault(v.index, v)
        if other != v:
            raise FormulaError(
                f"variable index {v.index} is used with two signatures: {other!r} and {v!r}"
            )
    if by_index:
        top = max(by_index)
        if top + 1 != len(by_index):  # holes: name the first few (top may be huge)
            missing = []
            k = 0
            while len(missing) < 5 and k <= top:
                if k not in by_index:
                    missing.append(k)
                k += 1
            count = top + 1 - len(by_index)
            shown = ", ".join(str(k) for k in missing) + (f" and {count - len(missing)} more"
                                                          if count > len(missing) else "")
            raise FormulaError(
                f"variable index {missing[0]} is missing: variable indices must be "
                f"0 .. {top} without holes (missing: {shown})"
            )
    return formula, tuple(by_index[k] for k in sorted(by_index))
