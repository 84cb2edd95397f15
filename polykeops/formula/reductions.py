"""Reductions: how the values F(i, j) of a formula are combined along j.

Each reduction is defined once, by four rules that let any backend split the
work along j (tiles, threads, GPU blocks) and along i:

* ``init``      -- the neutral partial state (documented per class);
* ``tile``      -- the partial state of one tile of values ``F[..., i, j, d]``;
* ``combine``   -- merge two partial states (the first one covers smaller j);
* ``finalize``  -- turn the final state into the output array(s).

The reference implementations below run on arrays through the ``xp`` namespace
(:mod:`polykeops.formula.arrays`) plus a few reduction helpers:
``rsum rmax rmin`` (over axis -2, keeping nothing), ``rargmin rargmax``
(first index, NaN first), ``rargsort_nanfirst`` (stable, over axis -2),
``take(x, idx)`` (along axis -2), ``isnan isfinite maximum``, ``cat_j(list)``
(concatenation along axis -2), ``acc(x)`` (cast to the accumulation dtype),
``out(x)`` (cast to the output dtype), ``index_offset(idx, j0)``.

Conventions users can rely on (every backend must follow them):

* Min/Max/ArgMin/ArgMax/KMin are taken component-wise for vector formulas;
  ties go to the smallest j; a NaN value *wins* (Min is NaN and ArgMin is the
  index of the first NaN), so NaNs are never silently dropped.
* KMin returns the K smallest values in ascending order (NaNs first), ArgKMin
  their indices; the output has dimension ``K * D`` with entry ``k * D + d``.
* LogSumExp of an all ``-inf`` row is ``-inf``; with a ``+inf`` value it is
  ``+inf``.
* Index outputs are int64 (no limit on N).

Each reduction also declares, as plain data, what its partial state *is*, so
that compiled backends (and a layer combining partial results computed on
different devices) need no list of reduction names:

* ``family`` -- one of :data:`FAMILIES`: reductions of one family share their
  state layout and their rules up to a few attributes (``selection_kind``,
  ``want_value``/``want_index``, ``log``, ``weighted``);
* :meth:`Reduction.state_layout` -- the fields of a state (name, kind, size from
  the formula dimensions and K) in storage order;
* :data:`COMBINE_RULES` -- the combine rule of each field, in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import FormulaError

FLOAT, INDEX = "float", "index"

#: reduction families (see :attr:`Reduction.family`)
SUM, LSE, SOFTMAX, SELECT, KMIN = "sum", "lse", "softmax", "select", "kmin"
FAMILIES = (SUM, LSE, SOFTMAX, SELECT, KMIN)

#: kinds of state fields: an entry of the formula's dtype, of the accumulation dtype, an int64 index
VALUE, ACCUMULATOR = "value", "accumulator"

#: how one field of two partial states ``a`` (smaller j) and ``b`` is combined
COMBINE_RULES = {
    "add": "a + b",
    "compensation": "Neumaier: the rounding error of the addition of the sums, plus a.c + b.c",
    "max": "max(a.m, b.m), NaN wins; the shift used is 0 where that max is infinite or NaN",
    "add_rescaled": "a.s * exp(a.m - m) + b.s * exp(b.m - m), m the combined max (shifts as for max)",
    "select": "(value, index) of b if b is strictly better (or NaN while a is not, or a holds "
              "nothing: index -1), else of a",
    "merge_k": "the K first (value, index) of the stable merge of the two sorted lists (NaN first, "
               "unused slots with index -1 last)",
}


@dataclass(frozen=True)
class Output:
    dim: int
    kind: str  # FLOAT or INDEX


@dataclass(frozen=True)
class StateField:
    """One field of a partial state: ``size`` entries of one ``kind``.

    ``kind`` is VALUE (the formula's dtype), ACCUMULATOR (the accumulation dtype)
    or INDEX (int64).  ``sliced``: the field holds a fixed number of entries per
    component of the formula :attr:`Reduction.component_formula` (a backend
    computing components ``[c0, c0 + w)`` only holds those entries).  ``combine``
    names the rule of :data:`COMBINE_RULES`.
    """

    name: str
    kind: str
    size: int
    combine: str
    sliced: bool = True


class Reduction:
    """Base class: one reduction, defined by its init/tile/combine/finalize rules."""

    name = ""
    n_formulas = 1  # 2 for weighted reductions (formula, weight)
    uses_k = False
    scalar_formula = False  # F must have dimension 1
    is_sum_like = False  # gradient is a Sum reduction of the symbolic gradient
    is_selection = False  # Min/Max/KMin family (gradient through the selected index)
    selection_kind = ""  # "min" or "max"
    differentiable = True
    family = ""  # one of FAMILIES
    component_formula: int | None = 0  # the formula whose components index the state (None: scalar)

    def state_layout(self, fdims: tuple[int, ...], k: int | None = None, *,
                     compensated: bool = False) -> tuple[StateField, ...]:
        """The fields of a partial state, in storage order (``compensated``: Kahan summation)."""
        raise NotImplementedError

    def validate(self, fdims: tuple[int, ...], k: int | None) -> None:
        if len(fdims) != self.n_formulas:
            raise FormulaError(
                f"reduction {self.name} takes {self.n_formulas} formula(s), got {len(fdims)}"
            )
        if self.scalar_formula and fdims[0] != 1:
            raise FormulaError(
                f"reduction {self.name} needs a scalar formula (dimension 1), "
                f"got dimension {fdims[0]}"
            )
        if self.uses_k:
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise FormulaError(f"reduction {self.name} needs a positive int K, got {k!r}")
        elif k is not None:
            raise FormulaError(f"reduction {self.name} takes no K")

    def outputs(self, fdims: tuple[int, ...], k: int | None) -> tuple[Output, ...]:
        raise NotImplementedError

    def empty_outputs(self, fdims: tuple[int, ...], k: int | None) -> tuple[list, ...]:
        """The outputs of a reduction over no element at all (rows that block-sparse
        ``ranges`` leave empty): the finalized init state, one list of values per output."""
        raise NotImplementedError

    # reference rules ------------------------------------------------------
    def tile(self, xp, values: list, j0: int):
        raise NotImplementedError

    def combine(self, xp, s1, s2):
        raise NotImplementedError

    def finalize(self, xp, state) -> tuple:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<reduction {self.name}>"


# ---------------------------------------------------------------------------


class Sum(Reduction):
    """Sum over j. init 0; combine: addition (Kahan-compensated with sum_scheme='kahan_scheme')."""

    name = "Sum"
    is_sum_like = True
    family = SUM

    def state_layout(self, fdims, k=None, *, compensated=False):
        fields = (StateField("s", ACCUMULATOR, fdims[0], "add"),)
        if compensated:
            fields += (StateField("c", ACCUMULATOR, fdims[0], "compensation"),)
        return fields

    def outputs(self, fdims, k):
        return (Output(fdims[0], FLOAT),)

    def empty_outputs(self, fdims, k):
        return ([0.0] * fdims[0],)

    def tile(self, xp, values, j0):
        if not xp.kahan:
            return (xp.rsum(xp.acc(values[0])), None)
        return _compensated_rsum(xp, xp.acc(values[0]))

    def combine(self, xp, s1, s2):
        if not xp.kahan:
            return (s1[0] + s2[0], None)
        # Kahan-Babuska (Neumaier) compensated addition of the tile sums
        a, b = s1[0], s2[0]
        t = a + b
        big = xp.abs(a) >= xp.abs(b)
        comp = xp.where(xp.isfinite(t), xp.where(big, (a - t) + b, (b - t) + a), 0.0)
        for c in (s1[1], s2[1]):
            if c is not None:
                comp = comp + c
        return (t, comp)

    def finalize(self, xp, state):
        total = state[0] if state[1] is None else state[0] + state[1]
        return (xp.out(total),)


def _compensated_rsum(xp, v):
    """(sum, compensation) of ``v`` over axis -2: pairwise additions, each with its exact rounding
    error (Knuth's TwoSum), the errors summed apart -- as accurate as Kahan's sequential sum,
    written with whole-array operations."""
    comp = None
    while v.shape[-2] > 1:
        if v.shape[-2] % 2:
            v = xp.cat_j([v, xp.full_j(v, 1, 0.0)])
        a, b = v[..., 0::2, :], v[..., 1::2, :]
        t = a + b
        bb = t - a
        err = (a - (t - bb)) + (b - bb)
        # an infinite sum has no meaningful rounding error (inf - inf would be NaN)
        err = xp.where(xp.isfinite(t), err, 0.0)
        e = xp.rsum(err)
        comp = e if comp is None else comp + e
        v = t
    total = v[..., 0, :]
    if comp is None:
        return (total, None)
    return (total, xp.where(xp.isfinite(comp), comp, 0.0))


def _safe_max(xp, m):
    """The max shift actually used: 0 where the running max is infinite or NaN."""
    finite = xp.isfinite(m)
    return xp.where(finite, m, xp.cast(finite, m))  # 0, not m * 0 (= NaN for infinite m)


class MaxSumShiftExp(Reduction):
    """Online max-shifted sum of exponentials: state (m, s) with s = sum_j exp(F - m).

    init (-inf, 0); combine rescales both sums to the larger max.
    Output: (m, s) for Max_SumShiftExp, m + log(s) for LogSumExp; with a weight
    formula G, s = sum_j exp(F - m) G (dimension of G).
    """

    scalar_formula = True
    is_sum_like = True
    family = LSE

    def __init__(self, name: str, weighted: bool, log: bool):
        self.name = name
        self.n_formulas = 2 if weighted else 1
        self.weighted = weighted
        self.log = log
        self.differentiable = log
        self.component_formula = 1 if weighted else None

    def state_layout(self, fdims, k=None, *, compensated=False):
        """``m`` the running max, ``s[d] = sum_j exp(F - m) G_d`` (G = 1 unweighted)."""
        dg = fdims[1] if self.weighted else 1
        return (StateField("m", ACCUMULATOR, 1, "max", sliced=False),
                StateField("s", ACCUMULATOR, dg, "add_rescaled", sliced=self.weighted))

    def outputs(self, fdims, k):
        dg = fdims[1] if self.weighted else 1
        return (Output(dg if self.log else 1 + dg, FLOAT),)

    def empty_outputs(self, fdims, k):
        dg = fdims[1] if self.weighted else 1
        return ([-math.inf] * dg,) if self.log else ([-math.inf] + [0.0] * dg,)

    def tile(self, xp, values, j0):
        f = xp.acc(values[0])
        m = xp.rmax(f)
        e = xp.exp(f - _safe_max(xp, m)[..., None, :])
        if self.weighted:
            e = e * xp.acc(values[1])
        return (m, xp.rsum(e))

    def combine(self, xp, s1, s2):
        m1, a1 = s1
        m2, a2 = s2
        m = xp.maximum(m1, m2)
        ms = _safe_max(xp, m)
        return (m, a1 * xp.exp(_safe_max(xp, m1) - ms) + a2 * xp.exp(_safe_max(xp, m2) - ms))

    def finalize(self, xp, state):
        m, s = state
        if self.log:
            return (xp.out(_safe_max(xp, m) + xp.log(s)),)
        return (xp.out(xp.concat([m, s])),)


class SumSoftMaxWeight(Reduction):
    """sum_j softmax_j(F) G_j: state (m, s, t), s = sum exp(F - m), t = sum exp(F - m) G."""

    name = "SumSoftMaxWeight"
    n_formulas = 2
    scalar_formula = True
    is_sum_like = True
    family = SOFTMAX
    component_formula = 1

    def state_layout(self, fdims, k=None, *, compensated=False):
        """``m`` the running max, ``z = sum_j exp(F - m)``, ``t[d] = sum_j exp(F - m) G_d``
        (in one array ``s = (z, t)`` where a backend keeps the sums together)."""
        return (StateField("m", ACCUMULATOR, 1, "max", sliced=False),
                StateField("z", ACCUMULATOR, 1, "add_rescaled", sliced=False),
                StateField("t", ACCUMULATOR, fdims[1], "add_rescaled"))

    def outputs(self, fdims, k):
        return (Output(fdims[1], FLOAT),)

    def empty_outputs(self, fdims, k):
        return ([math.nan] * fdims[1],)  # 0 / 0: the softmax of nothing is undefined

    def tile(self, xp, values, j0):
        f = xp.acc(values[0])
        m = xp.rmax(f)
        e = xp.exp(f - _safe_max(xp, m)[..., None, :])
        return (m, xp.rsum(e), xp.rsum(e * xp.acc(values[1])))

    def combine(self, xp, s1, s2):
        m = xp.maximum(s1[0], s2[0])
        ms = _safe_max(xp, m)
        c1 = xp.exp(_safe_max(xp, s1[0]) - ms)
        c2 = xp.exp(_safe_max(xp, s2[0]) - ms)
        return (m, s1[1] * c1 + s2[1] * c2, s1[2] * c1 + s2[2] * c2)

    def finalize(self, xp, state):
        return (xp.out(state[2] / state[1]),)


class _ValueAndIndex:
    """Reductions that return their values, their indices, or both (in that order)."""

    want_value: bool
    want_index: bool

    def _pick(self, value, index) -> tuple:
        return tuple(x for x, wanted in ((value, self.want_value), (index, self.want_index)) if wanted)

    def _declared(self, d: int) -> tuple:
        """Outputs of dimension ``d``: float values, int64 indices."""
        return self._pick(Output(d, FLOAT), Output(d, INDEX))

    def _empty(self, d: int, fill: float) -> tuple:
        """The reduction of nothing: ``fill`` values, index -1."""
        return self._pick([fill] * d, [-1] * d)


class Select(_ValueAndIndex, Reduction):
    """Min / Max / ArgMin / ArgMax / Min_ArgMin / Max_ArgMax (component-wise).

    State (value, index); init (+inf or -inf, -1).  combine keeps the first state
    unless the second is strictly better or is NaN while the first is not.
    """

    is_selection = True
    family = SELECT

    def state_layout(self, fdims, k=None, *, compensated=False):
        return (StateField("v", VALUE, fdims[0], "select"), StateField("i", INDEX, fdims[0], "select"))

    def __init__(self, name: str, kind: str, want_value: bool, want_index: bool):
        self.name = name
        self.selection_kind = kind
        self.want_value = want_value
        self.want_index = want_index
        self.differentiable = want_value

    def outputs(self, fdims, k):
        return self._declared(fdims[0])

    def empty_outputs(self, fdims, k):
        return self._empty(fdims[0], math.inf if self.selection_kind == "min" else -math.inf)

    def tile(self, xp, values, j0):
        f = values[0]
        idx = xp.rargmin(f) if self.selection_kind == "min" else xp.rargmax(f)
        return (xp.take(f, idx[..., None, :])[..., 0, :], xp.index_offset(idx, j0))

    def combine(self, xp, s1, s2):
        v1, i1 = s1
        v2, i2 = s2
        better = (v2 < v1) if self.selection_kind == "min" else (v2 > v1)
        # a state holding nothing (index -1: an empty piece of j) loses even against +-inf
        take2 = better | (xp.isnan(v2) & ~xp.isnan(v1)) | ((i1 < 0) & (i2 >= 0))
        return (xp.where(take2, v2, v1), xp.where(take2, i2, i1))

    def finalize(self, xp, state):
        return self._pick(xp.out(state[0]) if self.want_value else None, state[1])


class KMin(_ValueAndIndex, Reduction):
    """K smallest values (ascending, NaN first) and/or their indices, component-wise.

    State: candidate values and indices of shape (..., K', D), K' <= K, sorted;
    init: no candidate; combine: stable merge keeping the K first.
    """

    uses_k = True
    is_selection = True
    selection_kind = "min"
    family = KMIN

    def state_layout(self, fdims, k=None, *, compensated=False):
        """Entry ``q * D + d``: the q-th candidate of component d (sorted, NaN first)."""
        return (StateField("v", VALUE, k * fdims[0], "merge_k"),
                StateField("i", INDEX, k * fdims[0], "merge_k"))

    def __init__(self, name: str, want_value: bool, want_index: bool):
        self.name = name
        self.want_value = want_value
        self.want_index = want_index
        self.differentiable = want_value

    def outputs(self, fdims, k):
        return self._declared(k * fdims[0])

    def empty_outputs(self, fdims, k):
        return self._empty(k * fdims[0], math.inf)

    def _keep(self, xp, vals, idx):
        order = xp.rargsort_nanfirst(vals)[..., : xp.k, :]
        return (xp.take(vals, order), xp.take(idx, order))

    def tile(self, xp, values, j0):
        f = values[0]
        idx = xp.index_offset(xp.jrange(f), j0)
        return self._keep(xp, f, idx)

    def combine(self, xp, s1, s2):
        vals, idx = xp.cat_j([s1[0], s2[0]]), xp.cat_j([s1[1], s2[1]])
        # unused slots (index -1, value +inf) go after every candidate, +inf ones included
        unused_last = xp.rargsort_nanfirst(xp.cast(idx < 0, vals))
        return self._keep(xp, xp.take(vals, unused_last), xp.take(idx, unused_last))

    def finalize(self, xp, state):
        vals, idx = state
        missing = xp.k - vals.shape[-2]
        if missing > 0:  # fewer than K elements (block-sparse rows): pad with +inf and index -1
            vals = xp.cat_j([vals, xp.full_j(vals, missing, math.inf)])
            idx = xp.cat_j([idx, xp.full_j(idx, missing, -1)])
        flat = vals.shape[:-2] + (vals.shape[-2] * vals.shape[-1],)
        value = xp.out(xp.reshape(vals, flat)) if self.want_value else None
        return self._pick(value, xp.reshape(idx, flat) if self.want_index else None)


REDUCTIONS: dict[str, Reduction] = {}


def _add(red: Reduction) -> None:
    REDUCTIONS[red.name] = red


_add(Sum())
_add(MaxSumShiftExp("Max_SumShiftExp", weighted=False, log=False))
_add(MaxSumShiftExp("Max_SumShiftExpWeight", weighted=True, log=False))
_add(MaxSumShiftExp("LogSumExp", weighted=False, log=True))
_add(MaxSumShiftExp("LogSumExpWeight", weighted=True, log=True))
_add(SumSoftMaxWeight())
_add(Select("Min", "min", True, False))
_add(Select("Max", "max", True, False))
_add(Select("ArgMin", "min", False, True))
_add(Select("ArgMax", "max", False, True))
_add(Select("Min_ArgMin", "min", True, True))
_add(Select("Max_ArgMax", "max", True, True))
_add(KMin("KMin", True, False))
_add(KMin("ArgKMin", False, True))
_add(KMin("KMin_ArgKMin", True, True))

_ALIASES = {"SumSoftMax": "SumSoftMaxWeight", "LogSumExp_Weight": "LogSumExpWeight"}


def get_reduction(name: str, weighted: bool = False) -> Reduction:
    """The reduction called ``name`` (pykeops spelling); ``weighted`` selects the weighted LogSumExp."""
    if not isinstance(name, str):
        raise FormulaError(
            f"the reduction must be named by a string (reduction_op=...), got {name!r}; "
            f"known: {', '.join(sorted(REDUCTIONS))}"
        )
    key = _ALIASES.get(name, name)
    if weighted and key in ("LogSumExp", "Max_SumShiftExp"):
        key += "Weight"
    red = REDUCTIONS.get(key)
    if red is None:
        from difflib import get_close_matches

        close = get_close_matches(name, REDUCTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FormulaError(
            f"unknown reduction {name!r}{hint}; known: {', '.join(sorted(REDUCTIONS))}"
        )
    return red
