"""One reduction call: everything the dispatch needs besides the argument arrays.

The front end builds a :class:`ReductionCall` once per user call (shapes
checked, spec canonicalised, ranges validated and oriented, backend request
parsed); :func:`polykeops.backends.dispatch.dispatch` evaluates it.  Calls for
gradients and forward-mode derivatives are derived from it with
:meth:`ReductionCall.gradient`, so they share its request, batch shape and
ranges and are canonicalised here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import FormulaError
from ..formula.spec import ReductionSpec
from .request import BackendRequest


@dataclass(frozen=True, eq=False)
class ReductionCall:
    """A canonical reduction on arrays of known sizes.

    * ``spec``: a canonical :class:`~polykeops.formula.spec.ReductionSpec`
      (``axis == 1``: reduce over j, outputs indexed by i);
    * ``nx``, ``ny``: the sizes of the output (i) and reduced (j) axes;
    * ``batch_shape``: the broadcast batch shape;
    * ``ranges``: None, or pykeops' block-sparse 6-tuple of int64 arrays oriented
      for ``spec`` (its first three arrays describe the output axis);
    * ``request``: the parsed :class:`~polykeops.backends.request.BackendRequest`;
    * ``array_kind`` and ``device``: the arrays' library (``"numpy"``, ``"torch"``)
      and device type (``"cpu"``, ``"cuda"``).
    """

    spec: ReductionSpec
    nx: int
    ny: int
    batch_shape: tuple = ()
    ranges: tuple | None = None
    request: BackendRequest = BackendRequest()
    array_kind: str = "numpy"
    device: str = "cpu"

    def __post_init__(self):
        if self.spec.axis != 1:
            raise FormulaError(f"a ReductionCall needs a canonical spec (axis=1), got {self.spec}")
        object.__setattr__(self, "batch_shape", tuple(self.batch_shape))

    @classmethod
    def of(cls, spec: ReductionSpec, ni: int, nj: int, ranges=None, **fields) -> ReductionCall:
        """The call of ``spec`` (any axis) over ``ni`` rows i and ``nj`` columns j; ``ranges``
        (the 6-tuple in the user's orientation, i first) is oriented for the canonical spec."""
        spec, nx, ny, ranges = _canonical(spec, ni, nj, ranges)
        return cls(spec, nx, ny, ranges=ranges, **fields)

    def gradient(self, spec: ReductionSpec, *, nx: int | None = None, ny: int | None = None,
                 ranges=...) -> ReductionCall:
        """The call of a derived reduction (a gradient or a directional derivative) over the
        same arrays plus extra ones: same request and batch shape and, unless given, the same
        sizes and ranges.  ``spec`` may reduce over i (``axis == 0``): it is canonicalised,
        and the sizes and ranges are swapped with it."""
        spec, nx, ny, ranges = _canonical(spec, self.nx if nx is None else nx,
                                          self.ny if ny is None else ny,
                                          self.ranges if ranges is ... else ranges)
        return replace(self, spec=spec, nx=nx, ny=ny, ranges=ranges)

    def with_spec(self, spec: ReductionSpec) -> ReductionCall:
        """The same call for another canonical spec of the same variables."""
        return replace(self, spec=spec)

    def with_batch(self, batch_shape: tuple, ranges=...) -> ReductionCall:
        """The same call with another batch shape (``torch.vmap``)."""
        return replace(self, batch_shape=tuple(batch_shape),
                       ranges=self.ranges if ranges is ... else ranges)

    def on_host(self, ranges=None) -> ReductionCall:
        """The same call on NumPy arrays (when no argument array says where to compute)."""
        return replace(self, array_kind="numpy", device="cpu", ranges=ranges)

    @property
    def block_sparse_ranges(self) -> tuple | None:
        """The three arrays a backend receives as ``ranges=`` (None for a dense reduction)."""
        return None if self.ranges is None else tuple(self.ranges[:3])


def _canonical(spec: ReductionSpec, ni: int, nj: int, ranges):
    """``(canonical spec, nx, ny, ranges)``: an axis-0 spec swaps i and j, sizes and ranges."""
    if spec.axis == 1:
        return spec, ni, nj, ranges
    if ranges is not None:
        ranges = tuple(ranges[3:]) + tuple(ranges[:3])
    return spec.canonical(), nj, ni, ranges
