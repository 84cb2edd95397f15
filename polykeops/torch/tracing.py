"""LazyTensors inside ``torch.compile(..., fullgraph=True)``: formulas are built outside the graph.

Building a formula is pure Python on tensor *metadata* (shapes, dtypes): hash-consed
nodes, simplification, numbering.  Dynamo does not trace it.  Instead:

* under Dynamo, ``LazyTensor(x)`` only records ``(x, axis)``;
* every public LazyTensor method is a :func:`torch._dynamo.nonstrict_trace` function:
  Dynamo records an opaque call, and AOTAutograd runs the method's Python on fake tensors,
  where the reductions become :func:`torch.ops.polykeops.reduce` nodes
  (:mod:`polykeops.torch.custom_op`);
* LazyTensors cross those calls as pytrees: their tensors are the children, the
  context holds the formula with its leaves renumbered by position (so that equal
  formulas give equal contexts, whatever the uids of the calls that built them) and no
  size that a dynamic shape could make symbolic.

Eager code never goes through this module's wrappers (one ``is_dynamo_compiling``
test per call).
"""

from __future__ import annotations

import functools

import torch
import torch.utils._pytree as pytree

from ..common import leaves as L
from ..common.lazy_tensor import GenericLazyTensor
from ..errors import FormulaError
from ..formula.nodes import CAT_I, CAT_J, Leaf, Var, substitute
from ..formula.serial import formula_from_text, formula_to_text

#: methods that stay ordinary Python under Dynamo (object protocol, no formula built)
_KEEP = {"__init__", "__new__", "__init_subclass__", "__getattribute__", "__getattr__", "__setattr__",
         "__delattr__", "__hash__", "__repr__", "__str__", "__format__", "__sizeof__", "__reduce__",
         "__reduce_ex__", "__dir__", "__class_getitem__", "__subclasshook__", "__len__", "__bool__",
         "__iter__", "__getstate__", "__setstate__", "__copy__", "__deepcopy__", "__array_ufunc__",
         "__eq__", "__ne__"}


def _flatten(lt):
    packed = lt.__dict__.get("_packed")
    if packed is not None:  # not built yet: pass it on as it came
        return list(packed[0]), packed[1]
    pending = lt.__dict__.get("_pending")
    if pending is not None:
        return [pending[0]], ("pending", type(lt), pending[1])
    if lt.ranges is not None:
        raise FormulaError(f"{lt._summary()}: block-sparse ranges are not supported under torch.compile")
    children, metas, mapping = [], [], {}
    for k, (node, leaf) in enumerate(lt.leaves.items()):
        if leaf.shard is not None:
            raise FormulaError(f"{lt._summary()}: sharded variables are not supported under torch.compile")
        mapping[node] = Leaf(-1 - k, leaf.dim, leaf.cat)  # (negative: no front-end uid is)
        if isinstance(leaf.array, torch.Tensor):
            children.append(leaf.array)
            metas.append((-1 - k, leaf.cat, leaf.dim, None))
        else:  # a Python float or list parameter: its value is part of the formula
            metas.append((-1 - k, leaf.cat, leaf.dim, leaf.array))
    formula = None if lt.formula is None else formula_to_text(substitute(lt.formula, mapping))
    has = {leaf.cat for leaf in lt.leaves.values()}
    sizes = (None if CAT_I in has else lt.ni, None if CAT_J in has else lt.nj)
    placeholders = tuple((i, v.dim, v.cat) for i, v in sorted(lt.placeholders.items()))
    context = ("built", type(lt), formula, tuple(metas), placeholders, tuple(sorted(lt.complex_placeholders)),
               lt.dtype_name, lt.device, lt.array_kind, sizes, len(lt.batch))
    return children, context


def _unflatten(children, context):
    """A LazyTensor that holds ``(children, context)`` and is built on first use (in Dynamo's trace,
    where it only crosses from one opaque call to the next, nothing else runs)."""
    lt = object.__new__(context[1])
    lt._packed = (tuple(children), context)
    return lt


def _materialize(lt) -> None:
    """Build a LazyTensor recorded by Dynamo (``_pending``) or passed as a pytree (``_packed``)."""
    state = lt.__dict__
    if "_packed" in state:
        built = _build(*state.pop("_packed"))
    elif "_pending" in state:
        x, axis = state.pop("_pending")
        built = type(lt)(x, axis)
    else:
        return
    state.update(built.__dict__)


def _build(children, context):
    if context[0] == "pending":
        _, cls, axis = context
        return cls(children[0], axis)
    _, cls, formula, metas, placeholders, cplx, dtype, device, kind, sizes, nbatch = context
    lt = object.__new__(cls)
    lt.__init__()
    mapping, tensors = {}, iter(children)
    ni, nj, batches = sizes[0], sizes[1], []
    for k, cat, dim, value in metas:
        pos = Leaf(k, dim, cat)
        if value is None:
            array = next(tensors)
            n, batch = _leaf_sizes(array, cat)
            leaf = L.make_leaf(array, cat, dim, n, batch)
            batches.append(batch)
            if cat == CAT_I:
                ni = n
            elif cat == CAT_J:
                nj = n
        else:
            leaf = L.make_leaf(value, cat, dim, None, ())
        mapping[pos] = leaf.node
        lt.leaves[leaf.node] = leaf
    lt.formula = None if formula is None else substitute(formula_from_text(formula), mapping)
    lt.placeholders = {i: Var(i, d, c) for i, d, c in placeholders}
    lt.complex_placeholders = frozenset(cplx)
    lt.dtype_name, lt.device, lt.array_kind = dtype, device, kind
    lt.ni, lt.nj = ni, nj
    lt.batch = _broadcast(batches, nbatch)
    return lt


def _leaf_sizes(array, cat: int) -> tuple:
    """``(n, batch)`` of a leaf array: (..., M, 1, D), (..., 1, N, D), (..., 1, 1, D), (M, D) or (D,)."""
    shape = tuple(array.shape)
    if len(shape) < 3:
        return (None if cat not in (CAT_I, CAT_J) else shape[0]), ()
    n = {CAT_I: shape[-3], CAT_J: shape[-2]}.get(cat)
    return n, shape[:-3]


def _broadcast(batches, nbatch: int) -> tuple:
    out = [1] * nbatch
    for b in batches:
        b = (1,) * (nbatch - len(b)) + tuple(b)
        for k in range(nbatch):
            if b[k] != 1:
                out[k] = b[k]
    return tuple(out)


def _wrap(fn):
    @functools.wraps(fn)
    def built(self, *args, **kwargs):
        for a in (self, *args, *kwargs.values()):
            if isinstance(a, GenericLazyTensor):
                _materialize(a)
        return fn(self, *args, **kwargs)

    traced = torch._dynamo.nonstrict_trace(built)

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        if torch.compiler.is_dynamo_compiling():
            return traced(self, *args, **kwargs)
        return fn(self, *args, **kwargs)

    return method


def make_traceable(cls) -> None:
    """Register ``cls`` (a torch LazyTensor class) as a pytree and wrap its public methods."""
    pytree.register_pytree_node(cls, _flatten, _unflatten)
    for name in dir(cls):
        if name in _KEEP or (name.startswith("_") and not name.startswith("__")):
            continue
        raw = cls.__dict__.get(name)
        for base in cls.__mro__:
            if name in base.__dict__:
                raw = base.__dict__[name]
                break
        if not callable(raw) or isinstance(raw, (staticmethod, classmethod, type, property)):
            continue
        setattr(cls, name, _wrap(raw))


def _same(self, other) -> bool:
    return self is other


def _identity_hash(self) -> int:
    return id(self)


def make_genred_traceable(cls) -> None:
    """``Genred`` objects (built before the compiled region) are constants of the graph: compared
    by identity, their call is an opaque ``nonstrict_trace`` call as LazyTensor methods are."""
    cls.__eq__, cls.__hash__ = _same, _identity_hash
    pytree.register_constant(cls)
    cls.__call__ = _wrap(cls.__call__)
