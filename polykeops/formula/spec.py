"""The reduction spec: everything a backend needs to know about one reduction.

A :class:`ReductionSpec` is a hashable value: the formula(s) with numbered
variables, the reduction, its axis, K, the signature of every argument and the
numerical options.  Backends receive *canonical* specs (``axis == 1``: the
reduction runs over j and the output is indexed by i); :meth:`canonical` swaps
the i and j categories of an ``axis == 0`` spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FormulaError
from .nodes import CAT_I, CAT_J, CAT_P, Node, Var, substitute, variables
from .printing import to_string
from .reductions import Output, Reduction, get_reduction

DTYPES = ("float16", "bfloat16", "float32", "float64")
#: dtypes stored in 16 bits and computed (and accumulated, by default) in float32
LOW_PRECISION = ("float16", "bfloat16")
SUM_SCHEMES = ("block_sum", "kahan_scheme", "direct_sum")
#: ``precision`` of float32 reductions on GPU tensor cores: "ieee" (float32 arithmetic, the
#: default) or "tf32" (inner products with TF32 inputs, an opt-in; see README "Tensor cores")
PRECISIONS = ("ieee", "tf32")


@dataclass(frozen=True)
class ReductionSpec:
    """One reduction of one or two formulas; see the module docstring."""

    reduction: str
    formulas: tuple[Node, ...]
    variables: tuple[Node, ...]
    axis: int = 1
    k: int | None = None
    dtype: str = "float32"
    dtype_acc: str = "auto"
    sum_scheme: str = "block_sum"
    precision: str = "ieee"
    _red: Reduction = field(default=None, compare=False, repr=False, hash=False)

    def __post_init__(self):
        red = get_reduction(self.reduction)
        object.__setattr__(self, "_red", red)
        object.__setattr__(self, "formulas", tuple(self.formulas))
        object.__setattr__(self, "variables", tuple(self.variables))
        if self.axis not in (0, 1):
            raise FormulaError(f"axis must be 0 (reduce over i) or 1 (reduce over j), got {self.axis!r}")
        if self.dtype not in DTYPES:
            raise FormulaError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.dtype_acc not in DTYPES + ("auto",):
            raise FormulaError(f"dtype_acc must be 'auto' or one of {DTYPES}, got {self.dtype_acc!r}")
        if self.sum_scheme not in SUM_SCHEMES:
            raise FormulaError(f"sum_scheme must be one of {SUM_SCHEMES}, got {self.sum_scheme!r}")
        if self.precision not in PRECISIONS:
            raise FormulaError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        red.validate(tuple(f.dim for f in self.formulas), self.k)
        for pos, v in enumerate(self.variables):
            if v.op != "Var" or v.index != pos:
                raise FormulaError(f"spec variable #{pos} must be Var({pos}, ...), got {v!r}")
        for v in variables(*self.formulas):
            if v.index >= len(self.variables) or self.variables[v.index] != v:
                raise FormulaError(f"formula variable {v!r} does not match the spec's arguments")

    @property
    def red(self) -> Reduction:
        return self._red

    @property
    def accumulation_dtype(self) -> str:
        """The dtype sums are accumulated in (float32 for float16 and bfloat16 inputs by default)."""
        if self.dtype_acc != "auto":
            return self.dtype_acc
        return "float32" if self.dtype in LOW_PRECISION else self.dtype

    def outputs(self) -> tuple[Output, ...]:
        return self.red.outputs(tuple(f.dim for f in self.formulas), self.k)

    def with_(self, **changes) -> ReductionSpec:
        data = {
            name: getattr(self, name)
            for name in (
                "reduction", "formulas", "variables", "axis", "k", "dtype", "dtype_acc", "sum_scheme",
                "precision",
            )
        }
        data.update(changes)
        return ReductionSpec(**data)

    def canonical(self) -> ReductionSpec:
        """The same reduction with ``axis == 1`` (i and j swapped if needed)."""
        if self.axis == 1:
            return self
        swap = {v: swap_category(v) for v in self.variables}
        return self.with_(
            formulas=tuple(substitute(f, swap) for f in self.formulas),
            variables=tuple(swap[v] for v in self.variables),
            axis=1,
        )

    def vars_of(self, cat: int) -> list[Node]:
        return [v for v in self.variables if v.cat == cat]

    def __str__(self) -> str:
        forms = ", ".join(to_string(f) for f in self.formulas)
        k = f", K={self.k}" if self.k is not None else ""
        return f"{self.reduction}_Reduction({forms}, axis={self.axis}{k}) [{self.dtype}]"


def swap_category(v: Node) -> Node:
    """``v`` with category i and j exchanged (parameters unchanged)."""
    i, d, c = v.params
    return Var(i, d, {CAT_I: CAT_J, CAT_J: CAT_I, CAT_P: CAT_P}[c])
