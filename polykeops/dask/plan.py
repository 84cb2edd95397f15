"""The Dask plan of one reduction: partial states per (i-chunk, j-chunk), a tree along j.

For a canonical :class:`~polykeops.backends.reduction_call.ReductionCall` (reduce over j,
outputs indexed by i) on Dask arrays, :func:`reduce_chunks` writes a graph of

* one **state task** per pair (i-chunk ``a``, j-chunk ``b``): the call restricted to the
  rows of ``a`` and the columns of ``b`` (block-sparse ranges clipped to both) is evaluated
  on the worker by the backend its request selects (:func:`~polykeops.backends.dispatch.dispatch_states`:
  the CPU engine by default, ``backend="cuda"`` on GPU workers), which returns the reduction's
  partial state; its indices are moved to the global numbering of j
  (:func:`~polykeops.backends.partial_states.offset`);
* **combine tasks**: for each i-chunk, the states of consecutive j-chunks are merged in j
  order by the reduction's own rule (:func:`~polykeops.backends.partial_states.combine`),
  ``split_every`` at a time, as a tree of ``log_{split_every}(#j-chunks)`` levels;
* one **finalize task** per i-chunk (:func:`~polykeops.backends.partial_states.finalize`),
  whose outputs are the blocks of the lazy result arrays: their chunks along the output axis
  are the input's i-chunks.

The call itself (spec, sizes, ranges, request) is one key of the graph, and so is every
parameter (rechunked to one chunk): a distributed scheduler sends each once per worker, not
once per task.  Pairs of chunks that block-sparse ranges leave without any interaction get
no task at all.  ``split_every`` is ``dask.config.get("polykeops.split_every", 8)``.
"""

from __future__ import annotations

import importlib
import operator
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..backends import partial_states
from ..backends.arrays import adapter_for, find
from ..backends.dispatch import dispatch_states
from ..backends.split_j import combine_tree, piece
from ..formula.nodes import CAT_I, CAT_J
from ..formula.reductions import INDEX

DEFAULT_SPLIT_EVERY = 8


def as_dask(a):
    """``a`` as a Dask array (a NumPy array becomes one chunk: one key in the graph)."""
    if isinstance(a, da.Array):
        return a
    a = np.asarray(a)
    return da.from_array(a, chunks=a.shape or (), name=False) if a.ndim else da.from_array(a)


# ---------------------------------------------------------------------------
# what runs on the workers
# ---------------------------------------------------------------------------


def rows(call, i0: int, i1: int):
    """``call`` restricted to the rows ``i0 <= i < i1`` (block-sparse ranges clipped and
    renumbered from ``i0``; the columns of each kept interval are unchanged)."""
    ranges = call.ranges
    if ranges is not None:
        ranges = (np.clip(ranges[0], i0, i1) - i0,) + tuple(ranges[1:])
    return replace(call, nx=i1 - i0, ranges=ranges)


def backend_arrays(arrays) -> list:
    """The chunks as arrays the backends take: NumPy and torch arrays as they are; the arrays
    of another library that speaks DLPack (CuPy chunks on GPU workers) as torch tensors on the
    same device, without a copy (``torch.from_dlpack``); NumPy arrays beside them (parameters
    given as NumPy arrays) are copied to that device."""
    foreign = [a for a in arrays if find(a) is None]
    if not foreign:
        return list(arrays)
    if not all(hasattr(a, "__dlpack__") for a in foreign):
        raise TypeError(f"chunks of type {type(foreign[0]).__name__} are neither NumPy, torch nor "
                        "DLPack arrays")
    import torch

    device = torch.from_dlpack(foreign[0]).device
    return [torch.from_dlpack(a) if find(a) is None else torch.as_tensor(a, device=device) for a in arrays]


def chunk_library(meta) -> str | None:
    """The name of the chunks' library when the backends do not take its arrays (``"cupy"``),
    from a Dask array's meta; None for NumPy and torch chunks."""
    if find(meta) is not None:
        return None
    return type(meta).__module__.split(".")[0]


def chunk_states(call, i0: int, i1: int, j0: int, j1: int, *arrays) -> tuple:
    """The partial state of rows ``[i0, i1)`` over columns ``[j0, j1)`` (global j indices), from
    the chunks ``arrays`` (one per variable: i-variables' rows, j-variables' columns, parameters).
    The backend is the call's request (auto: the worker's best backend for these chunks).  The
    state of DLPack chunks (CuPy) stays in torch tensors on their device until :func:`finalize_states`."""
    sub, _ = piece(rows(call, i0, i1), [], j0, j1)
    arrays = backend_arrays(arrays)
    ad = adapter_for(arrays[0])
    device = ad.device(arrays[0]).split(":")[0]
    sub = replace(sub, array_kind=ad.kind, device=device)
    return partial_states.offset(call.spec, dispatch_states(sub, list(arrays)), j0)


def combine_states(call, *states) -> tuple:
    """The state of consecutive pieces of j, ``states`` in j order."""
    return combine_tree(call.spec, list(states))


def finalize_states(call, state, library: str | None = None) -> tuple:
    """The outputs of one i-chunk, as arrays of the chunks' ``library`` (by DLPack, no copy)
    when it is not NumPy or torch."""
    outs = partial_states.finalize(call.spec, state)
    if library is not None:
        lib = importlib.import_module(library)
        outs = tuple(lib.from_dlpack(o.contiguous()) for o in outs)
    return outs


# ---------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------


def _chunks_of(args, variables, cat, n):
    """The chunks along the rows of the first variable of ``cat`` (one chunk if none), without
    empty chunks."""
    for v, a in zip(variables, args):
        if v.cat == cat:
            chunks = tuple(c for c in a.chunks[-2] if c)
            return chunks or (n,)
    return (n,)


def _bounds(chunks):
    out = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    return [(int(a), int(b)) for a, b in zip(out[:-1], out[1:])]


def _interacting(call, ibounds, jbounds):
    """``live[a][b]``: whether rows ``ibounds[a]`` and columns ``jbounds[b]`` interact under the
    call's block-sparse ranges (all True without ranges, or with batched ranges)."""
    live = [[True] * len(jbounds) for _ in ibounds]
    if call.ranges is None or np.ndim(call.ranges[0]) != 2:
        return live
    ranges_x, slices_x, red_y = (np.asarray(r) for r in call.ranges[:3])
    starts = np.concatenate([[0], slices_x[:-1]]).astype(int)
    for a, (i0, i1) in enumerate(ibounds):
        cols = []
        hit = (ranges_x[:, 0] < i1) & (ranges_x[:, 1] > i0) & (ranges_x[:, 1] > ranges_x[:, 0])
        for c in np.nonzero(hit)[0]:
            cols.append(red_y[starts[c]:int(slices_x[c])])
        cols = np.concatenate(cols) if cols else np.zeros((0, 2), dtype=np.int64)
        for b, (j0, j1) in enumerate(jbounds):
            live[a][b] = bool(((cols[:, 0] < j1) & (cols[:, 1] > j0) & (cols[:, 1] > cols[:, 0])).any())
        if not any(live[a]):  # a row block without any interaction still needs one (empty) state
            live[a][0] = True
    return live


def reduce_chunks(call, args, split_every: int | None = None) -> tuple:
    """The outputs of ``call`` (a canonical ReductionCall) on ``args`` (Dask or NumPy arrays
    in the backend layout, one per variable), as lazy Dask arrays shaped ``(*batch, nx, dim)``
    whose chunks along ``nx`` are the i-variables' chunks."""
    if split_every is None:
        split_every = int(dask.config.get("polykeops.split_every", DEFAULT_SPLIT_EVERY))
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    spec = call.spec
    variables = spec.variables
    args = [as_dask(a) for a in args]
    ichunks = _chunks_of(args, variables, CAT_I, call.nx)
    jchunks = _chunks_of(args, variables, CAT_J, call.ny)
    laid = []  # each variable: one chunk along every axis but its rows
    for v, a in zip(variables, args):
        whole = {ax: -1 for ax in range(a.ndim)}
        if v.cat == CAT_I:
            whole[a.ndim - 2] = ichunks
        elif v.cat == CAT_J:
            whole[a.ndim - 2] = jchunks
        laid.append(a.rechunk(whole))
    ibounds, jbounds = _bounds(ichunks), _bounds(jchunks)
    library = next((chunk_library(a._meta) for a in laid if chunk_library(a._meta)), None)
    meta_lib = np if library is None else importlib.import_module(library)
    live = _interacting(call, ibounds, jbounds)

    token = tokenize(repr(spec), call.nx, call.ny, call.batch_shape, str(call.request), call.ranges,
                     [a.name for a in laid], split_every, ichunks, jchunks)
    call_key = f"polykeops-call-{token}"
    state_name, comb_name, fin_name = (f"polykeops-{w}-{token}" for w in ("state", "combine", "final"))
    dsk = {call_key: call}

    def key_of(v, a, ia, jb):
        nd = a.ndim
        if v.cat == CAT_I:
            return (a.name,) + (0,) * (nd - 2) + (ia, 0)
        if v.cat == CAT_J:
            return (a.name,) + (0,) * (nd - 2) + (jb, 0)
        return (a.name,) + (0,) * nd

    for ia, (i0, i1) in enumerate(ibounds):
        level = []
        for jb, (j0, j1) in enumerate(jbounds):
            if not live[ia][jb]:
                continue
            keys = [key_of(v, a, ia, jb) for v, a in zip(variables, laid)]
            dsk[(state_name, ia, jb)] = (chunk_states, call_key, i0, i1, j0, j1, *keys)
            level.append((state_name, ia, jb))
        depth = 0
        while len(level) > 1:
            nxt = []
            for g in range(0, len(level), split_every):
                group = level[g:g + split_every]
                if len(group) == 1:
                    nxt.append(group[0])
                    continue
                key = (comb_name, depth, ia, g // split_every)
                dsk[key] = (combine_states, call_key, *group)
                nxt.append(key)
            level, depth = nxt, depth + 1
        dsk[(fin_name, ia)] = (finalize_states, call_key, level[0], library)

    graph_deps = list(laid)
    outputs = []
    batch = tuple(call.batch_shape)
    for k, out in enumerate(spec.outputs()):
        dtype = np.dtype("int64") if out.kind == INDEX else np.dtype(spec.dtype)
        name = f"polykeops-out{k}-{token}"
        layer = {(name,) + (0,) * len(batch) + (ia, 0): (operator.getitem, (fin_name, ia), k)
                 for ia in range(len(ibounds))}
        graph = HighLevelGraph.from_collections(name, {**dsk, **layer}, dependencies=graph_deps)
        chunks = tuple((b,) for b in batch) + (ichunks, (out.dim,))
        meta = meta_lib.empty((0,) * (len(batch) + 2), dtype=dtype)
        outputs.append(da.Array(graph, name, chunks=chunks, meta=meta))
    return tuple(outputs)

