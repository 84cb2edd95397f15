"""Specialised CPU kernels in this process: loading, background builds, fork handling.

Specialised kernels are Cython extension modules from :mod:`.cache` (one per spec,
rendered by :mod:`.kernel_module`); the driver maps each library and takes its engine
(``_driver.load_engine``: a capsule that owns the library), which runs in the shared driver
(``_driver.run_kernel``, which releases the GIL during the call).
:data:`TABLE` maps each spec to its loaded kernel (guarded by a lock), least recently used
first: past ``POLYKEOPS_MAX_KERNELS`` the oldest is dropped, and its library is unmapped once
no running call holds it.  A cached library that the loader rejects is deleted and built
again.  Background builds run on one daemon thread.
After ``fork`` the child forgets pending builds and recreates its locks (see
:meth:`KernelTable.after_fork`).  :func:`forget_loaded` empties the table (after the
disk cache is cleaned).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict

from ... import config
from . import cache
from .call import PreparedCall
from .compiler import CompileError
from .kernel_module import module_source
from .kernel_source import KernelWriter
from .omp import driver  # (re-exported: the Cython driver module, or None)


class CompiledKernel:
    """A loaded specialised kernel: the capsule of its engine, which owns the mapped library
    (unmapped when the last reference goes).  Raises OSError when the loader rejects it."""

    def __init__(self, path, key: str, source_path=None):
        self.path = str(path)
        self.key = key
        self.source_path = source_path
        self._driver = driver()
        self.capsule = self._driver.load_engine(self.path)
        info = self._driver.engine_info(self.capsule)
        self.block_rows = int(info["bi"])
        self.range_rows = int(info["bir"])  # rows of a block-sparse work item

    def run(self, prepared: PreparedCall, switch=None) -> None:
        self._driver.run_kernel(self.capsule, prepared, switch)

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
        self.kernels: OrderedDict = OrderedDict()  # spec -> CompiledKernel, least recently used first
        self.key_locks: dict = {}
        self.pending: set = set()
        self.failures: dict = {}
        self.queue: queue.Queue | None = None
        self.worker: threading.Thread | None = None
        self.switches: dict = {}  # spec -> [_driver.Switch] of calls waiting for its kernel
        self.switched_items = 0  # work items that running calls moved to a fresh kernel (diagnostics)

    # -- sources and keys ------------------------------------------------
    def source_and_key(self, spec) -> tuple[str, str]:
        memo = (spec, os.environ.get("CC", ""))  # the key names the compiler
        found = self.sources.get(memo)
        if found is not None:
            return found
        src = module_source(KernelWriter(spec).source())  # the .pyx of the kernel's module
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
        k = self.kernels.get(spec)
        if k is not None:
            try:
                self.kernels.move_to_end(spec)
            except KeyError:  # dropped meanwhile by another thread: this call still holds it
                pass
        return k

    def _add(self, spec, k) -> None:
        """Put ``k`` in the table (lock held), dropping the least recently used past the cap."""
        self.kernels[spec] = k
        self.kernels.move_to_end(spec)
        cap = config.max_kernels()
        while len(self.kernels) > cap:
            self.kernels.popitem(last=False)
        self.failures.pop(spec, None)

    def _load(self, spec, key: str, path):
        """Load the library at ``path`` into the table; None (and the artifact deleted) when
        the loader rejects it."""
        try:
            k = CompiledKernel(path, key, cache.paths(key)["pyx"])
        except OSError as exc:
            cache.discard(key)
            if config.verbose():
                print(f"[polykeops] deleted the CPU kernel {path}, which the loader rejects: {exc}",
                      flush=True)
            return None
        with self.lock:
            self._add(spec, k)
        return k

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
                k = self._load(spec, key, path)  # None: deleted, the caller builds it again
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
            k = self._load(spec, key, path)
            if k is None:  # a cached library the loader rejects: deleted; build it again, once
                path = cache.build(key, src, {"spec": str(spec)}, background=background)
                k = self._load(spec, key, path)
                if k is None:
                    raise CompileError(f"the CPU kernel for {spec} was compiled but cannot be loaded; "
                                       f"run with POLYKEOPS_VERBOSE=1 for the loader's message")
            return k

    def build_in_background(self, spec, switch=None) -> None:
        """Queue a build of ``spec`` on the background thread (once).

        ``switch`` (a ``_driver.Switch`` of a call running now) is offered the kernel when it is
        ready; such builds run at normal priority (the call waits for them), others under ``nice``.
        """
        with self.lock:
            k = self.kernels.get(spec)
            if k is not None:
                if switch is not None:
                    switch.offer(k.capsule)
                return
            if switch is not None:
                self.switches.setdefault(spec, []).append(switch)
            if spec in self.pending or spec in self.failures:
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
                with self.lock:
                    urgent = bool(self.switches.get(spec))
                k = self.build(spec, background=not urgent)
                with self.lock:
                    for sw in self.switches.pop(spec, ()):
                        sw.offer(k.capsule)
            except Exception as exc:  # recorded; the generic engine keeps answering
                with self.lock:
                    self.failures[spec] = exc
                if config.verbose():
                    print(f"[polykeops] background build failed for {spec}: {exc}")
            finally:
                with self.lock:
                    self.pending.discard(spec)
                    self.switches.pop(spec, None)

    def call_done(self, spec, switch) -> None:
        """A call that registered ``switch`` is over: forget it, count the items it moved."""
        with self.lock:
            waiting = self.switches.get(spec)
            if waiting and switch in waiting:
                waiting.remove(switch)
            self.switched_items += switch.taken

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
