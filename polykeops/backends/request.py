"""What the user asked for: a backend name and a device, parsed once per call.

:class:`BackendRequest` is built from pykeops' ``backend=`` / ``device_id=``
arguments, or from ``POLYKEOPS_BACKEND`` when no backend is named, by
:meth:`BackendRequest.parse`, at the start of a call.  The front end carries the
parsed value through the call and into every gradient call derived from it, so
the environment is read once and device strings such as ``"cuda:1"`` are split
once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import config
from ..errors import BackendError
from . import registry


@dataclass(frozen=True)
class BackendRequest:
    """A backend name (registered name or ``"auto"``) and an optional device number.

    ``source`` says where the name came from (``"argument"`` or the environment
    variable), for error messages.
    """

    name: str = "auto"
    device_id: int | None = None
    source: str = "argument"

    @classmethod
    def parse(cls, backend=None, device_id=None) -> BackendRequest:
        """The request for pykeops' ``backend=`` and ``device_id=`` arguments.

        ``backend``: None (then ``POLYKEOPS_BACKEND``, default ``"auto"``), a name
        (``"cpu"``, ``"cuda"``, ``"GPU"``...), a name with a device (``"cuda:1"``),
        or a :class:`BackendRequest` (returned as it is).  ``device_id`` (None or -1:
        unset) selects the GPU of a backend that takes host inputs (the CUDA
        backend); it is ignored with automatic selection and with backends that run
        on the CPU only, as pykeops does without a GPU.
        """
        if isinstance(backend, BackendRequest):
            request = backend
        else:
            request = cls._from_text(backend)
        if device_id is None or device_id == -1:
            return request
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise BackendError(f"device_id must be a GPU number >= 0 (or -1: the default), got {device_id!r}")
        if request.name == "auto":
            return request
        backend_obj = registry.instance(request.name)
        if backend_obj is None or not getattr(backend_obj.capabilities, "host_inputs", False):
            return request
        return cls(request.name, device_id, request.source)

    @classmethod
    def _from_text(cls, text) -> BackendRequest:
        source = "argument"
        if text is None:
            text, source = config.backend_name(), "POLYKEOPS_BACKEND"
        if not isinstance(text, str):
            raise BackendError(f"backend must be a name such as 'cpu' or 'cuda', got {text!r}")
        name, device_id = _split_device(text)
        try:
            name = registry.canonical_name(name)
        except BackendError as exc:
            if source != "argument":  # say where the bad name comes from
                raise BackendError(f"{source}={text!r}: {exc}") from None
            raise
        if device_id is not None and name == "auto":
            raise BackendError(f"a device index needs a backend name, not 'auto:{device_id}'")
        return cls(name, device_id, source)

    def __str__(self) -> str:
        return self.name if self.device_id is None else f"{self.name}:{self.device_id}"


def _split_device(text: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; a name without a device index -> ``(name, None)``."""
    name, sep, index = text.rpartition(":")
    if sep and name and index.isdigit():
        return name, int(index)
    return text, None
