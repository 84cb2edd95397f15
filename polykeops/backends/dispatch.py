"""The one dispatch point: choose a backend for a call, then evaluate it.

Selection order: the backend the request names (the ``backend=`` argument, else
``POLYKEOPS_BACKEND``), else automatic: the available backend of highest
priority that supports the call (CUDA for GPU tensors, the CPU engine, then the
reference backend).  A backend named explicitly must work, or the call fails
with an error that lists the available ones; automatic selection falls back
quietly.  A device backend named explicitly also takes host arrays
(``capabilities.host_inputs``): it is wrapped by its ``for_host_inputs``, which
copies the inputs to its device (``request.device_id``) and the outputs back.
"""

from __future__ import annotations

from .. import config
from ..errors import BackendError
from . import registry
from .reduction_call import ReductionCall
from .request import BackendRequest


def dispatch(call: ReductionCall, args) -> tuple:
    """Evaluate ``call`` on ``args`` (one array per variable of ``call.spec``) with the backend
    its request selects; returns the backend's outputs as a tuple."""
    config.validate_environment()
    chosen = select_backend(call.request, call.spec, call.array_kind, call.device, bool(call.batch_shape),
                            call.ranges is not None)
    extra = {} if call.ranges is None else {"ranges": call.block_sparse_ranges}
    return tuple(chosen.evaluate(call.spec, args, nx=call.nx, ny=call.ny, batch_shape=call.batch_shape,
                                 **extra))


def dispatch_states(call: ReductionCall, args) -> tuple:
    """The partial state of ``call`` over its j (see :mod:`polykeops.backends.partial_states`),
    from the backend its request selects among those declaring ``capabilities.partial_states``."""
    config.validate_environment()
    chosen = select_backend(call.request, call.spec, call.array_kind, call.device, bool(call.batch_shape),
                            call.ranges is not None, partial=True)
    extra = {} if call.ranges is None else {"ranges": call.block_sparse_ranges}
    own = getattr(chosen, "evaluate_states", None)
    if own is None:  # a structural backend (not a Backend subclass): the contract's default path
        from .partial_states import states_from_outputs

        return states_from_outputs(chosen.evaluate, call.spec, args, nx=call.nx, ny=call.ny,
                                   batch_shape=call.batch_shape, **extra)
    return tuple(own(call.spec, args, nx=call.nx, ny=call.ny, batch_shape=call.batch_shape, **extra))


def select_backend(request, spec, array_kind: str, device: str, batched: bool, ranges: bool = False,
                   partial: bool = False):
    """The backend to run ``spec`` with; see the module docstring for the order.

    ``request`` is a :class:`~polykeops.backends.request.BackendRequest`, or what
    :meth:`BackendRequest.parse` takes (a name such as ``"cuda:1"``, or None).
    """
    request = BackendRequest.parse(request)
    if request.name == "auto":
        return _automatic(spec, array_kind, device, batched, ranges, partial)
    name = request.name
    backend = registry.get_backend(name)
    caps = backend.capabilities
    if getattr(caps, "host_inputs", False) and (request.device_id is not None or device not in caps.devices):
        backend = backend.for_host_inputs(array_kind, request.device_id)
    elif request.device_id is not None:
        raise BackendError(f"backend {name!r} does not take a device index (got {request})")
    why = backend.capabilities.unsupported(spec, array_kind, device, batched, ranges, partial)
    if why is not None:
        raise BackendError(f"backend {name!r} cannot run {spec}: {why}")
    return backend


def _automatic(spec, array_kind, device, batched, ranges, partial=False):
    candidates = []
    for name in registry.names():
        backend = registry.instance(name)
        # capabilities first: a backend that cannot run this call is not probed (the CUDA
        # probe imports torch and loads drivers, seconds that a NumPy call on CPU must not pay)
        if backend is None or backend.capabilities.unsupported(spec, array_kind, device, batched, ranges,
                                                               partial):
            continue
        ok, _ = registry.status(name)
        if ok:
            candidates.append(backend)
    if not candidates:
        raise BackendError(
            f"no backend can run {spec} on {array_kind} arrays on {device}. {registry.summary()}"
        )
    return max(candidates, key=lambda b: b.priority)


def describe_choice(lazy) -> str:
    """The backend a reduction of ``lazy`` would use, for ``repr`` (never raises)."""
    try:
        request = BackendRequest.parse(None)
        if request.name != "auto":
            return str(request)
        kind = lazy.array_kind or "numpy"
        device = (lazy.device or "cpu").split(":")[0]
        dtype = lazy.dtype_name or "float32"
        best = None
        for name in registry.names():
            ok, _ = registry.status(name)
            caps = registry.instance(name).capabilities if ok else None
            if caps and dtype in caps.dtypes and kind in caps.array_kinds and device in caps.devices:
                if best is None or registry.instance(name).priority > best.priority:
                    best = registry.instance(name)
        return f"auto ({best.name})" if best else "auto (none available)"
    except Exception as exc:  # repr must not fail
        return f"unknown ({exc})"
