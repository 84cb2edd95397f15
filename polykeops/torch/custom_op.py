"""Reductions as a PyTorch custom operator, for ``torch.compile`` and ``torch.export``.

``torch.ops.polykeops.reduce(spec, nx, ny, batch, backend, device_id, args)``
evaluates one canonical reduction: ``spec`` is the exact text of the
:class:`~polykeops.formula.spec.ReductionSpec` (:mod:`polykeops.formula.serial`),
the sizes are (symbolic) ints, ``backend``/``device_id`` the parsed request and
``args`` the normalised argument tensors; it returns the spec's outputs.  No
Python object crosses the operator's boundary, so a compiled graph holds one
opaque node per reduction, and an exported program can be saved and reloaded.

* the fake implementation gives the output shapes and dtypes (symbolic sizes
  flow through it: changing M or N does not recompile);
* autograd is registered on the operator (by :mod:`polykeops.torch.autograd`, which holds
  the gradient rules of both paths): the backward evaluates the symbolic
  gradient reductions (:mod:`polykeops.formula.reduction_grads`) with the same
  operator, so a compiled training step holds the gradient reductions as opaque
  nodes too.  That backward is itself differentiable (second order works through the
  operator eagerly; a graph compiled by AOTAutograd is differentiated once).

The eager front end keeps :class:`polykeops.torch.autograd.GenredFunction`
(forward mode, ``torch.vmap``); :func:`traced` decides which path a call takes.
"""

from __future__ import annotations

import torch

from ..backends.arrays import adapter
from ..backends.dispatch import dispatch
from ..backends.reduction_call import ReductionCall
from ..backends.request import BackendRequest
from ..formula.serial import spec_from_text, spec_to_text

#: value-selection reductions -> the variant that also returns the indices (for the gradient;
#: the variants map to themselves)
WITH_INDICES = {
    "Min": "Min_ArgMin",
    "Max": "Max_ArgMax",
    "KMin": "KMin_ArgKMin",
    "Min_ArgMin": "Min_ArgMin",
    "Max_ArgMax": "Max_ArgMax",
    "KMin_ArgKMin": "KMin_ArgKMin",
}


def traced(args) -> bool:
    """Whether a reduction is being traced (``torch.compile``, ``torch.export``, fake tensors):
    it must then go through the custom operator, which tracing records without running it."""
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return any(is_fake(a) for a in args)


def op_call(spec: str, nx, ny, batch, backend: str, device_id: int, args) -> ReductionCall:
    """The :class:`ReductionCall` of the operator's arguments."""
    request = BackendRequest(backend, None if device_id < 0 else device_id)
    device = args[0].device.type if args else "cpu"
    return ReductionCall(spec_from_text(spec), nx, ny, batch_shape=tuple(batch), request=request,
                         array_kind="torch", device=device)


@torch.library.custom_op("polykeops::reduce", mutates_args=())
def reduce_op(spec: str, nx: int, ny: int, batch: list[int], backend: str, device_id: int,
              args: list[torch.Tensor]) -> list[torch.Tensor]:
    """One canonical reduction (see the module docstring)."""
    call = op_call(spec, nx, ny, batch, backend, device_id, args)
    return list(dispatch(call, list(args)))


@reduce_op.register_fake
def _reduce_fake(spec, nx, ny, batch, backend, device_id, args):
    s = spec_from_text(spec)
    ref = args[0]
    dtype = adapter("torch").dtype(s.dtype)
    return [ref.new_empty((*batch, nx, o.dim), dtype=torch.int64 if o.kind == "index" else dtype)
            for o in s.outputs()]


def op_apply(call: ReductionCall, args) -> tuple:
    """Evaluate ``call`` with the custom operator; returns the spec's outputs (as
    :func:`polykeops.torch.autograd.apply` does)."""
    spec = call.spec
    hidden = WITH_INDICES.get(spec.reduction, spec.reduction) != spec.reduction and spec.red.differentiable
    if hidden:  # the values of Min/Max/KMin are differentiated at the selected pairs
        spec = spec.with_(reduction=WITH_INDICES[spec.reduction])
    if call.ranges is not None:
        from ..errors import FormulaError

        raise FormulaError(
            f"{call.spec}: block-sparse ranges are not supported under torch.compile / torch.export "
            "(their validation reads the ranges' values); reduce without ranges, or outside the "
            "compiled region"
        )
    req = call.request
    outs = torch.ops.polykeops.reduce(
        spec_to_text(spec), call.nx, call.ny, list(call.batch_shape), req.name,
        -1 if req.device_id is None else req.device_id, list(args),
    )
    return tuple(outs[:1]) if hidden else tuple(outs)


__all__ = ["op_apply", "reduce_op", "traced"]
