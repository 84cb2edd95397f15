"""Immutable formula nodes.

A formula is a tree (in practice a DAG: nodes are hash-consed, so equal sub-trees
are one object, and equality is identity) of :class:`Node` values.  Every node
carries an operation name (a key of the op table, :mod:`polykeops.formula.optable`),
its arguments, hashable static parameters, and its *vector dimension* ``dim`` (the
length of the value the formula produces for one (i, j) pair).

Leaves are:

* ``Var``   -- ``params = (index, dim, cat)``, ``cat`` in :data:`CATEGORIES`;
* ``Const`` -- ``params = (value, dim)``: an exact ``int`` or ``Fraction`` (or a
  float produced by rewriting) repeated ``dim`` times;
* ``Zero``  -- ``params = (dim,)``;
* ``Leaf``  -- ``params = (uid, dim, cat)``: a not-yet-numbered variable used by
  the LazyTensor front ends while a formula is being built.
"""

from __future__ import annotations

import threading
import weakref
from fractions import Fraction
from typing import Any

from ..errors import FormulaError
from .optable import LEAF_OPS, infer_dim

#: variable categories: indexed by i, indexed by j, or a parameter (no index)
CAT_I, CAT_J, CAT_P = 0, 1, 2
CATEGORIES = (CAT_I, CAT_J, CAT_P)
CATEGORY_NAMES = {CAT_I: "Vi", CAT_J: "Vj", CAT_P: "Pm"}

#: longest text of a node's repr (longer ones end with "...")
REPR_LIMIT = 400

#: largest vector dimension of a node (a formula value is held per (i, j) pair by the engines)
MAX_DIM = 1 << 24
#: largest variable index (indices are C ints in the compiled engines)
MAX_INDEX = (1 << 31) - 1
#: exact constants: |value| below 2**1024 (float64's range) and at most this many bits in the
#: numerator and the denominator (exact folding of huge powers would take unbounded time)
MAX_CONST_BITS = 4096


class Node:
    """One immutable node of a formula.

    Nodes are *hash-consed*: building a node equal to a live one (same op, same argument nodes,
    same parameters, compared with their types: ``1``, ``1.0`` and ``Fraction(1)`` differ)
    returns that very object.  Structural equality is therefore identity, in O(1) whatever the
    size of the formulas compared (a recursive comparison of two big DAGs is exponential in
    their depth without a memo).
    """

    __slots__ = ("op", "args", "params", "dim", "_hash", "_order", "_simple", "__weakref__")

    def __new__(cls, op: str, args: tuple = (), params: tuple = (), dim: int | None = None):
        args = tuple(args)
        params = tuple(params)
        key = (op, args, _params_key(params)) if params else (op, args)
        try:
            found = _TABLE.get(key)
        except TypeError:
            raise FormulaError(f"{op}: parameters {params!r} are not hashable") from None
        if found is not None:
            return found
        if dim is None:
            for a in args:
                if not isinstance(a, Node):
                    raise FormulaError(f"{op}: argument {a!r} is not a formula node")
            dim = infer_dim(op, tuple(a.dim for a in args), params)
        if dim > MAX_DIM:
            raise FormulaError(f"{op}: vector dimension {dim} is larger than the maximum {MAX_DIM}")
        self = object.__new__(cls)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "dim", int(dim))
        object.__setattr__(self, "_hash", hash((op, args, params)))
        object.__setattr__(self, "_order", None)  # walk()'s order, computed on first use
        object.__setattr__(self, "_simple", False)  # a fixed point of simplification (simplify.py)
        with _TABLE_LOCK:
            return _TABLE.setdefault(key, self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("formula nodes are immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other  # hash-consed: equal nodes are one object

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __reduce__(self):
        return (Node, (self.op, self.args, self.params, self.dim))

    def __repr__(self) -> str:
        """A short prefix form (``Exp(Minus(Var(0,3,0)))``); :mod:`.printing` writes parsable text."""
        text: dict[Node, str] = {}
        for n in walk(self):
            if n.op in ("Var", "Leaf"):
                a, d, c = n.params
                text[n] = f"Var({a},{d},{c})" if n.op == "Var" else f"{CATEGORY_NAMES[c]}[{a}]({d})"
            elif n.op in ("Const", "Zero"):
                text[n] = f"{n.op}({','.join(str(p) for p in n.params)})"
            else:
                text[n] = f"{n.op}({','.join([text[a] for a in n.args] + [str(p) for p in n.params])})"
            if len(text[n]) > REPR_LIMIT:
                return text[n][:REPR_LIMIT] + "..."
        return text[self]

    # -- convenience accessors for leaves -------------------------------
    @property
    def is_leaf(self) -> bool:
        return self.op in LEAF_OPS

    @property
    def index(self) -> int:
        """Variable index (``Var`` nodes only)."""
        if self.op != "Var":
            raise FormulaError(f"{self!r} is not a variable")
        return self.params[0]

    @property
    def cat(self) -> int:
        """Variable category (``Var`` and ``Leaf`` nodes only)."""
        if self.op not in ("Var", "Leaf"):
            raise FormulaError(f"{self!r} is not a variable")
        return self.params[2]

    @property
    def value(self):
        """Constant value (``Const`` and ``Zero`` nodes only)."""
        if self.op == "Zero":
            return 0
        if self.op != "Const":
            raise FormulaError(f"{self!r} is not a constant")
        return self.params[0]


#: the live nodes, by (op, argument nodes, typed parameters): the hash-consing table
_TABLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_TABLE_LOCK = threading.Lock()


def _params_key(params: tuple) -> tuple:
    """Parameters compared with their types (``1 == 1.0 == Fraction(1)`` and ``0.0 == -0.0`` in
    Python, not in a formula); NaNs are equal to each other here."""
    out = []
    for p in params:
        if isinstance(p, tuple):
            out.append(("tuple", _params_key(p)))
        elif isinstance(p, float):
            out.append(("float", p.hex()))
        else:
            out.append((type(p).__name__, p))
    return tuple(out)


def Var(index: int, dim: int, cat: int) -> Node:
    """A numbered variable: ``index`` >= 0, ``dim`` >= 1, ``cat`` in 0 (i), 1 (j), 2 (parameter)."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0 or index > MAX_INDEX:
        raise FormulaError(
            f"variable index must be a non-negative int (at most {MAX_INDEX}), got {_short(index)}"
        )
    _check_dim(dim, "variable")
    if cat not in CATEGORIES:
        raise FormulaError(f"variable category must be 0 (i), 1 (j) or 2 (parameter), got {cat!r}")
    return Node("Var", (), (index, int(dim), cat), dim)


def Leaf(uid: int, dim: int, cat: int) -> Node:
    """An un-numbered variable (front-end placeholder identified by ``uid``)."""
    _check_dim(dim, "variable")
    return Node("Leaf", (), (uid, int(dim), cat), dim)


def Const(value, dim: int = 1) -> Node:
    """A constant vector: ``value`` repeated ``dim`` times (exact for int and Fraction)."""
    _check_dim(dim, "constant")
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, Fraction) and value.denominator == 1:
        value = int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if not isinstance(value, (int, Fraction, float)):
        raise FormulaError(f"constants must be int, Fraction or float, got {type(value).__name__}")
    if isinstance(value, (int, Fraction)):
        check_exact_constant(value)
    if value == 0:
        return Zero(dim)
    return Node("Const", (), (value, int(dim)), dim)


def Zero(dim: int = 1) -> Node:
    """The zero vector of dimension ``dim``."""
    _check_dim(dim, "zero")
    return Node("Zero", (), (int(dim),), dim)


def _check_dim(dim, what: str) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1 or dim > MAX_DIM:
        raise FormulaError(f"{what} dimension must be a positive int (at most {MAX_DIM}), got {_short(dim)}")


def _short(value) -> str:
    big = isinstance(value, int) and value.bit_length() >= 200
    text = f"~2**{value.bit_length()}" if big else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_exact_constant(value) -> None:
    """An exact constant must be representable in float64 (and of bounded size)."""
    num, den = (value, 1) if isinstance(value, int) else (value.numerator, value.denominator)
    if num.bit_length() > MAX_CONST_BITS or den.bit_length() > MAX_CONST_BITS:
        raise FormulaError(f"the constant {_short(value)} has more than {MAX_CONST_BITS} bits")
    if abs(num) >= (den << 1024):
        raise FormulaError(f"the constant {_short(value)} overflows float64 (|c| >= 2**1024)")


def is_zero(node: Node) -> bool:
    return node.op == "Zero"


def is_const(node: Node, value=None) -> bool:
    """True for a ``Const``/``Zero`` node (with the given value, if one is given)."""
    if node.op not in ("Const", "Zero"):
        return False
    return value is None or node.value == value


def walk(node: Node):
    """Iterate over every distinct node of the DAG once, children before parents.

    The order is computed once per node and kept on it (nodes are immutable), so that
    the many passes over one formula (numbering, capability checks, code generation)
    cost one traversal.
    """
    order = node._order
    if order is None:
        order = _topological_order(node)
        object.__setattr__(node, "_order", order)
    return iter(order)


def dependencies(formulas) -> dict[Node, frozenset]:
    """node -> the categories (i, j, parameter) of the variables it depends on, for every node
    of ``formulas`` (``Var`` and ``Leaf`` nodes give their own category)."""
    deps: dict[Node, frozenset] = {}
    for f in formulas:
        for n in walk(f):
            if n in deps:
                continue
            if n.op in ("Var", "Leaf"):
                deps[n] = frozenset((n.cat,))
            elif not n.args:
                deps[n] = frozenset()
            else:
                deps[n] = frozenset().union(*(deps[a] for a in n.args))
    return deps


def _topological_order(node: Node) -> tuple:
    seen: set[Node] = set()
    out: list[Node] = []
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            out.append(n)
            continue
        if n in seen:
            continue
        seen.add(n)
        stack.append((n, True))
        for a in reversed(n.args):
            if a not in seen:
                stack.append((a, False))
    return tuple(out)


def variables(*nodes: Node) -> list[Node]:
    """The distinct ``Var`` nodes of one or several formulas, sorted by index."""
    found = {n for node in nodes for n in walk(node) if n.op == "Var"}
    by_index: dict[int, Node] = {}
    for v in found:
        other = by_index.get(v.index)
        if other is not None and other != v:
            raise FormulaError(
                f"variable index {v.index} is used with two signatures: {other!r} and {v!r}"
            )
        by_index[v.index] = v
    return [by_index[k] for k in sorted(by_index)]


def substitute(node: Node, mapping: dict[Node, Node]) -> Node:
    """Replace sub-trees according to ``mapping`` (memoised, DAG-preserving)."""
    memo: dict[Node, Node] = {}
    for n in walk(node):
        if n in mapping:
            memo[n] = mapping[n]
        elif n.args:
            new_args = tuple(memo[a] for a in n.args)
            memo[n] = n if new_args == n.args else Node(n.op, new_args, n.params)
        else:
            memo[n] = n
    return memo[node]
