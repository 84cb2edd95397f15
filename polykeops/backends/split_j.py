"""A reduction call cut along j into pieces: the unit of work of the distributed layers.

:func:`piece` gives the call (and arguments) of the columns ``j0 <= j < j1`` of a
call, :func:`piece_states` its partial state with global indices, and
:func:`evaluate_split` a whole call evaluated piece by piece and combined with the
reduction's own rules (what a Dask graph or a ring of torch.distributed ranks
does, here in one process: the reference the distributed results are checked
against, and a way to bound the memory of one call).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ShapeError
from ..formula.nodes import CAT_J
from . import partial_states
from .dispatch import dispatch_states
from .reduction_call import ReductionCall


def piece(call: ReductionCall, args, j0: int, j1: int):
    """``(call, args)`` restricted to the columns ``j0 <= j < j1`` of ``call`` (a canonical call:
    j is the reduced axis).  Block-sparse ranges keep the intervals' parts inside the piece,
    renumbered from ``j0``."""
    if not 0 <= j0 <= j1 <= call.ny:
        raise ShapeError(f"piece [{j0}, {j1}) is not inside the {call.ny} columns j of the call")
    sub_args = [a[..., j0:j1, :] if v.cat == CAT_J else a for v, a in zip(call.spec.variables, args)]
    ranges = call.ranges
    if ranges is not None:
        ranges_x, slices_x, redranges_y = ranges[:3]
        redranges_y = redranges_y.clip(j0, j1) - j0
        ranges = (ranges_x, slices_x, redranges_y) + tuple(ranges[3:])
    return replace(call, ny=j1 - j0, ranges=ranges), sub_args


def piece_states(call: ReductionCall, args, j0: int, j1: int) -> tuple:
    """The partial state of the columns ``j0 <= j < j1`` of ``call``, indices numbered in the
    whole call (see :mod:`polykeops.backends.partial_states`)."""
    sub_call, sub_args = piece(call, args, j0, j1)
    return partial_states.offset(call.spec, dispatch_states(sub_call, sub_args), j0)


def combine_tree(spec, states: list) -> tuple:
    """The combination of the states of consecutive pieces of j (in j order), pairwise as a
    balanced tree: ``log2(len(states))`` levels, as a distributed reduction combines them."""
    if not states:
        raise ValueError("no partial state to combine")
    level = list(states)
    while len(level) > 1:
        nxt = [partial_states.combine(spec, level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def evaluate_split(call: ReductionCall, args, bounds) -> tuple:
    """The outputs of ``call`` computed over the pieces of j between consecutive ``bounds``
    (``0 = b0 < b1 < ... = ny``), their states combined as a tree, then finalized."""
    bounds = list(bounds)
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != call.ny or any(
            a > b for a, b in zip(bounds, bounds[1:])):
        raise ShapeError(f"bounds {bounds} do not cut the {call.ny} columns j into consecutive pieces")
    states = [piece_states(call, args, a, b) for a, b in zip(bounds, bounds[1:])]
    return partial_states.finalize(call.spec, combine_tree(call.spec, states))
