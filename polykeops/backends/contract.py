"""The backend contract: what a polykeops backend is and must do.

A backend is an object with:

* ``name`` (str) and ``priority`` (int; the highest available one that
  supports a call is chosen automatically);
* ``capabilities``: a :class:`Capabilities` value (dtypes, array kinds,
  devices, batch support, reductions);
* ``availability()`` -> ``(bool, reason)``: whether it can run on this machine
  (and why not);
* ``evaluate(spec, args, *, nx, ny, batch_shape)`` -> tuple of arrays (plus a
  ``ranges=`` keyword for backends that declare ``capabilities.ranges``).

``evaluate`` receives a *canonical* :class:`~polykeops.formula.spec.ReductionSpec`
(``axis == 1``: reduce over j, output indexed by i) and one array per entry of
``spec.variables``, all of dtype ``spec.dtype``, C-contiguous, of the same kind
(NumPy arrays, or torch tensors on one device), shaped

* ``(*b, nx, dim)`` for an i-variable, ``(*b, ny, dim)`` for a j-variable,
* ``(*b, dim)`` for a parameter,

where ``b`` has ``len(batch_shape)`` entries, each 1 or equal to the matching
entry of ``batch_shape`` (broadcasting).  It returns one array per entry of
``spec.outputs()``: ``(*batch_shape, nx, out.dim)``, of dtype ``spec.dtype``
for values and int64 for indices, of the same kind and device as the inputs.
Reduction semantics (ties, NaN, infinities) are those documented in
:mod:`polykeops.formula.reductions`.  ``spec.precision`` is a permission, not an
obligation: ``"tf32"`` allows a backend to compute the float32 inner products of the
formula with TF32 inputs (the CUDA backend's tensor cores, :mod:`.cuda.mma`); a backend
may ignore it and compute in IEEE float32, as the CPU and reference backends do.

Block-sparse reductions (only for backends declaring ``capabilities.ranges``):
``ranges = (ranges_x, slices_x, redranges_y)``, int64 arrays of the inputs' kind
and device (optionally with leading batch dimensions broadcasting against
``batch_shape``): output rows ``ranges_x[k, 0] <= i < ranges_x[k, 1]`` are
reduced over the j intervals ``redranges_y[s]`` for
``slices_x[k - 1] <= s < slices_x[k]`` (``slices_x[-1]`` read as 0).  Rows in
no range hold the reduction of nothing (``Reduction.empty_outputs``).

Partial states (for backends declaring ``capabilities.partial_states``; what the
Dask and torch.distributed layers use to split j across workers):
``evaluate_states(spec, args, *, nx, ny, batch_shape, ranges=None)`` takes what
``evaluate`` takes and returns the reduction's *state fields* over the call's j
instead of its outputs: one array per field of ``spec.red.state_layout``, shaped
``(*batch_shape, nx, size)``, as :mod:`polykeops.backends.partial_states` defines
them.  :class:`Backend` provides it for every backend that can evaluate the
state reductions (:func:`~polykeops.backends.partial_states.state_spec`); a backend
may override it with a native path.

Device backends may declare ``capabilities.host_inputs``: named explicitly
(``backend="cuda"``, or ``"cuda:N"`` for device ``N``, which pykeops'
``device_id=N`` becomes), they also run NumPy arrays and CPU torch tensors.  The
registry then calls the backend's ``for_host_inputs(array_kind, device_id)``,
which returns an object following this contract that copies the inputs to the
device and the outputs back to the caller's type and device.

Third-party packages register a backend with an entry point in the group
``polykeops.backends`` whose object is a zero-argument factory returning a
backend, or at run time with :func:`polykeops.backends.register_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capabilities:
    """What a backend claims to support; the registry and the conformance suite trust it."""

    dtypes: frozenset = frozenset({"float32", "float64"})
    array_kinds: frozenset = frozenset({"numpy", "torch"})
    devices: frozenset = frozenset({"cpu"})  # "cpu", "cuda"
    batch: bool = True
    reductions: frozenset | None = None  # None: every reduction of the formula layer
    sum_schemes: frozenset = frozenset({"block_sum", "kahan_scheme", "direct_sum"})
    notes: tuple[str, ...] = field(default=())  # printed by ``python -m polykeops check``
    ranges: bool = False  # block-sparse reductions (the ``ranges`` argument of evaluate)
    ops: frozenset | None = None  # formula ops it can evaluate (None: every op of the op table)
    host_inputs: bool = False  # named explicitly, takes host arrays too (``for_host_inputs``)
    partial_states: bool = False  # serves ``evaluate_states`` (j split across workers)

    def unsupported(self, spec, array_kind: str, device: str, batched: bool,
                    ranges: bool = False, partial: bool = False) -> str | None:
        """Why this backend cannot run ``spec`` on these arrays, or None if it can."""
        if spec.dtype not in self.dtypes:
            return f"dtype {spec.dtype} not supported (supports {sorted(self.dtypes)})"
        if array_kind not in self.array_kinds:
            return f"{array_kind} arrays not supported"
        if device not in self.devices:
            return f"device {device} not supported (supports {sorted(self.devices)})"
        if batched and not self.batch:
            return "batch dimensions not supported"
        if self.reductions is not None and spec.reduction not in self.reductions:
            return f"reduction {spec.reduction} not supported"
        if spec.sum_scheme not in self.sum_schemes:
            return f"sum_scheme {spec.sum_scheme} not supported"
        if ranges and not self.ranges:
            return "block-sparse ranges not supported"
        if partial and not self.partial_states:
            return "partial states not supported"
        if self.ops is not None:
            from ..formula.nodes import LEAF_OPS, walk

            missing = sorted({n.op for f in spec.formulas for n in walk(f)} - self.ops - LEAF_OPS)
            if missing:
                return f"operation(s) {', '.join(missing)} not supported"
        return None


class Backend:
    """Base class for backends (subclassing it is optional: the contract is structural)."""

    name = "abstract"
    priority = 0
    capabilities = Capabilities()

    def availability(self) -> tuple[bool, str]:
        return True, "ok"

    def evaluate(self, spec, args, *, nx: int, ny: int, batch_shape: tuple, ranges=None):
        raise NotImplementedError

    def evaluate_states(self, spec, args, *, nx: int, ny: int, batch_shape: tuple, ranges=None):
        """The partial state of the call (see the module docstring): by default, the outputs of
        its state reduction computed by :meth:`evaluate`."""
        from .partial_states import states_from_outputs

        return states_from_outputs(self.evaluate, spec, args, nx=nx, ny=ny, batch_shape=batch_shape,
                                   ranges=ranges)

    def __repr__(self) -> str:
        return f"<polykeops backend {self.name!r}>"
