"""The CUDA driver through ``cuda.bindings.driver``: devices, modules, launches.

Kernels run in the *primary context* of the device (the one torch uses), on
torch's current stream of that device.  A cubin is loaded once per (device,
source) and kept (``cuModuleLoadData`` per call would leak modules): the
in-memory cache is bounded by the number of distinct specs of the process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

from ...errors import BackendError

_lock = threading.RLock()
_state: dict = {}


def _drv():
    from cuda.bindings import driver

    return driver


def check(result, what: str):
    """Unpack a ``(CUresult, *values)`` tuple, raising BackendError on failure."""
    drv = _drv()
    err = result[0]
    if err != drv.CUresult.CUDA_SUCCESS:
        try:
            name = drv.cuGetErrorName(err)[1].decode()
        except Exception:
            name = str(err)
        raise BackendError(f"CUDA driver call {what} failed: {name}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def init() -> int:
    """Initialise the driver once; returns the number of devices (raises with a precise reason)."""
    with _lock:
        if "count" in _state:
            return _state["count"]
        drv = _drv()
        try:
            res = drv.cuInit(0)
        except Exception as exc:  # libcuda.so itself could not be loaded
            raise BackendError(
                f"no NVIDIA driver: libcuda.so could not be loaded ({type(exc).__name__})"
            ) from exc
        if res[0] == drv.CUresult.CUDA_ERROR_NO_DEVICE:
            raise BackendError("the NVIDIA driver is installed but reports no CUDA GPU")
        check(res, "cuInit")
        count = check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if not count:
            raise BackendError("the NVIDIA driver is installed but reports no CUDA GPU")
        _state["count"] = int(count)
        _state["version"] = int(check(drv.cuDriverGetVersion(), "cuDriverGetVersion"))
        return _state["count"]


def driver_version() -> tuple[int, int]:
    init()
    v = _state["version"]
    return v // 1000, (v % 1000) // 10


@dataclass
class Module:
    """A loaded cubin: its functions and their launch limits."""

    handle: object
    functions: dict = field(default_factory=dict)
    max_threads: dict = field(default_factory=dict)


class Device:
    """One GPU: its primary context, properties and loaded modules."""

    def __init__(self, ordinal: int):
        drv = _drv()
        init()
        self.ordinal = ordinal
        self.handle = check(drv.cuDeviceGet(ordinal), "cuDeviceGet")
        self.context = check(drv.cuDevicePrimaryCtxRetain(self.handle), "cuDevicePrimaryCtxRetain")
        attr = drv.CUdevice_attribute
        get = lambda a: int(check(drv.cuDeviceGetAttribute(a, self.handle), "cuDeviceGetAttribute"))  # noqa: E731
        self.cc = (get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                   get(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
        self.sm_count = get(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.modules: dict[str, Module] = {}
        self._lock = threading.Lock()

    def make_current(self) -> None:
        check(_drv().cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def target(self) -> tuple[str, str]:
        """``(kind, arch)`` that NVRTC compiles for on this device (see :func:`.build.target_for`)."""
        if not hasattr(self, "_target"):
            from .build import target_for

            self._target = target_for(self.cc)
        return self._target

    def module(self, key: str, make_binary, kernel_names) -> Module:
        """The module for ``key`` (built by ``make_binary()`` and loaded once per device)."""
        mod = self.modules.get(key)
        if mod is not None:
            return mod
        with self._lock:
            mod = self.modules.get(key)
            if mod is not None:
                return mod
            drv = _drv()
            self.make_current()
            binary = make_binary()
            handle = check(drv.cuModuleLoadData(binary), "cuModuleLoadData")
            mod = Module(handle)
            attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
            for name in kernel_names:
                fn = check(drv.cuModuleGetFunction(handle, name.encode()), f"cuModuleGetFunction({name})")
                mod.functions[name] = fn
                mod.max_threads[name] = int(check(drv.cuFuncGetAttribute(attr, fn), "cuFuncGetAttribute"))
            self.modules[key] = mod
            return mod


def device(ordinal: int) -> Device:
    with _lock:
        devs = _state.setdefault("devices", {})
        if ordinal not in devs:
            devs[ordinal] = Device(ordinal)
        return devs[ordinal]


_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong}


def pack_params(params) -> tuple[object, list]:
    """A ``void**`` array for cuLaunchKernel from ``[(C type, value), ...]``; keep the list alive."""
    vals = []
    for t, v in params:
        if "*" in t:
            vals.append(ctypes.c_void_p(int(v)))
        else:
            vals.append(_CTYPES[t.replace("const", "").strip()](int(v)))
    arr = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    return arr, vals


class TorchExecutor:
    """Launches on torch's current stream of a device; workspaces are torch tensors."""

    def __init__(self, dev: Device, module: Module, torch_device):
        import torch

        self.torch = torch
        self.dev = dev
        self.module = module
        self.tdev = torch_device
        self.stream = torch.cuda.current_stream(torch_device).cuda_stream
        self.keep = []

    def workspace(self, nf: int, ni: int):
        t = self.torch
        f = t.empty(max(nf, 1), dtype=t.float64, device=self.tdev)
        i = t.empty(max(ni, 1), dtype=t.int64, device=self.tdev)
        self.keep += [f, i]
        return f.data_ptr(), i.data_ptr()

    def upload(self, array):
        """A device copy of an int64 NumPy array (kept alive as long as the executor)."""
        t = self.torch.from_numpy(array).to(self.tdev)
        self.keep.append(t)
        return t.data_ptr()

    def launch(self, name, grid, block, params):
        drv = _drv()
        arr, _vals = pack_params(params)
        fn = self.module.functions[name]
        check(
            drv.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block, 1, 1, 0,
                               drv.CUstream(self.stream), ctypes.addressof(arr), 0),
            f"cuLaunchKernel({name})",
        )
