"""The backend registry.

Selection order: the ``backend=`` argument, else ``POLYKEOPS_BACKEND``, else
automatic (the available backend of highest priority that supports the call:
CUDA for GPU tensors, the CPU engine, then the reference backend).  A backend
named explicitly must work, or the call fails with an error that lists the
available ones; automatic selection falls back quietly.  A device backend
named explicitly also takes host arrays (``capabilities.host_inputs``), and
``"cuda:1"`` names a device (pykeops' ``device_id``, see :func:`device_request`).

Built-in backends are imported only when first needed.  Third parties register
through the entry-point group ``polykeops.backends`` (a zero-argument factory)
or by calling :func:`register_backend`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from difflib import get_close_matches

from .. import config
from ..errors import BackendError
from .contract import Backend, Capabilities

__all__ = [
    "Backend",
    "Capabilities",
    "available",
    "device_request",
    "get_backend",
    "register_backend",
    "select_backend",
    "unregister_backend",
]

#: built-in backends: name -> "module:factory"
_BUILTIN = {
    "reference": "polykeops.backends.reference:ReferenceBackend",
    "cpu": "polykeops.backends.cpu:CpuBackend",
    "cuda": "polykeops.backends.cuda:CudaBackend",
}
#: spellings accepted for pykeops compatibility
_ALIASES = {"CPU": "cpu", "GPU": "cuda", "Reference": "reference", "auto": "auto", "AUTO": "auto"}

_lock = threading.RLock()
_factories: dict[str, Callable[[], object]] = {}
_instances: dict[str, object] = {}
_failures: dict[str, str] = {}
_entry_points_loaded = False


def register_backend(name: str, factory: Callable[[], object], *, replace: bool = False) -> None:
    """Register a backend factory under ``name`` (a zero-argument callable returning a backend)."""
    if not isinstance(name, str) or not name or name == "auto":
        raise BackendError(f"invalid backend name {name!r}")
    with _lock:
        if not replace and (name in _factories or name in _BUILTIN):
            raise BackendError(f"a backend named {name!r} is already registered")
        _factories[name] = factory
        _instances.pop(name, None)
        _failures.pop(name, None)


def unregister_backend(name: str) -> None:
    """Forget a backend added by :func:`register_backend` (or an entry point): its factory and
    any instance or failure recorded for it.  Unknown names are ignored; built-ins cannot be removed."""
    if name in _BUILTIN:
        raise BackendError(f"the built-in backend {name!r} cannot be unregistered")
    with _lock:
        _factories.pop(name, None)
        _instances.pop(name, None)
        _failures.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="polykeops.backends"):
        if ep.name in _factories or ep.name in _BUILTIN:
            continue
        _factories[ep.name] = _deferred(ep)


def _deferred(ep):
    def factory():
        return ep.load()()

    return factory


def _load_path(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def names() -> list[str]:
    """Every known backend name (built-in, registered and from entry points)."""
    with _lock:
        _load_entry_points()
        return sorted(set(_BUILTIN) | set(_factories))


def _instance(name: str):
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _failures:
            return None
        try:
            if name in _factories:
                backend = _factories[name]()
            else:
                backend = _load_path(_BUILTIN[name])()
        except Exception as exc:  # a broken plugin must not break the others
            _failures[name] = f"failed to load: {type(exc).__name__}: {exc}"
            return None
        _instances[name] = backend
        return backend


def _status(name: str) -> tuple[bool, str]:
    backend = _instance(name)
    if backend is None:
        return False, _failures.get(name, "failed to load")
    try:
        ok, reason = backend.availability()
    except Exception as exc:
        return False, f"availability check failed: {type(exc).__name__}: {exc}"
    return bool(ok), reason


def available() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every known backend."""
    return {name: _status(name) for name in names()}


def _canonical_name(requested: str) -> str:
    name = _ALIASES.get(requested, requested)
    known = names()
    if name != "auto" and name not in known:
        close = get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BackendError(
            f"unknown backend {requested!r}.{hint} Known backends: {', '.join(known)}, or 'auto'."
        )
    return name


def get_backend(name: str):
    """The backend called ``name``; raises BackendError if it is unknown or unavailable."""
    name = _canonical_name(name)
    if name == "auto":
        raise BackendError("get_backend needs a backend name, not 'auto'")
    ok, reason = _status(name)
    if not ok:
        raise BackendError(f"backend {name!r} is not available: {reason}. {_summary()}")
    return _instance(name)


def _summary() -> str:
    rows = [f"{n} ({'available' if ok else 'unavailable: ' + why})" for n, (ok, why) in available().items()]
    return "Backends: " + "; ".join(rows) + "."


def split_device(requested: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; a name without a device index -> ``(name, None)``."""
    name, sep, index = requested.rpartition(":")
    if sep and name and index.isdigit():
        return name, int(index)
    return requested, None


def device_request(backend: str | None, device_id) -> str | None:
    """The backend request for pykeops' ``backend=`` and ``device_id=`` arguments.

    ``device_id`` (None or -1: unset) selects the GPU of a backend that takes host inputs
    (the CUDA backend): ``("cuda", 1)`` -> ``"cuda:1"``.  It is ignored with automatic
    selection and with backends that run on the CPU only (as pykeops does without a GPU).
    """
    if device_id is None or device_id == -1 or backend is None:
        return backend
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise BackendError(f"device_id must be a GPU number >= 0 (or -1: the default), got {device_id!r}")
    name = _canonical_name(split_device(backend)[0])
    instance = _instance(name) if name != "auto" else None
    if instance is None or not getattr(instance.capabilities, "host_inputs", False):
        return backend
    return f"{name}:{device_id}"


def select_backend(requested: str | None, spec, array_kind: str, device: str, batched: bool,
                   ranges: bool = False):
    """The backend to run ``spec`` with; see the module docstring for the order.

    A backend named explicitly whose capabilities declare ``host_inputs`` also runs
    host arrays (NumPy, CPU torch): it is returned wrapped by its
    ``for_host_inputs(array_kind, device_id)``, which copies the inputs to its device
    and the outputs back; ``"name:N"`` asks for device ``N``.
    """
    from_env = requested is None
    if from_env:
        requested = config.backend_name()
    requested, device_id = split_device(requested)
    try:
        name = _canonical_name(requested)
    except BackendError as exc:
        if from_env:  # say where the bad name comes from
            raise BackendError(f"POLYKEOPS_BACKEND={requested!r}: {exc}") from None
        raise
    if device_id is not None and name == "auto":
        raise BackendError(f"a device index needs a backend name, not 'auto:{device_id}'")
    if name != "auto":
        backend = get_backend(name)
        caps = backend.capabilities
        if getattr(caps, "host_inputs", False) and (device_id is not None or device not in caps.devices):
            backend = backend.for_host_inputs(array_kind, device_id)
        elif device_id is not None:
            raise BackendError(f"backend {name!r} does not take a device index (got {name}:{device_id})")
        why = backend.capabilities.unsupported(spec, array_kind, device, batched, ranges)
        if why is not None:
            raise BackendError(f"backend {name!r} cannot run {spec}: {why}")
        return backend
    candidates = []
    for other in names():
        backend = _instance(other)
        # capabilities first: a backend that cannot run this call is not probed (the CUDA
        # probe imports torch and loads drivers, seconds that a NumPy call on CPU must not pay)
        if backend is None or backend.capabilities.unsupported(spec, array_kind, device, batched, ranges):
            continue
        ok, _ = _status(other)
        if ok:
            candidates.append(backend)
    if not candidates:
        raise BackendError(
            f"no backend can run {spec} on {array_kind} arrays on {device}. {_summary()}"
        )
    return max(candidates, key=lambda b: b.priority)


def select_backend_name_for_display(lazy) -> str:
    """The backend a reduction of ``lazy`` would use, for ``repr`` (never raises)."""
    try:
        requested, device_id = split_device(config.backend_name())
        name = _canonical_name(requested)
        if name != "auto":
            return name if device_id is None else f"{name}:{device_id}"
        kind = lazy.array_kind or "numpy"
        device = (lazy.device or "cpu").split(":")[0]
        dtype = lazy.dtype_name or "float32"
        best = None
        for other in names():
            ok, _ = _status(other)
            caps = _instance(other).capabilities if ok else None
            if caps and dtype in caps.dtypes and kind in caps.array_kinds and device in caps.devices:
                if best is None or _instance(other).priority > best.priority:
                    best = _instance(other)
        return f"auto ({best.name})" if best else "auto (none available)"
    except Exception as exc:  # repr must not fail
        return f"unknown ({exc})"
