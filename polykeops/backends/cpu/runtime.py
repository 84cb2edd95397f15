"""Loading kernels and calling them on NumPy arrays or CPU torch tensors.

* :class:`PkCall` mirrors the C ``pk_call`` struct that every kernel (and the
  generic engine) takes: sizes, thread count, one data pointer per argument,
  a table of per-batch element offsets (0 strides where an argument
  broadcasts), one data pointer per output.
* Specialised kernels are shared libraries from :mod:`.cache`, loaded with
  ctypes (which releases the GIL during the call).  In-process, a dict maps
  each spec to its loaded kernel (guarded by a lock); background builds run on
  one daemon thread.  After ``fork`` the child forgets pending builds and
  recreates its locks (see :func:`_after_fork`).
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from ... import config
from ..host_ranges import to_host
from . import cache
from .kernel_source import KernelSource


class PkCall(ctypes.Structure):
    _fields_ = [
        ("nx", ctypes.c_int64),
        ("ny", ctypes.c_int64),
        ("nbatch", ctypes.c_int64),
        ("nthreads", ctypes.c_int64),
        ("args", ctypes.POINTER(ctypes.c_void_p)),
        ("boff", ctypes.POINTER(ctypes.c_int64)),
        ("outs", ctypes.POINTER(ctypes.c_void_p)),
        ("nitems", ctypes.c_int64),
        ("items", ctypes.POINTER(ctypes.c_int64)),
        ("ivoff", ctypes.POINTER(ctypes.c_int64)),
        ("ivals", ctypes.POINTER(ctypes.c_int64)),
    ]


# ---------------------------------------------------------------------------
# array glue
# ---------------------------------------------------------------------------


def is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def data_ptr(a) -> int:
    return a.data_ptr() if is_torch(a) else a.ctypes.data


def contiguous(a):
    if is_torch(a):
        return a if a.is_contiguous() else a.contiguous()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def to_dtype(a, dtype: str):
    if is_torch(a):
        import torch

        return a.to(getattr(torch, dtype))
    return a.astype(dtype)


def empty(like_torch: bool, shape, dtype: str):
    if like_torch:
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, dtype))
    return np.empty(tuple(shape), dtype=dtype)


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


@dataclass
class PreparedCall:
    call: PkCall
    keep: tuple  # objects that must stay alive during the call
    outputs: tuple


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
        # torch outputs (fresh CPU tensors) are filled through a NumPy view: a torch copy of a large
        # tensor runs on torch's OpenMP threads, which then spin for a while on the cores that the
        # kernel is about to use
        view = o.numpy() if is_torch(o) else o
        view[...] = np.asarray(fill, dtype=view.dtype)


def prepare(
    spec, args, nx: int, ny: int, batch_shape: tuple, nthreads: int, ranges=None, block_rows: int = 32
) -> PreparedCall:
    """Outputs allocated with the inputs' library, and the C call description."""
    torch_kind = bool(args) and is_torch(args[0])
    outs = []
    for o in spec.outputs():
        dtype = "int64" if o.kind == "index" else spec.dtype
        outs.append(empty(torch_kind, tuple(batch_shape) + (nx, o.dim), dtype))
    table = ()
    if ranges is not None:
        fill_empty(spec, outs)
        table = block_table(ranges, tuple(batch_shape), nx, block_rows)
    shapes = [tuple(a.shape) for a in args]
    boff = batch_offsets(shapes, len(args), tuple(batch_shape))
    arg_ptrs = (ctypes.c_void_p * max(1, len(args)))(*[data_ptr(a) for a in args])
    out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[data_ptr(o) for o in outs])
    call = PkCall(
        nx=nx,
        ny=ny,
        nbatch=boff.shape[0],
        nthreads=nthreads,
        args=ctypes.cast(arg_ptrs, ctypes.POINTER(ctypes.c_void_p)),
        boff=boff.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
        outs=ctypes.cast(out_ptrs, ctypes.POINTER(ctypes.c_void_p)),
    )
    if table:
        items, ivoff, ivals = table
        i64 = ctypes.POINTER(ctypes.c_int64)
        call.nitems = items.shape[0]
        call.items = items.ctypes.data_as(i64)
        call.ivoff = ivoff.ctypes.data_as(i64)
        call.ivals = ivals.ctypes.data_as(i64)
    return PreparedCall(call, (arg_ptrs, out_ptrs, boff, args, table), tuple(outs))


# ---------------------------------------------------------------------------
# specialised kernels
# ---------------------------------------------------------------------------


class CompiledKernel:
    """A loaded specialised kernel (a shared library with ``pk_run``)."""

    def __init__(self, path, key: str, source_path=None):
        self.path = str(path)
        self.key = key
        self.source_path = source_path
        self.lib = ctypes.CDLL(self.path)
        self._run = self.lib.pk_run
        self._run.argtypes = [ctypes.POINTER(PkCall)]
        self._run.restype = ctypes.c_int
        self.lib.pk_block_rows.restype = ctypes.c_int64
        self.block_rows = int(self.lib.pk_block_rows())
        self.range_rows = self.block_rows  # rows of a block-sparse work item
        if hasattr(self.lib, "pk_range_rows"):
            self.lib.pk_range_rows.restype = ctypes.c_int64
            self.range_rows = int(self.lib.pk_range_rows())

    def run(self, prepared: PreparedCall) -> None:
        err = self._run(ctypes.byref(prepared.call))
        if err:
            raise MemoryError("polykeops CPU kernel: out of memory for its work buffers")

    def __repr__(self) -> str:
        return f"<polykeops CPU kernel {self.key[:12]} at {self.path}>"


class KernelTable:
    """In-process spec -> kernel dict, with blocking and background builds (thread-safe)."""

    def __init__(self):
        self._init_state()

    def _init_state(self):
        self.lock = threading.Lock()
        self.sources: dict = {}  # spec -> (source, key), memoised
        self.work: dict = {}  # spec -> pairs evaluated so far (auto mode's build trigger)
        self.misses: dict = {}  # key -> time of the last disk lookup that found nothing
        self.kernels: dict = {}
        self.key_locks: dict = {}
        self.pending: set = set()
        self.failures: dict = {}
        self.queue: queue.Queue | None = None
        self.worker: threading.Thread | None = None

    # -- sources and keys ------------------------------------------------
    def source_and_key(self, spec) -> tuple[str, str]:
        memo = (spec, os.environ.get("CC", ""))  # the key names the compiler
        found = self.sources.get(memo)
        if found is not None:
            return found
        src = KernelSource(spec).source()
        found = (src, cache.key_for(src))
        with self.lock:
            if len(self.sources) > 1024:
                self.sources.clear()
            self.sources[memo] = found
        return found

    def add_work(self, spec, pairs: float) -> float:
        """Count ``pairs`` evaluated for ``spec``; returns the total so far."""
        with self.lock:
            total = self.work.get(spec, 0.0) + pairs
            self.work[spec] = total
            return total

    def get_loaded(self, spec):
        return self.kernels.get(spec)

    def failure(self, spec):
        return self.failures.get(spec)

    def _key_lock(self, spec) -> threading.Lock:
        with self.lock:
            lk = self.key_locks.get(spec)
            if lk is None:
                lk = self.key_locks[spec] = threading.Lock()
            return lk

    def load_cached(self, spec):
        """The kernel if it is in memory or valid on disk (no compilation), else None.

        A miss is remembered for a second (then the disk is looked at again: another
        process may have built the kernel meanwhile).
        """
        k = self.kernels.get(spec)
        if k is not None:
            return k
        src, key = self.source_and_key(spec)
        now = time.monotonic()
        if self.misses.get(key, -1e9) > now - 1.0:
            return None
        path = cache.lookup(key)
        if path is None:
            with self.lock:
                if len(self.misses) > 4096:
                    self.misses.clear()
                self.misses[key] = now
            return None
        with self._key_lock(spec):
            k = self.kernels.get(spec)
            if k is None:
                k = CompiledKernel(path, key, cache.paths(key)["src"])
                with self.lock:
                    self.kernels[spec] = k
        return k

    def build(self, spec, background: bool = False):
        """The kernel of ``spec``, compiled now if needed (raises CompileError / CompilerNotFound)."""
        k = self.kernels.get(spec)
        if k is not None:
            return k
        with self._key_lock(spec):
            k = self.kernels.get(spec)
            if k is not None:
                return k
            src, key = self.source_and_key(spec)
            t0 = time.perf_counter()
            path = cache.build(key, src, {"spec": str(spec)}, background=background)
            if config.verbose():
                print(
                    f"[polykeops] CPU kernel for {spec} ready in {time.perf_counter() - t0:.2f} s "
                    f"({'background' if background else 'sync'}): {path}",
                    flush=True,
                )
            k = CompiledKernel(path, key, cache.paths(key)["src"])
            with self.lock:
                self.kernels[spec] = k
                self.failures.pop(spec, None)
            return k

    def build_in_background(self, spec) -> None:
        """Queue a build of ``spec`` on the background thread (once)."""
        with self.lock:
            if spec in self.kernels or spec in self.pending or spec in self.failures:
                return
            self.pending.add(spec)
            if self.worker is None or not self.worker.is_alive():
                self.queue = queue.Queue()
                self.worker = threading.Thread(
                    target=self._work, args=(self.queue,), name="polykeops-cpu-jit", daemon=True
                )
                self.worker.start()
            self.queue.put(spec)

    def _work(self, q: queue.Queue) -> None:
        while True:
            spec = q.get()
            try:
                self.build(spec, background=True)
            except Exception as exc:  # recorded; the generic engine keeps answering
                with self.lock:
                    self.failures[spec] = exc
                if config.verbose():
                    print(f"[polykeops] background build failed for {spec}: {exc}")
            finally:
                with self.lock:
                    self.pending.discard(spec)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no background build is pending (tests and benchmarks)."""

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.01)
        return False

    def forget(self) -> None:
        with self.lock:
            self.kernels.clear()
            self.failures.clear()

    def after_fork(self) -> None:
        """In a forked child: locks may be held by threads that do not exist here, and the
        background worker is gone (its pending builds are forgotten; they are queued again)."""
        kernels, sources, work = self.kernels, self.sources, self.work
        self._init_state()
        self.kernels.update(kernels)
        self.sources.update(sources)
        self.work.update(work)


TABLE = KernelTable()


def forget_loaded() -> None:
    """Forget the in-process kernels (after clean_cache); loaded libraries stay mapped."""
    TABLE.forget()


def _after_fork() -> None:
    TABLE.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
