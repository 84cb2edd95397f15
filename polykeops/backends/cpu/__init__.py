"""The CPU engine: blocked, SIMD-vectorised, OpenMP-parallel map-reduce (Cython + C).

One driver (``_driver.pyx``, Cython, OpenMP ``prange`` over work items) runs two kinds of
engines (``include/pk_engine.h``) on one prepared call (:class:`~.call.PreparedCall`):

* the **generic engine** (``_generic``/``_generic_avx2``/``_generic_avx512``, Cython
  extensions compiled when the package is built): interprets a compact op program of the
  formula over (i-block x j-tile) buffers; it answers any new formula at once;
* **specialised kernels**: C generated for one spec (formula inlined, sizes fixed) by
  :mod:`.kernel_source`, inlined in a Cython module (:mod:`.kernel_module`) that Cython and
  the system C compiler turn into an extension module, cached on disk (:mod:`.cache`) and
  imported.

``POLYKEOPS_JIT`` chooses how they are used:

* ``auto`` (default): a spec whose kernel is in memory or in the disk cache
  runs it; otherwise the generic engine answers, and once a spec has done
  enough work to be worth it (:data:`JIT_WORK_THRESHOLD` pairs in total; a
  10k x 10k call qualifies at once) its kernel is built on a background thread
  and swapped in for later calls; a long call (:data:`SWITCH_PAIRS` pairs) starts
  the build at once and its remaining work items move to the kernel when it is ready;
* ``sync``: build the kernel first, then run it (compiler errors are raised,
  with the generated source path and the compiler log);
* ``off``: never compile; the generic engine answers everything.

Without the generic engine, ``auto`` compiles a spec's kernel before its first call
(as ``sync`` does); with neither engine usable (no generic engine and no compiler,
or no generic engine and ``POLYKEOPS_JIT=off``) the backend reports itself
unavailable, so that automatic selection uses another backend and a request for
``backend="cpu"`` fails with the reason.

Float16 inputs are computed in float32 (accumulating in ``dtype_acc``) and the
results rounded back to float16.  Formulas with an op that neither engine knows
(a third-party op) are declared unsupported in :attr:`CpuBackend.capabilities`,
so automatic selection uses the reference backend for them.  The backend never
calls another backend itself.
"""

from __future__ import annotations

import functools
import warnings

from ... import config
from ...errors import BackendError, CacheUnavailable
from ...formula.nodes import walk
from ...formula.spec import LOW_PRECISION
from ..arrays import adapter_for
from ..codegen import CRenderer
from ..contract import Backend, Capabilities
from . import call, compiler, kernels

#: pairs (i, j) evaluated by one spec, in total, before ``auto`` builds its kernel
JIT_WORK_THRESHOLD = 2e7
#: a call of at least this many pairs on the generic engine (``auto``, kernel not built yet) starts
#: the build of its kernel at once and moves its remaining work items to the kernel when it is ready
SWITCH_PAIRS = 3e9


class CpuBackend(Backend):
    name = "cpu"
    priority = 10

    def __init__(self):
        from . import generic

        self.generic = generic
        ops = CRenderer.supported_ops()
        self.capabilities = Capabilities(
            dtypes=frozenset({"float16", "bfloat16", "float32", "float64"}),
            array_kinds=frozenset({"numpy", "torch"}),
            devices=frozenset({"cpu"}),
            batch=True,
            ranges=True,
            partial_states=True,
            reductions=None,
            ops=frozenset(ops),  # the C renderer's rules (SoftDTW has none: reference backend)
            notes=(
                "float16 and bfloat16 are computed in float32 (converted on the way in and out)",
                "sum_scheme='direct_sum' uses the block (tile) summation of 'block_sum'",
            ),
        )
        self._warned = set()

    # -- availability -----------------------------------------------------
    def compiler_status(self) -> tuple[bool, str]:
        try:
            ident = compiler.compiler_identity()
            compiler.cython_identity()
            compiler.python_include()
        except compiler.CompilerNotFound as exc:
            return False, str(exc)
        return True, ident

    def availability(self):
        if kernels.driver() is None:
            return False, (
                "the CPU engine's driver (the Cython extension _driver) is not built: run "
                "`pip install -e .` (or `python setup.py build_ext --inplace`)"
            )
        gen_ok, gen_why = self.generic.available()
        cc_ok, cc_why = self.compiler_status()
        mode = config.jit_mode()
        if gen_ok and cc_ok:
            return True, f"generic engine + specialised kernels (JIT {mode}; {cc_why.split(' ', 1)[-1]})"
        if gen_ok:
            return True, f"generic engine only; specialised kernels are off: {cc_why}"
        if cc_ok and mode == "off":
            return False, (
                f"POLYKEOPS_JIT=off and the generic engine is not built ({gen_why}): "
                "run `pip install -e .` to build it, or allow compiled kernels"
            )
        if cc_ok:
            return True, (
                f"specialised kernels only (JIT {mode}, compiled before a formula's first call); "
                f"the generic engine is not built ({gen_why}): run `pip install -e .` to build it"
            )
        return False, f"no generic engine ({gen_why}) and no C compiler ({cc_why})"

    # -- evaluation -------------------------------------------------------
    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        batch_shape = tuple(batch_shape)
        work_spec = spec
        half = spec.dtype in LOW_PRECISION
        ad = adapter_for(args[0]) if args else None
        if half:
            acc = spec.dtype_acc if spec.dtype_acc in ("float32", "float64") else "float32"
            work_spec = spec.with_(dtype="float32", dtype_acc=acc)
            args = [ad.astype(a, "float32") for a in args]
        args = [ad.contiguous(a) for a in args]
        pairs = float(nx) * float(ny) * float(max(1, _prod(batch_shape)))
        engine, build_later = self._engine(work_spec, pairs)
        rows = getattr(engine, "range_rows", engine.block_rows) if ranges is not None else engine.block_rows
        prepared = call.prepare(
            work_spec, args, nx, ny, batch_shape, call.default_threads(), ranges=ranges, block_rows=rows
        )
        switch = None
        if build_later and pairs >= SWITCH_PAIRS:  # a long call: build now, switch when ready
            switch = kernels.driver().Switch()
            kernels.TABLE.build_in_background(work_spec, switch=switch)
            build_later = False
        try:
            engine.run(prepared, switch)
        finally:
            if switch is not None:
                kernels.TABLE.call_done(work_spec, switch)
        if build_later:  # after the call: the compiler must not slow down the answer
            kernels.TABLE.build_in_background(work_spec)
        outs = prepared.outputs
        if half:
            outs = tuple(
                adapter_for(r).astype(r, spec.dtype) if o.kind == "float" else r
                for o, r in zip(spec.outputs(), outs)
            )
        return outs

    def _engine(self, spec, pairs: float):
        """``(engine, build_later)``: what runs ``spec`` now, and whether to queue a background
        build of its kernel once this call is answered."""
        mode = config.jit_mode()
        table = kernels.TABLE
        gen = self.generic.engine_for(spec)
        if mode == "off":
            return _usable(gen, mode), False
        if gen is not None and _node_count(spec) > JIT_MAX_NODES:  # the compiler would take minutes
            if mode == "sync":
                self._warn_once(("huge", spec), f"polykeops: a formula of more than {JIT_MAX_NODES} "
                                "operations runs on the generic engine even with POLYKEOPS_JIT=sync "
                                "(compiling it would take minutes and gigabytes)")
            return gen, False
        if mode == "sync":
            try:
                return table.build(spec), False
            except compiler.CompilerNotFound:
                self._warn_once("nocc", "no C compiler: POLYKEOPS_JIT=sync falls back to the generic engine")
                return _usable(gen, mode), False
        # auto
        kernel = table.get_loaded(spec)
        if kernel is not None:
            return kernel, False
        if not self.compiler_status()[0]:  # (cache keys name the compiler: none, no key)
            return _usable(gen, mode), False
        kernel = table.load_cached(spec)
        if kernel is not None:
            return kernel, False
        failure = table.failure(spec)
        if failure is not None:
            if not isinstance(failure, CacheUnavailable):  # (the cache has said so once, with its path)
                self._warn_once(
                    ("fail", spec),
                    f"polykeops: specialised CPU kernel unavailable, using the generic engine: {failure}",
                )
            return _usable(gen, mode), False
        hot = table.add_work(spec, pairs) >= JIT_WORK_THRESHOLD
        if gen is not None:
            return gen, hot
        return table.build(spec), False  # no generic engine: compile now

    def _warn_once(self, key, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def clean_cache(self) -> list[str]:
        """Delete the compiled kernels on disk (:mod:`.cache`) and forget those loaded in this
        process (they stay mapped for callers holding them; new ones are rebuilt on demand);
        returns the removed folders."""
        from . import cache

        removed = cache.clean()
        kernels.forget_loaded()
        return removed

    def wait_for_builds(self, timeout: float = 120.0) -> bool:
        """Block until background builds are done (for benchmarks and tests)."""
        return kernels.TABLE.wait_idle(timeout)


def _usable(engine, mode: str):
    """``engine``, which must exist: the backend declared itself unavailable otherwise."""
    if engine is None:
        raise BackendError(
            f"the CPU backend has no engine for this call (POLYKEOPS_JIT={mode}, no generic engine, "
            "no compiled kernel); see polykeops.check_health()"
        )
    return engine


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


__all__ = ["CpuBackend", "JIT_WORK_THRESHOLD", "SWITCH_PAIRS"]


#: formulas with more distinct nodes than this run on the generic engine, in POLYKEOPS_JIT=auto
#: and sync modes (their specialised kernel would be one huge C function: minutes and gigabytes
#: of gcc)
JIT_MAX_NODES = 1500


@functools.lru_cache(maxsize=1024)
def _node_count(spec) -> int:
    """Distinct nodes of ``spec``'s formulas (asked at every call: memoised per spec)."""
    return len({n for f in spec.formulas for n in walk(f)})
