"""The CUDA backend: kernels rendered from the formula, compiled by NVRTC, launched with cuda-python.

Pipeline (one reduction):

1. :mod:`.kernel_source` renders CUDA C for the canonical spec with the shared C
   renderer (:class:`.render.CudaRenderer`): a map-reduce kernel per output
   slice (1D scheme, or 2D with a combine kernel) -- see that module;
2. :mod:`.build` compiles it with NVRTC (``cuda.bindings.nvrtc``, the library
   from the ``nvidia-cuda-nvrtc`` wheel: no CUDA toolkit) into a cubin for the
   device's exact architecture, cached on disk (:mod:`.cache`);
3. :mod:`.driver` loads the cubin once per device (``cuModuleLoadData``) and
   launches the kernels with ``cuLaunchKernel`` on torch's current stream, on
   the torch CUDA tensors in place; outputs are allocated by torch.

Block-sparse ``ranges`` run the block-sparse variant of the 1D kernels: one CUDA
block per group of rows of one i-range, looping over that range's j intervals
only (:mod:`.ranges`); rows that no interval reaches hold the reduction of
nothing.  Named explicitly (``backend="cuda"``), the backend also takes NumPy
arrays and CPU tensors: :meth:`CudaBackend.for_host_inputs` (:mod:`.host_inputs`)
copies them to the GPU given by ``device_id`` and the results back.

Nothing is imported or initialised before the backend is used: ``import
polykeops`` never touches CUDA, and :meth:`CudaBackend.availability` says
precisely what is missing (cuda-python, the NVRTC library, the driver, a GPU,
torch).  ``python -m polykeops.backends.cuda compile ...`` compiles one
reduction without a GPU and prints its register and shared-memory use.
"""

from __future__ import annotations

import contextlib
import math
import threading

from ...errors import BackendError, DeviceError, DTypeError
from ..contract import Backend, Capabilities
from .render import CudaRenderer

__all__ = ["CudaBackend"]

_TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64")


class CudaBackend(Backend):
    """Reductions of torch CUDA tensors with NVRTC-compiled kernels (block-sparse ``ranges``
    included; host inputs through :meth:`for_host_inputs`)."""

    name = "cuda"
    priority = 20
    capabilities = Capabilities(
        dtypes=frozenset(_TORCH_DTYPES),
        array_kinds=frozenset({"torch"}),
        devices=frozenset({"cuda"}),
        batch=True,
        ops=frozenset(CudaRenderer().supported_ops()),  # the ops the shared C renderer can write
        ranges=True,
        partial_states=True,
        host_inputs=True,
        notes=("NVRTC cubins cached on disk; 1D/2D schemes; float16 and bfloat16 with float32 accumulation",
               "block-sparse ranges: one block per (i-range, row block), 1D scheme"),
    )

    def __init__(self):
        self._availability = None
        self._lock = threading.Lock()
        self._loaded: dict = {}

    # ------------------------------------------------------------------
    def availability(self) -> tuple[bool, str]:
        """Whether this machine can run the backend, and if not, exactly what is missing (cached)."""
        with self._lock:
            if self._availability is None:
                self._availability = _probe()
            return self._availability

    def for_host_inputs(self, array_kind: str, device_id: int | None = None):
        """This backend for NumPy arrays and CPU tensors, copied to GPU ``device_id`` (None:
        torch's current device) and back (see :mod:`.host_inputs`)."""
        from .host_inputs import HostInputs

        return HostInputs(self, array_kind, device_id)

    def clean_cache(self) -> list[str]:
        """Delete the compiled binaries on disk (:mod:`.cache`); returns the removed folders.
        Modules already loaded on a GPU stay loaded."""
        from . import cache

        return cache.clean()

    # ------------------------------------------------------------------
    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        import torch

        from . import driver
        from .launch import plan_launch, run_reduction
        from .ranges import block_map, empty_outputs

        ok, why = self.availability()
        if not ok:
            raise BackendError(f"the CUDA backend is not available: {why}")
        batch_shape = tuple(int(b) for b in batch_shape)
        tdev = _device_of(args)
        dtype = getattr(torch, spec.dtype)
        for pos, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                raise DTypeError(f"argument {pos} is a {type(a).__name__}, not a torch tensor")
            if a.device != tdev:
                raise DeviceError(
                    f"argument {pos} is on {a.device}, argument 0 on {tdev}: put all the "
                    "arguments of a reduction on one GPU"
                )
            if a.dtype != dtype:
                raise DTypeError(f"argument {pos} has dtype {a.dtype}, the reduction {spec.dtype}")
        args = [a.contiguous() for a in args]
        outs = [
            torch.empty(batch_shape + (nx, o.dim), dtype=torch.int64 if o.kind == "index" else dtype,
                        device=tdev)
            for o in spec.outputs()
        ]
        nbatch = math.prod(batch_shape) if batch_shape else 1
        if ranges is not None:  # rows that no j interval reaches hold the reduction of nothing
            for o, fill in zip(outs, empty_outputs(spec)):
                o[...] = torch.tensor(fill, dtype=o.dtype, device=tdev)
        if nx == 0 or nbatch == 0:
            return tuple(outs)
        idx64 = ny >= 2**31 - 1
        ordinal = tdev.index if tdev.index is not None else (
            torch.cuda.current_device() if tdev.type == "cuda" else 0)
        ks, dev, mod, max_threads = self._kernels(spec, len(batch_shape), idx64, ordinal,
                                                  ranges is not None)
        bmap = None
        if ranges is not None:
            bmap = block_map(ranges, batch_shape, nx, ny, min(ks.block, max_threads))
            plan = bmap.plan(ny)
        else:
            plan = plan_launch(nx, ny, nbatch, tile_j=ks.tile_j, block=ks.block,
                               max_threads=max_threads, sm_count=dev.sm_count)
        with torch.cuda.device(tdev) if tdev.type == "cuda" else contextlib.nullcontext():
            dev.make_current()
            executor = driver.TorchExecutor(dev, mod, tdev)
            run_reduction(ks, executor, [a.data_ptr() for a in args], [tuple(a.shape) for a in args],
                          [o.data_ptr() for o in outs], nx=nx, ny=ny, batch_shape=batch_shape, plan=plan,
                          block_map=bmap)
        return tuple(outs)

    def _kernels(self, spec, n_batch_dims, idx64, ordinal, ranges=False):
        """(kernel source, device, loaded module, max threads per block), memoised per device."""
        key = (spec, n_batch_dims, idx64, ordinal, ranges)
        hit = self._loaded.get(key)
        if hit is not None:
            return hit
        from . import build, driver

        dev = driver.device(ordinal)
        kind, arch = dev.target()
        ks = build.kernel_source(spec, n_batch_dims, idx64, ranges, arch)
        mod = dev.module(f"{kind}:{arch}:{ks.digest}",
                         lambda: build.build(ks.source, arch, kind).binary, ks.kernel_names)
        max_threads = min(mod.max_threads[s.main] for s in ks.slices)
        hit = (ks, dev, mod, max_threads)
        with self._lock:
            self._loaded[key] = hit
        return hit


def _device_of(args):
    import torch

    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cuda":
                raise DeviceError(
                    f"the CUDA backend takes CUDA tensors; got a tensor on {a.device} "
                    "(move the data with .cuda(), or use another backend)"
                )
            return a.device
    return torch.device("cuda", torch.cuda.current_device())


def _probe() -> tuple[bool, str]:
    """What the backend needs, checked in order, without side effects beyond cuInit."""
    try:
        import cuda.bindings.driver  # noqa: F401
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError as exc:
        return False, f"cuda-python is not installed (pip install 'polykeops[cuda]'): {exc}"
    from . import nvrtc

    try:
        major, minor = nvrtc.version()
    except BackendError as exc:
        return False, str(exc)
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "torch is not installed (the CUDA backend works on torch CUDA tensors)"
    from . import driver

    try:
        count = driver.init()
        dmaj, dmin = driver.driver_version()
    except BackendError as exc:
        return False, str(exc)
    return True, f"{count} GPU(s), driver CUDA {dmaj}.{dmin}, NVRTC {major}.{minor}"
