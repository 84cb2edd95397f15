"""Host inputs for the CUDA backend: NumPy arrays and CPU torch tensors, copied to a GPU and back.

When a reduction names the CUDA backend explicitly (``backend="cuda"``, pykeops'
``"GPU"``) on host arrays, the registry runs it through :class:`HostInputs`
(see :func:`polykeops.backends.select_backend`):

* the arguments are copied to the GPU chosen by ``device_id`` (pykeops' argument;
  the backend request ``"cuda:<id>"``), else torch's current CUDA device;
* the kernels run there, on outputs allocated by torch;
* the outputs come back as the caller's type on the caller's device: NumPy arrays
  for NumPy inputs, CPU tensors for CPU tensors.

Under torch autograd nothing else is needed: :mod:`polykeops.torch.autograd`
calls the selected backend for the forward pass and for every gradient
reduction with the (CPU) tensors it holds, so the backward reductions run on the
GPU too and the gradients come back on the CPU.  CUDA tensors pass through
unchanged (``device_id``, when given, must then be their device).  Block-sparse
``ranges`` stay where they are: the backend reads them on the host anyway.

The copies are made by a :class:`Transfers` object, which tests replace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import DeviceError
from ..arrays import adapter, adapter_for

__all__ = ["HostInputs", "Placement", "Transfers", "placement"]


@dataclass(frozen=True)
class Placement:
    """Where a reduction's inputs live and where it runs."""

    origin: str  # "cpu" (CPU torch tensors), another host kind ("numpy") or "cuda" (CUDA tensors: no copy)
    device_id: int | None  # the GPU to run on (None: torch's current device)

    @property
    def copies(self) -> bool:
        return self.origin != "cuda"


def placement(args, array_kind: str, device_id: int | None) -> Placement:
    """Where the inputs ``args`` (of the front end's ``array_kind``) live, and the GPU to use.

    Raises :class:`DeviceError` for inputs on several devices, or CUDA tensors on
    another GPU than ``device_id``.
    """
    kinds = set()
    for pos, a in enumerate(args):
        ad = adapter_for(a)
        device, _, index = ad.device(a).partition(":")
        if device == "cpu":  # host memory: CPU torch tensors, or arrays of another kind
            kinds.add(("cpu" if ad.kind == "torch" else ad.kind, None))
        elif device == "cuda":
            kinds.add(("cuda", int(index) if index else None))
        else:
            raise DeviceError(
                f"argument {pos} is on {ad.device(a)}: the CUDA backend takes CPU or CUDA tensors"
            )
    if not kinds:
        kinds = {("numpy", None) if array_kind == "numpy" else ("cpu", None)}
    if len(kinds) > 1:
        where = ", ".join(k if i is None else f"{k}:{i}" for k, i in sorted(kinds, key=str))
        raise DeviceError(
            f"the arguments of one reduction are on several devices ({where}); put them on one device"
        )
    ((origin, index),) = kinds
    if origin == "cuda":
        if device_id is not None and index is not None and index != device_id:
            raise DeviceError(
                f"device_id={device_id} but the tensors are on cuda:{index}: move them with "
                f".to('cuda:{device_id}') or leave device_id out"
            )
        return Placement("cuda", index if index is not None else device_id)
    return Placement(origin, device_id)


class Transfers:
    """Copies between the host and a GPU, with torch (tests substitute fakes)."""

    @staticmethod
    def device(device_id: int | None):
        import torch

        if device_id is None:
            return torch.device("cuda", torch.cuda.current_device())
        count = torch.cuda.device_count()
        if not 0 <= device_id < count:
            raise DeviceError(f"device_id={device_id}, but torch sees {count} CUDA device(s)")
        return torch.device("cuda", device_id)

    @staticmethod
    def current(device):
        """A context in which ``device`` is torch's current CUDA device."""
        import torch

        return torch.cuda.device(device)

    @staticmethod
    def to_device(a, device):
        ad = adapter_for(a)
        if ad.kind != "torch":
            a = adapter("torch").from_host(ad.to_host(a))
        return a.to(device)

    @staticmethod
    def to_origin(t, origin: str):
        """The output ``t`` (a CUDA tensor) where the inputs came from (see :class:`Placement`)."""
        t = t.cpu()
        return t if origin == "cpu" else adapter(origin).from_host(adapter_for(t).to_host(t))


class HostInputs:
    """A device backend (``backend``) that also takes host inputs, bound to one ``device_id``.

    It follows the backend contract; its capabilities are the backend's, with the
    array kinds NumPy and torch and the devices CPU and CUDA.
    """

    def __init__(self, backend, array_kind: str, device_id: int | None = None, transfers=None):
        self.backend = backend
        self.array_kind = array_kind
        self.device_id = device_id
        self.transfers = transfers or Transfers()
        self.name = backend.name
        self.priority = backend.priority
        self.capabilities = dataclasses.replace(
            backend.capabilities,
            array_kinds=frozenset({"numpy", "torch"}),
            devices=frozenset({"cpu", "cuda"}),
        )

    def availability(self):
        return self.backend.availability()

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        where = placement(args, self.array_kind, self.device_id)
        extra = {} if ranges is None else {"ranges": ranges}
        if not where.copies:
            return self.backend.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, **extra)
        tr = self.transfers
        device = tr.device(where.device_id)
        on_device = [tr.to_device(a, device) for a in args]
        with tr.current(device):  # also the device of a reduction without arguments
            outs = self.backend.evaluate(spec, on_device, nx=nx, ny=ny, batch_shape=batch_shape, **extra)
        return tuple(tr.to_origin(o, where.origin) for o in outs)

    def __repr__(self) -> str:
        where = "current device" if self.device_id is None else f"device {self.device_id}"
        return f"<polykeops backend {self.name!r} for host inputs, {where}>"
