"""Array adapters: the one place that knows the array libraries (NumPy, torch...).

Backends and the front-end core ask here what an array is and how to handle it::

    from polykeops.backends.arrays import adapter_for
    ad = adapter_for(x)            # the adapter of x's kind
    ad.kind, ad.device(x)          # "torch", "cuda:0"
    out = ad.empty((n, 3), "float32", like=x)

A library is imported only when one of its arrays is met (or its adapter is asked for by
name): importing this package imports no array library.  Adding an array kind means adding
one adapter module (an :class:`~.base.Adapter` instance called ``ADAPTER``) and one line
in :data:`ADAPTERS` (or a call to :func:`register`).
"""

from __future__ import annotations

import importlib
import sys

from .base import Adapter

#: kind -> (the library's top-level module, the module holding its ``ADAPTER``)
ADAPTERS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy", "polykeops.backends.arrays.numpy"),
    "torch": ("torch", "polykeops.backends.arrays.torch"),
}

_loaded: dict[str, Adapter] = {}  # kind -> adapter
_by_type: dict[type, Adapter] = {}  # array class -> adapter (filled as arrays are met)


def register(kind: str, library: str, module: str) -> None:
    """Add (or replace) the adapter of ``kind``: the arrays of the top-level module ``library``,
    handled by the ``ADAPTER`` object of the module ``module``."""
    ADAPTERS[kind] = (library, module)
    _loaded.pop(kind, None)
    _by_type.clear()


def kinds() -> list[str]:
    """The known array kinds."""
    return list(ADAPTERS)


def adapter(kind: str) -> Adapter:
    """The adapter of the array kind ``kind`` (``"numpy"``, ``"torch"``...); imports its library."""
    found = _loaded.get(kind)
    if found is not None:
        return found
    if kind not in ADAPTERS:
        raise ValueError(f"unknown array kind {kind!r}; known kinds: {', '.join(ADAPTERS)}")
    found = _loaded[kind] = importlib.import_module(ADAPTERS[kind][1]).ADAPTER
    return found


def find(a) -> Adapter | None:
    """The adapter of the array ``a``, or None if ``a`` is no array of a known kind."""
    t = type(a)
    found = _by_type.get(t)
    if found is not None:
        return found
    for kind, (library, _) in ADAPTERS.items():
        # an array of a library that was never imported cannot exist: no import here
        if library in sys.modules and adapter(kind).owns(a):
            _by_type[t] = found = adapter(kind)
            return found
    return None


def adapter_for(a) -> Adapter:
    """The adapter of the array ``a``; raises TypeError if ``a`` is no array of a known kind."""
    found = find(a)
    if found is None:
        raise TypeError(f"a {type(a).__name__} is not an array of a known kind ({', '.join(ADAPTERS)})")
    return found


def kind_of(a) -> str | None:
    """The kind of the array ``a`` (``"numpy"``, ``"torch"``...), or None."""
    found = find(a)
    return None if found is None else found.kind


__all__ = ["ADAPTERS", "Adapter", "adapter", "adapter_for", "find", "kind_of", "kinds", "register"]
