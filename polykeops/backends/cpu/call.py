"""The call of the CPU engines: arrays and sizes -> one :class:`PreparedCall`.

:func:`prepare` allocates the outputs with the inputs' array library (through
:mod:`polykeops.backends.arrays`) and fills a :class:`PreparedCall`: sizes, thread count,
one data pointer per argument, a table of per-batch element offsets (0 strides where an
argument broadcasts), one data pointer per output, and the work items of block-sparse
reductions.  The Cython driver (``_driver.pyx``) reads it into the C ``pk_call`` struct
(``include/pk_call.h``) that every engine takes.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ... import config
from ..arrays import adapter, adapter_for
from ..ranges import to_host


def batch_offsets(shapes, nvars: int, batch_shape: tuple) -> np.ndarray:
    """``[nbatch, nvars]`` element offsets of each argument's slice for each flat batch index."""
    nb = len(batch_shape)
    nbatch = math.prod(batch_shape) if nb else 1
    boff = np.zeros((nbatch, nvars), dtype=np.int64)
    if nb == 0:
        return boff
    grid = np.indices(batch_shape, dtype=np.int64).reshape(nb, -1)
    for p, shape in enumerate(shapes):
        bshape = shape[:nb]
        inner = math.prod(shape[nb:])
        strides = np.zeros(nb, dtype=np.int64)
        acc = inner
        for d in range(nb - 1, -1, -1):
            strides[d] = 0 if bshape[d] == 1 else acc
            acc *= bshape[d]
        boff[:, p] = (grid * strides[:, None]).sum(0)
    return boff


def default_threads() -> int:
    """POLYKEOPS_NUM_THREADS, else OMP_NUM_THREADS (OpenMP's convention), else the usable cores."""
    n = config.num_threads()
    if n:
        return n
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class PreparedCall:
    """What the driver reads: sizes, data pointers (ints), the int64 tables; ``keep``: objects
    that must stay alive during the call; ``outputs``: the output arrays."""

    __slots__ = ("nx", "ny", "nthreads", "arg_ptrs", "out_ptrs", "boff", "items", "ivoff", "ivals",
                 "keep", "outputs")

    def __init__(self, nx, ny, nthreads, arg_ptrs, out_ptrs, boff, table, keep, outputs):
        self.nx, self.ny, self.nthreads = nx, ny, nthreads
        self.arg_ptrs, self.out_ptrs, self.boff = arg_ptrs, out_ptrs, boff
        self.items, self.ivoff, self.ivals = table if table else (None, None, None)
        self.keep, self.outputs = keep, outputs


def block_table(ranges, batch_shape: tuple, nx: int, block_rows: int):
    """``(items, ivoff, ivals)`` int64 arrays for block-sparse ``ranges`` (see ``pk_call``).

    ``ranges = (ranges_x, slices_x, redranges_y)``, optionally with leading batch
    dimensions (one set of ranges per batch entry, broadcasting); each block of rows
    is cut into items of at most ``block_rows`` rows.
    """
    host = [to_host(r) for r in ranges]
    nb = len(batch_shape)
    rb = host[0].ndim - 2
    if rb not in (0, nb):
        raise ValueError(f"ranges have {rb} batch dimension(s), the reduction {nb}")
    nbatch = math.prod(batch_shape) if nb else 1
    items, ivoff, ivals = [], [np.zeros(1, np.int64)], []
    nblk = nint = 0
    for b in range(nbatch if rb else 1):
        idx = np.unravel_index(b, batch_shape) if rb else ()
        r_idx = tuple(0 if host[0].shape[k] == 1 else int(i) for k, i in enumerate(idx))
        rx, sx, ry = (h[r_idx] if rb else h for h in host)
        k = rx.shape[0]
        if k:
            ivoff.append(nint + sx.astype(np.int64))
            ivals.append(ry[: int(sx[-1])].reshape(-1, 2))
            nint += int(sx[-1])
        i0 = np.clip(rx[:, 0], 0, nx)
        i1 = np.clip(rx[:, 1], 0, nx)
        counts = np.maximum(0, -(-(i1 - i0) // block_rows))
        blk = np.repeat(np.arange(k), counts)
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        c0 = i0[blk] + within * block_rows
        c1 = np.minimum(c0 + block_rows, i1[blk])
        batches = [b] if rb else range(nbatch)
        for bb in batches:
            items.append(np.stack([np.full_like(c0, bb), c0, c1, blk + nblk], axis=1))
        nblk += k
    items = np.concatenate(items) if items else np.zeros((0, 4), np.int64)
    ivoff = np.concatenate(ivoff)
    ivals = np.concatenate(ivals) if ivals else np.zeros((0, 2), np.int64)
    return (
        np.ascontiguousarray(items, dtype=np.int64),
        np.ascontiguousarray(ivoff, dtype=np.int64),
        np.ascontiguousarray(ivals, dtype=np.int64),
    )


def fill_empty(spec, outs) -> None:
    """Every row holds the reduction of nothing (block-sparse rows outside all ranges)."""
    fills = spec.red.empty_outputs(tuple(f.dim for f in spec.formulas), spec.k)
    for o, fill in zip(outs, fills):
        # outputs (fresh host arrays) are filled through a NumPy view: a torch copy of a large
        # tensor runs on torch's OpenMP threads, which then spin for a while on the cores that the
        # kernel is about to use
        view = adapter_for(o).to_host(o)
        view[...] = np.asarray(fill, dtype=view.dtype)


def prepare(
    spec, args, nx: int, ny: int, batch_shape: tuple, nthreads: int, ranges=None, block_rows: int = 32
) -> PreparedCall:
    """Outputs allocated with the inputs' library (NumPy without inputs), and the C call description."""
    like = args[0] if args else None
    ad = adapter_for(like) if args else adapter("numpy")
    outs = []
    for o in spec.outputs():
        dtype = "int64" if o.kind == "index" else spec.dtype
        outs.append(ad.empty(tuple(batch_shape) + (nx, o.dim), dtype, like))
    table = ()
    if ranges is not None:
        fill_empty(spec, outs)
        table = block_table(ranges, tuple(batch_shape), nx, block_rows)
    shapes = [tuple(a.shape) for a in args]
    boff = batch_offsets(shapes, len(args), tuple(batch_shape))
    arg_ptrs = tuple(ad.data_ptr(a) for a in args)
    out_ptrs = tuple(ad.data_ptr(o) for o in outs)
    return PreparedCall(nx, ny, nthreads, arg_ptrs, out_ptrs, boff, table, args, tuple(outs))
