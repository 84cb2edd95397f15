"""The backend registry: which backends exist, loaded on first use.

Built-in backends are imported only when first needed.  Third parties register
through the entry-point group ``polykeops.backends`` (a zero-argument factory)
or by calling :func:`register_backend`; :func:`unregister_backend` removes one.
Choosing a backend for a call is :mod:`polykeops.backends.dispatch`'s job.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from difflib import get_close_matches

from ..errors import BackendError, ConfigError

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


def unregister_backend(name: str) -> None:
    """Forget a backend added by :func:`register_backend` (or an entry point): its factory and
    any instance or failure recorded for it.  Unknown names are ignored; built-ins cannot be removed."""
    if name in _BUILTIN:
        raise BackendError(f"the built-in backend {name!r} cannot be unregistered")
    with _lock:
        _factories.pop(name, None)
        _instances.pop(name, None)
        _failures.pop(name, None)


def instance(name: str):
    """The loaded backend called ``name`` (loading it on first use), or None if it failed to load."""
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


def loaded() -> list:
    """The backends loaded so far in this process (instances, in load order)."""
    with _lock:
        return list(_instances.values())


def status(name: str) -> tuple[bool, str]:
    """``(available, reason)`` of the backend called ``name``."""
    backend = instance(name)
    if backend is None:
        return False, _failures.get(name, "failed to load")
    try:
        ok, reason = backend.availability()
    except ConfigError:  # the user's configuration is wrong: never read as "unavailable"
        raise
    except Exception as exc:
        return False, f"availability check failed: {type(exc).__name__}: {exc}"
    return bool(ok), reason


def available() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every known backend."""
    return {name: status(name) for name in names()}


def canonical_name(requested: str) -> str:
    """The registered name ``requested`` stands for (aliases resolved), or ``"auto"``;
    a BackendError with a "did you mean" hint if there is none."""
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
    name = canonical_name(name)
    if name == "auto":
        raise BackendError("get_backend needs a backend name, not 'auto'")
    ok, reason = status(name)
    if not ok:
        raise BackendError(f"backend {name!r} is not available: {reason}. {summary()}")
    return instance(name)


def summary() -> str:
    """One line on every known backend and whether it is available (for error messages)."""
    rows = [f"{n} ({'available' if ok else 'unavailable: ' + why})" for n, (ok, why) in available().items()]
    return "Backends: " + "; ".join(rows) + "."


