"""The op table itself: the :class:`OpDef` record, the registry and the dimension check.

This module holds no rule (the rules of the built-in ops are in
:mod:`polykeops.formula.ops`, which fills :data:`OPS` when the formula package is
imported) and imports nothing from the formula layer, so that
:mod:`polykeops.formula.nodes` can check a new node's operands without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormulaError

#: leaf operations: no op-table entry, their dimension is given explicitly
LEAF_OPS = frozenset({"Var", "Const", "Zero", "Leaf"})


@dataclass(frozen=True)
class OpDef:
    """Everything the formula layer knows about one operation (see :mod:`polykeops.formula.ops`)."""

    name: str
    arity: int
    dim: Callable[..., int]
    ref: Callable
    vjp: Callable | None = None
    params: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    random_params: Callable | None = None
    linear: bool = False  # linear in each argument: a zero argument gives zero
    build: Callable | None = None  # smart constructor, if the op has one
    smooth: bool = True  # False for piecewise-constant ops (zero derivative a.e.)
    public: bool = True  # False for ops that only derivative rules create
    doc: str = ""
    #: name of the LazyTensor method that applies this (unary, parameter-free) op; "" for none
    method: str = ""


#: op name -> OpDef
OPS: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add an operation to the op table (third parties may add their own)."""
    if opdef.name in OPS:
        raise FormulaError(f"operation {opdef.name!r} is already registered")
    OPS[opdef.name] = opdef
    return opdef


def public_ops() -> list[OpDef]:
    """The ops a user can write (derivative-only helpers excluded)."""
    return [o for o in OPS.values() if o.public]


def infer_dim(op: str, arg_dims: tuple, params: tuple) -> int:
    """Dimension of ``op`` applied to arguments of dimensions ``arg_dims`` with ``params``;
    raises FormulaError on bad operands."""
    opdef = OPS.get(op)
    if opdef is None:
        if op in LEAF_OPS:
            raise FormulaError(f"leaf {op} needs an explicit dimension")
        raise FormulaError(f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}")
    if len(arg_dims) != opdef.arity:
        raise FormulaError(f"{op} takes {opdef.arity} argument(s), got {len(arg_dims)}")
    if len(params) != len(opdef.params):
        raise FormulaError(
            f"{op} takes {len(opdef.params)} parameter(s) ({', '.join(opdef.params) or 'none'}), "
            f"got {len(params)}"
        )
    return opdef.dim(*arg_dims, *params)
