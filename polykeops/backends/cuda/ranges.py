"""Block-sparse reductions on the GPU: the block map that the ranged kernels read.

``ranges = (ranges_x, slices_x, redranges_y)`` (the canonical half of pykeops'
6-tuple, see :mod:`polykeops.backends.contract`; optionally with leading batch
dimensions, one set of ranges per batch entry) becomes, on the host, a small
table of *items*, one per CUDA block, as in pykeops' ``GpuConv1D_ranges``:

``items[n] = (batch, first row, end row, first interval, end interval)``
    block ``n`` computes rows ``[first row, end row)`` (at most ``block`` rows,
    all in ONE i-range: a block never straddles two ranges) of batch entry
    ``batch``, reducing over the j intervals ``ivals[first interval:end interval]``
    only, tile by tile in shared memory.  Ranges without batch dimensions hold
    for every batch entry: their items have ``batch = -1`` and the grid's z
    dimension runs over the batch (as in the dense kernels);
``ivals[v] = (j0, j1)``
    the j intervals (``redranges_y``, clipped to ``[0, ny]``), per batch entry for
    batched ranges.

i-ranges with no non-empty j interval get no item: their rows keep the
reduction of nothing that the caller writes first (:func:`empty_outputs`), as do
rows outside every i-range.  i-ranges are expected to be disjoint (as in
pykeops); overlapping ones give one of the candidate results per row.  Ranges
use the 1D scheme only (the 2D scheme splits j into chunks, which the
intervals already do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError, ShapeError
from ..ranges import to_host
from .kernel_source import ITEM_WIDTH
from .launch import MAX_GRID_X, MAX_GRID_YZ, LaunchPlan

#: most j intervals in one block map (they are numbered with 32-bit ints in the kernels)
MAX_INTERVALS = 2**31 - 1


@dataclass(frozen=True)
class BlockMap:
    """The items (one per CUDA block) and j intervals of a block-sparse reduction."""

    items: np.ndarray  # (nitems, ITEM_WIDTH) int64
    ivals: np.ndarray  # (nintervals, 2) int64
    block: int  # threads per block (rows per item)
    nbatch: int = 1  # batch entries run over gridDim.z (items with batch -1)

    @property
    def nitems(self) -> int:
        return int(self.items.shape[0])

    def plan(self, ny: int) -> LaunchPlan:
        """The 1D launch of the ranged kernels: one block per item."""
        if self.nitems > MAX_GRID_X:
            raise BackendError(
                f"block-sparse reduction with {self.nitems} row blocks: more than the "
                f"{MAX_GRID_X} blocks of a CUDA grid"
            )
        return LaunchPlan(self.block, self.nitems, 1, max(ny, 1), max(1, min(self.nbatch, MAX_GRID_YZ)))


def empty_outputs(spec) -> tuple:
    """The values of rows that no j interval reaches (one list per output of ``spec``)."""
    return spec.red.empty_outputs(tuple(f.dim for f in spec.formulas), spec.k)


def block_map(ranges, batch_shape: tuple, nx: int, ny: int, max_block: int) -> BlockMap:
    """The :class:`BlockMap` of ``ranges`` for a reduction of ``nx`` rows and ``ny`` columns.

    Blocks have the smallest multiple of 32 threads that holds the longest
    i-range, at most ``max_block``; longer ranges are cut into several items.
    """
    if len(ranges) != 3:
        raise ShapeError(
            f"the CUDA backend takes ranges = (ranges_x, slices_x, redranges_y), got {len(ranges)} array(s)"
        )
    rx, sx, ry = (to_host(r) for r in ranges)
    batch_shape = tuple(int(b) for b in batch_shape)
    nb = len(batch_shape)
    rb = rx.ndim - 2
    if rb not in (0, nb):
        raise ShapeError(
            f"ranges_x has shape {rx.shape}: {rb} batch dimension(s), the reduction has {nb} "
            f"{batch_shape} (give 0 or {nb})"
        )
    for name, a, core in (("ranges_x", rx, 2), ("slices_x", sx, 1), ("redranges_y", ry, 2)):
        if a.ndim != rb + core or any(s not in (1, t) for s, t in zip(a.shape[:rb], batch_shape)):
            raise ShapeError(
                f"ranges: {name} has shape {a.shape}; expected {rb} leading batch dimension(s) "
                f"broadcasting against {batch_shape}"
            )
    nbatch = math.prod(batch_shape) if nb else 1
    lengths = np.clip(rx[..., 1], 0, nx) - np.clip(rx[..., 0], 0, nx)
    longest = int(lengths.max()) if lengths.size else 0
    block = max(32, min(max_block // 32 * 32, -(-longest // 32) * 32))
    items, ivals, base = [], [], 0
    for g in range(nbatch if rb else 1):
        if rb:
            idx = np.unravel_index(g, batch_shape)
            rxg, sxg, ryg = (
                a[tuple(0 if a.shape[d] == 1 else int(idx[d]) for d in range(rb))] for a in (rx, sx, ry)
            )
        else:
            rxg, sxg, ryg = rx, sx, ry
        grp_items = _items(rxg, sxg, ryg, nx, ny, block, base)
        ivals.append(np.clip(ryg.reshape(-1, 2), 0, ny))
        base += ryg.shape[0]
        grp_items[:, 0] = g if rb else -1  # -1: the same ranges for every batch entry
        items.append(grp_items)
    items = np.concatenate(items) if items else np.zeros((0, ITEM_WIDTH), np.int64)
    ivals = np.concatenate(ivals) if ivals else np.zeros((0, 2), np.int64)
    if ivals.shape[0] > MAX_INTERVALS:  # the kernels count intervals in 32-bit registers
        raise BackendError(
            f"block-sparse reduction with {ivals.shape[0]} j intervals (redranges_y of shape "
            f"{ry.shape}): the CUDA backend handles at most {MAX_INTERVALS}"
        )
    return BlockMap(
        np.ascontiguousarray(items, dtype=np.int64),
        np.ascontiguousarray(ivals, dtype=np.int64),
        block,
        1 if rb else nbatch,
    )


def _items(rx, sx, ry, nx: int, ny: int, block: int, base: int) -> np.ndarray:
    """The items (batch column 0) of one set of ranges; interval numbers start at ``base``."""
    if rx.shape[0] == 0:
        return np.zeros((0, ITEM_WIDTH), np.int64)
    nint = ry.shape[0]
    i0 = np.clip(rx[:, 0], 0, nx)
    i1 = np.clip(rx[:, 1], 0, nx)
    v1 = np.clip(sx, 0, nint)
    v0 = np.clip(np.concatenate([[0], sx[:-1]]), 0, nint)
    nonempty = np.concatenate([[0], np.cumsum(np.clip(ry[:, 1], 0, ny) > np.clip(ry[:, 0], 0, ny))])
    live = (i1 > i0) & (v1 > v0) & (nonempty[v1] > nonempty[v0])
    counts = np.where(live, -(-(i1 - i0) // block), 0)
    k = np.repeat(np.arange(rx.shape[0]), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    first = i0[k] + within * block
    return (
        np.stack(
            [np.zeros_like(first), first, np.minimum(first + block, i1[k]), base + v0[k], base + v1[k]],
            axis=1,
        )
        .astype(np.int64)
        .reshape(-1, ITEM_WIDTH)
    )
