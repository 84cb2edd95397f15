"""Backends: the registry, the backend request and the one dispatch point.

* :mod:`~polykeops.backends.contract`: what a backend is (:class:`Backend`, :class:`Capabilities`);
* :mod:`~polykeops.backends.registry`: which backends exist (built-in, registered, entry points);
* :mod:`~polykeops.backends.request`: :class:`BackendRequest`, the user's ``backend=`` /
  ``device_id=`` / ``POLYKEOPS_BACKEND``, parsed once per call;
* :mod:`~polykeops.backends.reduction_call`: :class:`ReductionCall`, one call's canonical spec,
  sizes, ranges and request;
* :mod:`~polykeops.backends.dispatch`: :func:`dispatch` (select a backend, evaluate).

Built-in backends are imported only when first needed.  Third parties register
through the entry-point group ``polykeops.backends`` (a zero-argument factory)
or by calling :func:`register_backend`.
"""

from __future__ import annotations

from .contract import Backend, Capabilities
from .dispatch import describe_choice, dispatch, dispatch_states, select_backend
from .reduction_call import ReductionCall
from .registry import (
    available,
    canonical_name,
    get_backend,
    instance,
    loaded,
    names,
    register_backend,
    status,
    unregister_backend,
)
from .request import BackendRequest

__all__ = [
    "Backend",
    "BackendRequest",
    "Capabilities",
    "ReductionCall",
    "available",
    "canonical_name",
    "device_request",
    "dispatch",
    "dispatch_states",
    "describe_choice",
    "get_backend",
    "instance",
    "loaded",
    "names",
    "register_backend",
    "select_backend",
    "status",
    "unregister_backend",
]


def device_request(backend: str | None, device_id) -> str | None:
    """pykeops' ``backend=`` and ``device_id=`` as one backend name (``("cuda", 1)`` -> ``"cuda:1"``).

    The string form of :meth:`BackendRequest.parse`, kept for callers that pass
    backend names around; None stays None (automatic selection, decided at call time).
    """
    if backend is None:
        BackendRequest.parse("auto", device_id)  # validates device_id
        return None
    return str(BackendRequest.parse(backend, device_id))
