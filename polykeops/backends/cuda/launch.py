"""Launch planning and the launch sequence of one reduction (device-neutral).

:func:`plan_launch` picks the scheme and the grid:

* **1D**: ``ceil(nx / block)`` blocks of ``block`` threads (one thread per
  row) times the batch (``gridDim.z``), each block sweeping all of j;
* **2D**, for few rows and many columns (the 1D grid would leave most of the
  GPU idle): j is split into ``nchunks`` ranges of ``jchunk`` columns (a
  multiple of the tile), one per ``blockIdx.y``; blocks write partial states,
  and a combine kernel merges them in j order.  Blocks are made as small as
  the rows allow (down to one warp).

:func:`run_reduction` issues the launches through an *executor* (the CUDA
driver in :mod:`.driver`, or the host emulator in :mod:`.emulator`): for each
output slice, the main kernel, then the combine kernel in the 2D scheme.
Block-sparse reductions (``ranges``) launch one block per item of a
:class:`.ranges.BlockMap` (1D scheme only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import BackendError

#: the GPU is considered full with this many blocks per SM (8 x 256 threads: 2048 per SM)
BLOCKS_PER_SM = 8
#: grid limits of CUDA
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
COMBINE_BLOCK = 256


@dataclass(frozen=True)
class LaunchPlan:
    block: int  # threads per block of the main kernel
    grid_x: int  # row blocks
    nchunks: int  # j ranges (1: the 1D scheme)
    jchunk: int  # columns per j range
    grid_z: int  # batch blocks (the kernel loops over the rest)

    @property
    def two_d(self) -> bool:
        return self.nchunks > 1


def plan_launch(nx: int, ny: int, nbatch: int, *, tile_j: int, block: int, max_threads: int,
                sm_count: int, scheme: str = "auto") -> LaunchPlan:
    """The grid of one reduction; ``scheme`` is ``"auto"``, ``"1d"`` or ``"2d"``."""
    block = max(32, min(block, max_threads) // 32 * 32)
    grid_z = max(1, min(nbatch, MAX_GRID_YZ))
    rows_blocks = -(-nx // block)
    busy = BLOCKS_PER_SM * sm_count
    want_2d = scheme == "2d" or (
        scheme == "auto" and rows_blocks * nbatch < busy and ny >= 4 * tile_j
    )
    if not want_2d or ny <= tile_j:
        return LaunchPlan(block, rows_blocks, 1, max(ny, 1), grid_z)
    if nx < block:  # few rows: small blocks, more of them along j
        block = max(32, -(-nx // 32) * 32)
        rows_blocks = -(-nx // block)
    blocks = rows_blocks * nbatch
    nchunks = max(2, -(-busy // max(blocks, 1)))
    nchunks = min(nchunks, -(-ny // tile_j), MAX_GRID_YZ)
    per_chunk = -(-ny // nchunks)
    jchunk = -(-per_chunk // tile_j) * tile_j  # a whole number of tiles
    nchunks = -(-ny // jchunk)
    if nchunks < 2:
        return LaunchPlan(block, rows_blocks, 1, max(ny, 1), grid_z)
    return LaunchPlan(block, rows_blocks, nchunks, jchunk, grid_z)


def batch_params(arg_shapes, batch_shape) -> tuple[list[int], list[int]]:
    """Batch sizes and, per argument and batch dimension, element strides (0: broadcast)."""
    nb = len(batch_shape)
    sizes = [int(s) for s in batch_shape]
    strides = []
    for shape in arg_shapes:
        for d in range(nb):
            strides.append(0 if shape[d] == 1 else math.prod(shape[d + 1:]))
    return sizes, strides


def run_reduction(ks, executor, arg_ptrs, arg_shapes, out_ptrs, *, nx, ny, batch_shape,
                  plan: LaunchPlan, block_map=None) -> None:
    """Launch the kernels of ``ks`` (a :class:`.kernel_source.TranslationUnit`) through ``executor``.

    ``executor`` provides ``workspace(n_float64, n_int64) -> (ptr_f, ptr_i)``,
    ``upload(int64 NumPy array) -> ptr`` (device copy kept alive by the executor) and
    ``launch(kernel_name, grid, block, params)`` where ``params`` is a list of
    ``(c_type, value)`` in the kernel's parameter order.

    Block-sparse reductions pass the :class:`.ranges.BlockMap` of their ranges
    (``ks`` must then be rendered with ``ranges=True`` and ``plan`` be
    ``block_map.plan(ny)``): one block per item of the map, 1D scheme.
    """
    if ks.ranges != (block_map is not None):
        raise BackendError(
            "internal: block-sparse kernels need a block map and dense kernels none "
            f"(kernels {'with' if ks.ranges else 'without'} ranges, block map "
            f"{'given' if block_map is not None else 'missing'})"
        )
    extra = []
    if block_map is not None:
        if block_map.nitems == 0:  # no row meets a j interval: the outputs hold the empty values
            return
        extra = [executor.upload(block_map.items), executor.upload(block_map.ivals)]
    nbatch = math.prod(batch_shape) if batch_shape else 1
    sizes, strides = batch_params(arg_shapes, batch_shape)
    ws_f = ws_i = 0
    if plan.two_d:
        rows = plan.nchunks * nbatch * nx
        nf = max(s.nf for s in ks.slices)
        ni = max(s.ni for s in ks.slices)
        ws_f, ws_i = executor.workspace(rows * max(nf, 1), rows * max(ni, 1))
    scalars = [1 if plan.two_d else 0, nx, ny, nbatch, plan.jchunk, *sizes, *strides]
    for sl in ks.slices:
        values = [*arg_ptrs, *out_ptrs, ws_f, ws_i, *scalars, *extra]
        params = [(t, v) for (t, _name), v in zip(ks.main_params, values)]
        assert len(params) == len(ks.main_params)
        executor.launch(sl.main, (plan.grid_x, plan.nchunks, plan.grid_z), plan.block, params)
        if plan.two_d:
            values = [*out_ptrs, ws_f, ws_i, nx, nbatch, plan.nchunks]
            params = [(t, v) for (t, _name), v in zip(ks.combine_params, values)]
            grid = -(-(nx * nbatch) // COMBINE_BLOCK)
            executor.launch(sl.combine, (grid, 1, 1), COMBINE_BLOCK, params)
