"""Leaves of LazyTensors: how user arrays become formula variables.

Construction follows pykeops: an array of shape ``(..., M, 1, D)`` is an
i-variable, ``(..., 1, N, D)`` a j-variable, ``(..., 1, 1, D)`` or 1-D a
parameter; a 2-D ``(M, D)`` array is an i-variable (``axis=0``) or a
j-variable (``axis=1``); a Python float is a scalar parameter; an int is an
exact constant.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import ShapeError
from ..formula.nodes import CAT_I, CAT_J, CAT_P, CATEGORY_NAMES, Leaf, Node

_uids = itertools.count()


@dataclass(eq=False)
class LeafData:
    """A data variable: the user's array, its category and its symbolic sizes."""

    node: Node  # the Leaf node standing for it in formulas
    array: object  # the user's array (or a Python float for scalar parameters)
    cat: int
    dim: int
    n: int | None  # M for i-variables, N for j-variables, None for parameters
    batch: tuple[int, ...]  # batch shape as given by the user (may be shorter than the result's)
    #: None, or this process's shard of a variable split across processes (an object with a
    #: ``reduce(tools, spec, leaves, opts, shape_hint)`` method: polykeops.torch.distributed)
    shard: object = None

    @property
    def is_scalar(self) -> bool:
        """A Python float, or a tuple of floats (pykeops' list parameters): no array, no dtype."""
        return isinstance(self.array, (float, tuple))


def classify(shape: tuple[int, ...], axis: int | None, what: str) -> tuple[int, int | None, tuple, int]:
    """``(cat, n, batch, dim)`` for an array of ``shape`` (``axis`` as in pykeops for 2-D arrays)."""
    nd = len(shape)
    if nd == 0:
        return CAT_P, None, (), 1
    if nd == 1:
        if axis is not None and axis != 2:
            raise ShapeError(
                f"{what}: a 1-D array of shape {shape} is a parameter; axis={axis} is not allowed"
            )
        return CAT_P, None, (), shape[0]
    if nd == 2:
        if axis is None:
            raise ShapeError(
                f"{what}: a 2-D array of shape {shape} is ambiguous; pass axis=0 (indexed by i) "
                "or axis=1 (indexed by j), or reshape it to (M, 1, D) / (1, N, D)"
            )
        if axis not in (0, 1, 2):
            raise ShapeError(f"{what}: axis must be 0 (i), 1 (j) or 2 (parameter), got {axis!r}")
        if axis == 2:
            return CAT_P, None, (), shape[0] * shape[1]
        return (CAT_I if axis == 0 else CAT_J), shape[0], (), shape[1]
    batch, (a, b, d) = tuple(shape[:-3]), shape[-3:]
    if axis is not None:
        cat = {0: CAT_I, 1: CAT_J, 2: CAT_P}.get(axis)
        if cat is None:
            raise ShapeError(f"{what}: axis must be 0 (i), 1 (j) or 2 (parameter), got {axis!r}")
        if cat == CAT_I and b != 1 or cat == CAT_J and a != 1 or cat == CAT_P and (a, b) != (1, 1):
            raise ShapeError(
                f"{what}: shape {shape} does not match {CATEGORY_NAMES[cat]} "
                "(expected (..., M, 1, D), (..., 1, N, D) or (..., 1, 1, D))"
            )
        return cat, (a if cat == CAT_I else b if cat == CAT_J else None), batch, d
    if a == 1 and b == 1:
        return CAT_P, None, batch, d
    if b == 1:
        return CAT_I, a, batch, d
    if a == 1:
        return CAT_J, b, batch, d
    raise ShapeError(
        f"{what}: an array of shape {shape} is neither (..., M, 1, D) (indexed by i), "
        "(..., 1, N, D) (indexed by j) nor (..., 1, 1, D) (a parameter)"
    )


def make_leaf(array, cat: int, dim: int, n: int | None, batch: tuple, shard=None) -> LeafData:
    return LeafData(Leaf(next(_uids), dim, cat), array, cat, dim, n, tuple(batch), shard)


def scalar_leaf(value: float) -> LeafData:
    return make_leaf(float(value), CAT_P, 1, None, ())


def list_leaf(values) -> LeafData:
    """A parameter from a list of numbers (as pykeops: ``LazyTensor([1.0, 2.0])`` is a ``Pm(2)``
    taking the dtype of the arrays it is combined with)."""
    return make_leaf(tuple(float(v) for v in values), CAT_P, len(values), None, ())


def placeholder(ind: int, dim: int, cat: int) -> Node:
    from ..formula.nodes import Var

    return Var(ind, dim, cat)


def swapped(leaf: LeafData, tools) -> LeafData:
    """The leaf with i and j exchanged (for ``LazyTensor.t()``)."""
    if leaf.cat == CAT_P:
        return leaf
    cat = CAT_J if leaf.cat == CAT_I else CAT_I
    arr = leaf.array
    if tools.ndim(arr) >= 3:
        arr = tools.swap_ij(arr)
    new = make_leaf(arr, cat, leaf.dim, leaf.n, leaf.batch, leaf.shard)
    return new
