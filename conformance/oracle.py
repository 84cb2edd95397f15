"""The oracle: a drawn case evaluated densely with torch, independent of every backend.

Forward values
--------------
The formula(s) of the spec are evaluated on the whole ``M x N`` grid with
:func:`polykeops.formula.evaluate.evaluate` and the torch array namespace (the
op table's reference implementations only; no backend is involved), in float64,
then reduced with torch operations written here: ``sum``, ``logsumexp``,
``softmax``, first-index ``min``/``argmin`` with NaN winning, a stable
NaN-first ``sort`` for the K-reductions.

Gradients
---------
``torch.autograd`` on the same dense computation.  Every variable enters as an
*expanded* leaf of shape ``(*batch, M, N, dim)``: the gradient with respect to
the expanded leaf gives each (i, j) pair's contribution, whose sum is the
gradient and whose sum of absolute values is the magnitude the tolerance is
relative to.  Second order is the gradient of ``<first-order gradients, V>``.

Tolerance policy
----------------
With ``eps`` the machine epsilon of the case's dtype (``eps_acc`` that of the
accumulation dtype: float32 for float16), ``C`` the number of reduced terms and
``fac(C) = min(C, 64 sqrt(C)) + 8`` (twice the worst-case bound of recursive summation, in
any order, up to 4096 terms), an
output entry passes when ``|got - expected| <= tol`` with

* Sum:                 ``tol = eps_acc fac(C) sum_j |F_j| + sum_j noise_j + 2 eps |expected|``
* LogSumExp:           ``tol = eps_acc fac(C) + sum_j p_j noise_j + 2 eps |expected|``
  (``p`` = softmax; the weighted forms propagate the weights' noise the same way)
* SumSoftMaxWeight:    ``tol = eps_acc fac(C) sum_j p_j |G_j|
  + sum_j p_j (|G_j - out| noiseF_j + noiseG_j) + 2 eps |expected|``
* Min/Max/KMin values: ``2 eps |expected|`` plus the largest noise among the near-ties of the selected value;
* ArgMin/ArgMax/ArgKMin: the index must select a value within that tolerance of the
  expected one (a tie is accepted when the values tie); when the tied values are
  exactly representable and exactly computed (``exact``), the smallest index must win
  (ascending order of j among equal values for ArgKMin);
* gradients:           ``tol = (eps_acc fac(n) + 4 eps) (sum |contributions| + S) + noise_grad
  + 2 eps |expected|``
  (``n`` terms summed; ``S`` the largest contribution magnitude of the whole gradient, so that
  gradients cancelling to ~0 are compared with the scale of the computation).

``noise`` estimates, per (i, j) pair, the rounding error a correct backend may make
on the formula (then propagated through the reduction as above)::

    noise = 4 |F32 - F64| eps/eps32            (F32: the same formula evaluated in float32)
          + max |F64~ - F64|                    (F64~, two samples: inputs and every intermediate value v
                                                 moved by +-16 eps |x|, +-16 eps S_v, random
                                                 signs, S_v the largest magnitude in v's
                                                 sub-formula: large where F is a small
                                                 difference of large intermediate values, and
                                                 near discontinuities, e.g. of Round, IfElse or
                                                 Sign, where a correct backend may legitimately
                                                 land on the other side)
          + eps (|F64| + 4 B)                   (B = sum over nodes v of |dF/dv| S_v: the
                                                 first-order rounding bound, deterministic)

For gradients, ``noise_grad = 8 |g32 - g64| eps/eps32`` (g32: the whole dense
pipeline in float32) plus the change under the same perturbation; it is widened
by the deviation of the reference backend's float32 gradient (the *symbolic*
gradient formulas may cancel where torch.autograd's do not -- e.g. the derivative
of sin(x)/x near 0), capped at 1e-3 of the magnitudes in float32 units.  The
magnitude of a gradient's terms is bounded without cancellation for the
softmax-type reductions (``p (|G| + |out|)`` instead of ``p (G - out)``).

Block-sparse ranges: the pairs a case's ``ranges`` keep form a mask (:func:`ranges_mask`,
read from the first half of pykeops' 6-tuple); elsewhere F is replaced by the
reduction's neutral value (0, -inf or +inf, :func:`masked_value`), with no noise, so
that the reductions, tolerances and gradients above only see the kept pairs.  A row
(or a K-rank) with no kept pair holds the reduction of nothing: index -1 and the
empty value, which must be exact.

Rejected cases: a random case whose formula values are non-finite or larger than
1e4 (20 in float16) is discarded (``hypothesis.reject``): overflow is then the
formula's, not the backend's.

Special values: an expected NaN must be NaN, an expected infinity the same
infinity; NaN wins Min/Max/ArgMin (first NaN) and comes first in KMin, as
documented in :mod:`polykeops.formula.reductions`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from polykeops.backends.arrays.torch import TorchNamespace
from polykeops.formula.evaluate import evaluate
from polykeops.formula.nodes import CAT_I, CAT_J

F64 = torch.float64
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
EPS = {name: torch.finfo(dt).eps for name, dt in TORCH_DTYPES.items()}
EPS32 = EPS["float32"]
#: the spacing of the smallest (subnormal) numbers: outputs that underflow are exact to that
TINY = {name: torch.finfo(dt).tiny * torch.finfo(dt).eps for name, dt in TORCH_DTYPES.items()}
#: |F| above which a generic case is rejected as meaningless (float16: sums must not overflow)
VALUE_LIMIT = {"float16": 20.0, "float32": 1e4, "float64": 1e4}


@contextmanager
def single_threaded():
    """torch on one thread while the oracle computes: many small dense ops, and on a busy
    machine torch's thread pool waits for descheduled threads (10x slower); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def acc_dtype(spec) -> str:
    return spec.accumulation_dtype


def fac(c: int, scheme: str = "block_sum") -> float:
    """Error factor of a sum of ``c`` terms, in units of eps x (sum of |terms|).

    ``c + 8``: twice the classical worst-case bound of recursive summation
    (``(c - 1) u``, u = eps/2), whatever the order a backend adds in; beyond 4096
    terms ``64 sqrt(c) + 8`` (rounding errors of long sums behave statistically).
    The same for every sum scheme (``scheme`` is accepted for future refinement).
    """
    del scheme
    c = max(int(c), 1)
    return min(c, 64.0 * math.sqrt(c)) + 8.0


# ---------------------------------------------------------------------------
# dense evaluation
# ---------------------------------------------------------------------------


def batch_ndim(spec, arrays) -> int:
    nb = 0
    for v, a in zip(spec.variables, arrays):
        nb = max(nb, a.dim() - (1 if v.cat not in (CAT_I, CAT_J) else 2))
    return nb


def full_shape(spec, arrays, M: int, N: int) -> tuple:
    nb = batch_ndim(spec, arrays)
    shapes = []
    for v, a in zip(spec.variables, arrays):
        lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
        b = tuple(a.shape[: a.dim() - lead])
        shapes.append((1,) * (nb - len(b)) + b)
    batch = tuple(torch.broadcast_shapes(*shapes)) if shapes else ()
    return batch + (M, N)


def grid_view(v, a, nb: int):
    """``a`` (Genred layout) viewed on the (batch, M, N, dim) grid."""
    lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
    b = tuple(a.shape[: a.dim() - lead])
    pad = (1,) * (nb - len(b)) + b
    if v.cat == CAT_I:
        return a.reshape(pad + (a.shape[-2], 1, a.shape[-1]))
    if v.cat == CAT_J:
        return a.reshape(pad + (1, a.shape[-2], a.shape[-1]))
    return a.reshape(pad + (1, 1, a.shape[-1]))


def sum_back(t, v, a_shape, nb: int):
    """A grid-shaped tensor summed back to the shape of the variable's array (the adjoint of grid_view)."""
    lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
    b = tuple(a_shape[: len(a_shape) - lead])
    pad = (1,) * (nb - len(b)) + b
    if v.cat == CAT_I:
        t = t.sum(-2)
        target = pad + tuple(a_shape[-2:])
    elif v.cat == CAT_J:
        t = t.sum(-3)
        target = pad + tuple(a_shape[-2:])
    else:
        t = t.sum((-3, -2))
        target = pad + (a_shape[-1],)
    dims = tuple(k for k in range(nb) if target[k] == 1 and t.shape[k] != 1)
    if dims:
        t = t.sum(dims, keepdim=True)
    return t.reshape(a_shape)


def dense(spec, arrays, M: int, N: int, dtype=F64, grid_leaves=None, perturb=None, bounds=None):
    """The formulas on the grid, oriented ``(*batch, R, C, dim)``: R indexes the output, C is reduced.

    ``perturb=(eps, seed)``: every intermediate value v is moved by ``+- 16 eps S_v``
    (random signs per element; ``S_v`` the largest magnitude in v's sub-formula),
    as the rounding of a backend that computes in another order may move it --
    which flips discontinuous ops (``Round``, ``IfElse``, comparisons...) whose
    argument is within rounding distance of a jump.  With a list ``bounds``, it
    receives per formula ``sum over nodes v of |dF/dv| S_v`` (oriented like the
    values): the first-order bound of the rounding error, in units of eps.
    """
    xp = TorchNamespace(dtype)
    nb = batch_ndim(spec, arrays)
    shape = full_shape(spec, arrays, M, N)
    values = {}
    for pos, (v, a) in enumerate(zip(spec.variables, arrays)):
        if grid_leaves is not None:
            values[v.index] = grid_leaves[pos]
        else:
            values[v.index] = grid_view(v, a.to(dtype), nb)
    outs = []
    for f in spec.formulas:
        if perturb is None:
            val = evaluate(f, xp, values)
        else:
            val, bound = _evaluate_perturbed(f, xp, values, shape, *perturb, bound=bounds is not None)
            if bounds is not None:
                bound = bound.expand(shape + (f.dim,))
                bounds.append((bound.transpose(-3, -2) if spec.axis == 0 else bound).contiguous())
        if not isinstance(val, torch.Tensor):  # pragma: no cover - evaluate returns tensors
            val = torch.as_tensor(val, dtype=dtype)
        val = val.to(dtype)
        while val.dim() < len(shape) + 1:
            val = val.unsqueeze(0)
        val = val.expand(shape + (f.dim,))
        if spec.axis == 0:
            val = val.transpose(-3, -2)
        outs.append(val if grid_leaves is not None else val.contiguous())
    return outs


def _evaluate_perturbed(formula, xp, values, shape, eps: float, seed: int, bound: bool = False):
    from polykeops.formula.nodes import walk
    from polykeops.formula.ops import OPS

    nodes = list(walk(formula))
    width = max(n.dim for n in nodes)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape + (2 * width,), generator=gen).to(xp.dtype) * 2 - 1
    memo, scale, deltas = {}, {}, []
    for k, n in enumerate(nodes):
        if n.op == "Var":
            memo[n] = values[n.index]
            scale[n] = memo[n].detach().abs()
            continue
        if n.op in ("Const", "Zero"):
            memo[n] = xp.const(n.params[0] if n.op == "Const" else 0, n.dim)
            scale[n] = memo[n].abs()
            continue
        val = OPS[n.op].ref(xp, *[memo[a] for a in n.args], *n.params)
        s_n = val.detach().abs()
        for a in n.args:
            s_a = scale[a] if scale[a].shape[-1] in (1, s_n.shape[-1]) else scale[a].amax(-1, keepdim=True)
            s_n = torch.maximum(s_n, s_a)
        d = val.shape[-1]
        off = k % (2 * width - d + 1)
        val = val + (16 * eps) * s_n * signs[..., off : off + d]
        if bound and val.is_floating_point():
            delta = torch.zeros(val.shape, dtype=val.dtype, requires_grad=True)
            deltas.append((delta, s_n))
            val = val + delta
        memo[n] = val
        scale[n] = s_n
    out = memo[formula]
    if not bound:
        return out, None
    total = torch.zeros(shape + (1,), dtype=xp.dtype)
    if deltas and isinstance(out, torch.Tensor) and out.requires_grad:
        with torch.enable_grad():
            grads = torch.autograd.grad(out.sum(), [d for d, _ in deltas], allow_unused=True)
        for g, (_, s_n) in zip(grads, deltas):
            if g is not None:
                total = total + (g.abs() * s_n).sum(-1, keepdim=True)
    return out.detach(), torch.nan_to_num(total, nan=0.0, posinf=0.0)


# ---------------------------------------------------------------------------
# reductions written with torch operations (over axis -2)
# ---------------------------------------------------------------------------


def first_index(F, kind: str):
    """Index of the first min (or max) along -2; the first NaN wins."""
    nan = torch.isnan(F)
    fill = math.inf if kind == "min" else -math.inf
    clean = torch.where(nan, torch.full_like(F, fill), F)
    ext = clean.amin(-2, keepdim=True) if kind == "min" else clean.amax(-2, keepdim=True)
    hit = (clean == ext).to(torch.int8)
    idx = torch.argmax(hit, dim=-2)  # torch returns the first maximal index
    first_nan = torch.argmax(nan.to(torch.int8), dim=-2)
    return torch.where(nan.any(-2), first_nan, idx)


def kmin_order(F, k: int):
    """Indices (along -2) of the K smallest values, NaN first, ties in increasing j."""
    nan = torch.isnan(F)
    key = torch.where(nan, torch.full_like(F, -math.inf), F)
    o1 = torch.sort(key, dim=-2, stable=True).indices
    flag = (~torch.take_along_dim(nan, o1, dim=-2)).to(torch.int8)
    o2 = torch.sort(flag, dim=-2, stable=True).indices
    return torch.take_along_dim(o1, o2, dim=-2)[..., :k, :]


def _safe(m):
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def reduce_dense(spec, Fs, indices=None, mask=None):
    """The spec's outputs from dense values ``Fs`` (R x C grids), in run_spec's layout.

    ``indices`` (for the selection reductions) overrides the selected indices
    (gradients are then taken at the backend's choice among tied values).
    ``mask`` (block-sparse ranges, see :func:`oriented_mask`): only the kept pairs
    are reduced; a selected rank with no kept pair left has index -1 and the
    reduction's empty value.
    """
    name = spec.reduction
    if mask is not None:
        Fs = apply_mask(spec, Fs, mask)
    F = Fs[0]
    if name == "Sum":
        return [F.sum(-2)]
    if name in ("LogSumExp", "LogSumExpWeight", "Max_SumShiftExp", "Max_SumShiftExpWeight"):
        m = F.amax(-2, keepdim=True)
        e = torch.exp(F - _safe(m).detach())
        if name.endswith("Weight"):
            e = e * Fs[1]
        s = e.sum(-2)
        if name == "LogSumExp":
            return [torch.logsumexp(F, dim=-2)]
        if name == "LogSumExpWeight":
            return [_safe(m[..., 0, :]).detach() + torch.log(s)]
        return [torch.cat([m[..., 0, :], s], dim=-1)]
    if name == "SumSoftMaxWeight":
        p = torch.softmax(F, dim=-2)
        return [(p * Fs[1]).sum(-2)]
    red = spec.red
    if red.uses_k:
        k = spec.k
        idx = indices if indices is not None else kmin_order(F, k)
        idx, vals = _select(spec, F, idx, mask)
        outs = []
        d = F.shape[-1]
        if red.want_value:
            outs.append(vals if d > 1 else vals[..., 0])
        if red.want_index:
            outs.append(idx if d > 1 else idx[..., 0])
        return outs
    kind = red.selection_kind
    idx = indices if indices is not None else first_index(F, kind)
    idx, vals = _select(spec, F, idx[..., None, :], mask)
    outs = []
    if red.want_value:
        outs.append(vals[..., 0, :])
    if red.want_index:
        outs.append(idx[..., 0, :])
    return outs


def _select(spec, F, idx, mask):
    """``(indices, values)`` of the selected ranks ``idx`` (along -2); with a ``mask``, ranks that
    select no kept pair (or index -1) get index -1 and the reduction's empty value."""
    if mask is None:
        return idx, torch.take_along_dim(F, idx, dim=-2)
    safe = idx.clamp(min=0)
    kept = torch.take_along_dim(mask.expand(F.shape[:-1] + (1,)), safe, dim=-2)
    void = (idx < 0) | ~kept
    vals = torch.where(
        void, torch.full_like(F[..., :1, :], masked_value(spec)), torch.take_along_dim(F, safe, dim=-2)
    )
    return torch.where(void, torch.full_like(idx, -1), idx), vals


# ---------------------------------------------------------------------------
# block-sparse ranges: the mask of kept (i, j) pairs
# ---------------------------------------------------------------------------


def ranges_mask(ranges, M: int, N: int) -> torch.Tensor:
    """The ``(*batch, M, N)`` boolean mask of the pairs that pykeops' 6-tuple ``ranges`` keeps.

    Read from its first half, as documented: the rows ``ranges_i[k, 0] <= i < ranges_i[k, 1]``
    are reduced over the j intervals ``redranges_j[s]``, ``slices_i[k - 1] <= s < slices_i[k]``
    (``slices_i[-1]`` read as 0).  ``ranges``: NumPy arrays or torch tensors (any device).
    """
    rx, sx, ry = (
        np.asarray(r.detach().cpu() if isinstance(r, torch.Tensor) else r, dtype=np.int64) for r in ranges[:3]
    )
    rb = rx.shape[:-2]
    mask = np.zeros(rb + (M, N), dtype=bool)
    for b in np.ndindex(*rb):
        prev = 0
        for k in range(rx.shape[-2]):
            end = int(sx[b][k])
            i0, i1 = (int(x) for x in rx[b][k])
            for s in range(prev, end):
                j0, j1 = (int(x) for x in ry[b][s])
                mask[b][i0:i1, j0:j1] = True
            prev = end
    return torch.from_numpy(mask)


def oriented_mask(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """A ``(*batch, M, N)`` mask oriented like :func:`dense`'s grids: ``(*batch, R, C, 1)``."""
    return (mask.transpose(-1, -2) if axis == 0 else mask)[..., None]


def case_mask(case):
    """The oriented mask of a drawn case's ranges (None without ranges)."""
    if getattr(case, "ranges", None) is None:
        return None
    return oriented_mask(ranges_mask(case.ranges.arrays(), case.M, case.N), case.spec.axis)


def masked_value(spec) -> float:
    """What a pair left out by the ranges contributes to F: nothing (0 in a Sum, -inf in an
    exponential sum, +-inf in a selection)."""
    red = spec.red
    if red.is_selection:
        return math.inf if red.selection_kind == "min" else -math.inf
    return 0.0 if spec.reduction == "Sum" else -math.inf


def apply_mask(spec, Fs, mask, weights: bool = False):
    """``Fs`` with the pairs outside ``mask`` replaced by :func:`masked_value` (and, with ``weights``,
    the weights of those pairs by 0: torch.autograd then gives them no gradient)."""
    F = torch.where(mask, Fs[0], torch.full_like(Fs[0][..., :1, :1, :1], masked_value(spec)))
    rest = [torch.where(mask, G, torch.zeros_like(G[..., :1, :1, :1])) if weights else G for G in Fs[1:]]
    return [F] + rest


def expected_outputs(spec, arrays, ranges=None):
    """The oracle's outputs for ``spec`` on ``arrays`` (Genred layout; torch or NumPy), with
    pykeops' block-sparse 6-tuple ``ranges`` if given.

    This is what the reproduction snippets of failures call.
    """
    arrays = [
        torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)).to(F64)
        for a in arrays
    ]
    M, N = sizes_of(spec, arrays)
    mask = None if ranges is None else oriented_mask(ranges_mask(ranges, M, N), spec.axis)
    return reduce_dense(spec, dense(spec, arrays, M, N), mask=mask)


def sizes_of(spec, arrays) -> tuple[int, int]:
    M = N = 1
    for v, a in zip(spec.variables, arrays):
        if v.cat == CAT_I:
            M = a.shape[-2]
        elif v.cat == CAT_J:
            N = a.shape[-2]
    return M, N


# ---------------------------------------------------------------------------
# the oracle of one case: values, noise, expectations
# ---------------------------------------------------------------------------


class Rejected(Exception):
    """The case is outside the suite's scope (non-finite or huge values): not a backend failure."""


def _perturbed(arrays, eps: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in arrays:
        u = torch.randint(0, 2, a.shape, generator=g).to(F64) * 2 - 1
        out.append(a * (1 + eps * u))
    return out


@dataclass
class Expectation:
    """What one output must be: values and tolerances (floats), or a validator (indices)."""

    kind: str  # "float" or "index"
    expected: torch.Tensor
    tol: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # the magnitude errors are relative to
    extra: dict = field(default_factory=dict)


class CaseOracle:
    """Dense values of a case's formulas, with their noise estimates."""

    def __init__(self, case, *, allow_special: bool = False):
        with single_threaded():
            self._init(case, allow_special)

    def _init(self, case, allow_special):
        self.case = case
        spec = case.spec
        self.spec = spec
        self.dtype = spec.dtype
        self.eps = EPS[spec.dtype]
        self.eps_acc = EPS[acc_dtype(spec)]
        self.arrays = [torch.from_numpy(a) for a in case.arrays64()]
        M, N = case.M, case.N
        self.M, self.N = M, N
        self.F = dense(spec, self.arrays, M, N)
        arr32 = [a.to(torch.float32) for a in self.arrays]
        F32 = [f.to(F64) for f in dense(spec, arr32, M, N, dtype=torch.float32)]
        bounds = []
        pert = dense(
            spec, _perturbed(self.arrays, 16 * self.eps, 1), M, N, perturb=(self.eps, 1), bounds=bounds
        )
        pert2 = dense(spec, _perturbed(self.arrays, 16 * self.eps, 2), M, N, perturb=(self.eps, 2))
        if not allow_special:
            top = max(float(torch.nan_to_num(f.abs(), nan=math.inf).max()) for f in self.F + F32 + pert)
            if not math.isfinite(top):
                raise Rejected("non-finite formula values (outside the domain the suite draws)")
            if top > (case.value_limit or VALUE_LIMIT[self.dtype]):
                raise Rejected(f"formula values up to {top:.3g}: too large to be meaningful in {self.dtype}")
        self.noise = []
        self.exact = []
        for f, f32, p, p2, b in zip(self.F, F32, pert, pert2, bounds):
            dev = torch.maximum((p - f).abs(), (p2 - f).abs())
            n = 4 * (f32 - f).abs() * (self.eps / EPS32) + dev + self.eps * (f.abs() + 4 * b)
            n = torch.where(torch.isfinite(n), n, torch.zeros_like(n))
            if not allow_special:
                n = torch.where(torch.isfinite(f32) & torch.isfinite(f), n, torch.full_like(n, math.inf))
            self.noise.append(n)
            rep = f.to(TORCH_DTYPES[self.dtype]).to(F64)
            self.exact.append(
                ((f32 == f) | (torch.isnan(f32) & torch.isnan(f))) & ((rep == f) | ~torch.isfinite(f))
            )
        # block-sparse ranges: the pairs left out are not computed (no value, no rounding error)
        self.mask = case_mask(case)
        if self.mask is not None:
            self.F = apply_mask(spec, self.F, self.mask)
            self.noise = [torch.where(self.mask, n, torch.zeros_like(n)) for n in self.noise]
            self.exact = [e | ~self.mask for e in self.exact]

    # -- expectations -----------------------------------------------------------
    def expectations(self, indices=None):
        """One :class:`Expectation` per output of the spec."""
        with single_threaded():
            exps = self._expectations(indices)
        for exp in exps:
            if exp.tol is not None:
                if self.mask is not None:  # rows that reduce over nothing: the empty value, exactly
                    exp.tol = torch.nan_to_num(exp.tol, nan=0.0)
                exp.tol = exp.tol + TINY[self.dtype]
        return exps

    def _expectations(self, indices=None):
        spec = self.spec
        name = spec.reduction
        F, nF = self.F[0], self.noise[0]
        C = F.shape[-2]
        ea, e = self.eps_acc, self.eps
        fc = fac(C, spec.sum_scheme)
        with torch.no_grad():
            outs = reduce_dense(spec, self.F, indices=indices, mask=self.mask)
            if name == "Sum":
                r = outs[0]
                S = F.abs().sum(-2)
                tol = ea * fc * S + nF.sum(-2) + 2 * e * r.abs()
                return [Expectation("float", r, tol, S)]
            if name == "LogSumExp":
                r = outs[0]
                p = torch.softmax(F, dim=-2)
                tol = ea * fc * (1 + 0 * r) + (p * nF).sum(-2) + 2 * e * r.abs()
                return [Expectation("float", r, tol, 1 + r.abs())]
            if name == "LogSumExpWeight":
                G, nG = self.F[1], self.noise[1]
                r = outs[0]
                w = torch.exp(F - _safe(F.amax(-2, keepdim=True))) * G
                q = w / w.sum(-2, keepdim=True)
                tol = ea * fc + (q.abs() * nF + q.abs() * nG / G.abs()).sum(-2) + 2 * e * r.abs()
                return [Expectation("float", r, tol, 1 + r.abs())]
            if name in ("Max_SumShiftExp", "Max_SumShiftExpWeight"):
                r = outs[0]
                m = F.amax(-2, keepdim=True)
                G = self.F[1] if name.endswith("Weight") else torch.ones_like(F)
                nG = self.noise[1] if name.endswith("Weight") else torch.zeros_like(F)
                ex = torch.exp(F - _safe(m))
                near = (F + nF) >= (m - nF.amax(-2, keepdim=True))
                tol_m = 2 * e * m.abs() + torch.where(near, nF, torch.zeros_like(nF)).amax(-2, keepdim=True)
                s_mag = (ex * G.abs()).sum(-2)
                tol_s = (
                    ea * fc * s_mag
                    + (ex * G.abs() * (nF + tol_m)).sum(-2)
                    + (ex * nG).sum(-2)
                    + 2 * e * r[..., 1:].abs()
                )
                tol = torch.cat([tol_m[..., 0, :], tol_s], dim=-1)
                scale = torch.cat([1 + m[..., 0, :].abs(), s_mag], dim=-1)
                return [Expectation("float", r, tol, scale)]
            if name == "SumSoftMaxWeight":
                G, nG = self.F[1], self.noise[1]
                r = outs[0]
                p = torch.softmax(F, dim=-2)
                mag = (p * G.abs()).sum(-2)
                tol = (
                    ea * fc * mag
                    + (p * (G - r[..., None, :]).abs() * nF).sum(-2)
                    + (p * nG).sum(-2)
                    + 2 * e * r.abs()
                )
                return [Expectation("float", r, tol, mag)]
            return self._selection_expectations(outs, indices)

    def _selection_expectations(self, outs, indices):
        spec = self.spec
        red = spec.red
        F, nF, ex = self.F[0], self.noise[0], self.exact[0]
        e = self.eps
        kind = red.selection_kind
        sign = 1.0 if kind == "min" else -1.0
        if red.uses_k:
            k = spec.k
            idx = indices if indices is not None else kmin_order(F, k)
        else:
            idx = indices if indices is not None else first_index(F, kind)[..., None, :]
            if indices is not None:
                idx = idx[..., None, :]
        # (..., R, K, D) (K = 1 for Min/Max); ranks with no kept pair (ranges): index -1, empty value
        idx, ref = _select(spec, F, idx, self.mask)
        n_sel = torch.take_along_dim(nF, idx.clamp(min=0), dim=-2)
        # near-ties of each selected value: any value that may be computed on the other side of it
        n_near = torch.empty_like(ref)
        for k in range(ref.shape[-2]):  # one rank at a time: (..., R, C, D) temporaries only
            r_k, n_k = ref[..., k : k + 1, :], n_sel[..., k : k + 1, :]
            near = (F - r_k).abs() <= nF + n_k
            n_near[..., k, :] = torch.where(near, nF, torch.zeros_like(nF)).amax(-2)
        tol = 2 * e * ref.abs() + n_near + n_sel
        tol = torch.where(torch.isfinite(ref), tol, torch.zeros_like(tol))
        info = dict(F=F, noise=nF, exact=ex, ref=ref, tol=tol, sign=sign, oracle_idx=idx)
        result = []
        d = F.shape[-1]
        squeeze_k = red.uses_k and d == 1
        for out, o in zip(outs, spec.outputs()):
            if o.kind == "float":
                t, sc = (tol, ref.abs()) if red.uses_k else (tol[..., 0, :], ref.abs()[..., 0, :])
                t, sc = (t[..., 0], sc[..., 0]) if squeeze_k else (t, sc)
                result.append(Expectation("float", out, t, sc, extra=info))
            else:
                result.append(Expectation("index", out, extra=info))
        return result


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------


def _grid_leaves(spec, arrays, M, N, dtype):
    nb = batch_ndim(spec, arrays)
    shape = full_shape(spec, arrays, M, N)
    leaves = []
    for v, a in zip(spec.variables, arrays):
        g = grid_view(v, a.to(dtype), nb).expand(shape + (v.dim,)).clone().requires_grad_(True)
        leaves.append(g)
    return leaves, nb


def _float_outputs(spec, outs):
    return [o for o, meta in zip(outs, spec.outputs()) if meta.kind == "float"]


def _partial_bounds(spec, Fs, cots):
    """Non-negative weights W bounding |d output / d F| x |cotangent| without cancellation.

    The gradient of ``sum W F`` then gives per-pair magnitudes of the terms a
    backend's gradient reduction adds up, even where they cancel exactly (the
    softmax gradient ``p (G - out)`` is 0 when G does not depend on j).
    None for reductions whose gradient terms do not cancel (Sum, selections).
    """
    name = spec.reduction
    F = Fs[0]
    if name == "LogSumExp":
        e = cots[0].abs()[..., None, :]
        return [torch.softmax(F, dim=-2) * e]
    if name == "LogSumExpWeight":
        G = Fs[1]
        e = cots[0].abs()[..., None, :]
        ex = torch.exp(F - _safe(F.amax(-2, keepdim=True)))
        S = (ex * G).sum(-2, keepdim=True).abs()
        return [(ex * G.abs() / S * e).sum(-1, keepdim=True), ex / S * e]
    if name == "SumSoftMaxWeight":
        G = Fs[1]
        e = cots[0].abs()[..., None, :]
        p = torch.softmax(F, dim=-2)
        out = (p * G).sum(-2, keepdim=True)
        return [(p * (G.abs() + out.abs()) * e).sum(-1, keepdim=True), p * e]
    return None


def _grad(loss, leaves, create_graph, retain=False):
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    res = torch.autograd.grad(
        loss, leaves, create_graph=create_graph, retain_graph=create_graph or retain, allow_unused=True
    )
    return [torch.zeros_like(leaf) if c is None else c for leaf, c in zip(leaves, res)]


def dense_gradients(
    spec,
    arrays,
    M,
    N,
    cotangents,
    *,
    dtype=F64,
    indices=None,
    directions=None,
    perturb=None,
    mask=None,
    ranges=None,
):
    """First-order (``directions is None``) or second-order gradients on the dense computation.

    Returns ``(grads, magnitudes)``: per variable, the gradient (shaped like the
    variable's array) and the sum of the absolute values of its per-pair
    contributions.  Second order: the gradient of ``sum_p <grad_p, directions_p>``.
    Block-sparse: ``ranges`` (pykeops' 6-tuple) or its :func:`oriented_mask` ``mask``;
    the pairs left out contribute nothing.
    """
    if mask is None and ranges is not None:
        mask = oriented_mask(ranges_mask(ranges, M, N), spec.axis)
    leaves, nb = _grid_leaves(spec, arrays, M, N, dtype)
    Fs = dense(spec, arrays, M, N, dtype=dtype, grid_leaves=leaves, perturb=perturb)
    if mask is not None:
        Fs = apply_mask(spec, Fs, mask, weights=True)
    outs = _float_outputs(spec, reduce_dense(spec, Fs, indices=indices, mask=mask))
    loss = sum((o * c.to(dtype)).sum() for o, c in zip(outs, cotangents))
    second = directions is not None
    contribs = _grad(loss, leaves, second, retain=True)
    if second:
        grads1 = [sum_back(c, v, a.shape, nb) for c, v, a in zip(contribs, spec.variables, arrays)]
        loss2 = sum((g * d.to(dtype)).sum() for g, d in zip(grads1, directions))
        contribs = _grad(loss2, leaves, False)
    grads = [
        sum_back(c.detach(), v, a.shape, nb).to(F64) for c, v, a in zip(contribs, spec.variables, arrays)
    ]
    mags = [
        sum_back(c.detach().abs(), v, a.shape, nb).to(F64)
        for c, v, a in zip(contribs, spec.variables, arrays)
    ]
    if not second:
        weights = _partial_bounds(spec, [f.detach() for f in Fs], [c.to(dtype) for c in cotangents])
        if weights is not None:
            if mask is not None:  # 0 x inf at the pairs left out: no contribution
                weights = [torch.where(mask, w, torch.zeros_like(w)) for w in weights]
                loss_mag = sum(
                    torch.where(mask, w * f, torch.zeros_like(w)).sum() for w, f in zip(weights, Fs)
                )
            else:
                loss_mag = sum((w * f).sum() for w, f in zip(weights, Fs))
            bound = _grad(loss_mag, leaves, False)
            mags = [
                torch.maximum(m, sum_back(c.detach().abs(), v, a.shape, nb).to(F64))
                for m, c, v, a in zip(mags, bound, spec.variables, arrays)
            ]
    terms = [max(1, leaf.numel() // max(1, a.numel())) for leaf, a in zip(leaves, arrays)]
    return grads, mags, terms


def gradient_expectations(case, cotangents, *, indices=None, directions=None, low_precision=None):
    """Per variable: (expected gradient, tolerance, magnitude) for first or second order.

    ``low_precision``: the same gradients computed in float32 through the symbolic
    gradient reductions (by the reference backend): their deviation from the
    oracle estimates the rounding error of the symbolic gradient formulas, which
    may cancel where torch.autograd's formulas do not (e.g. the derivative of
    ``sin(x)/x`` near 0).  It only widens tolerances, by at most 1e-3 of the
    magnitude in float32 units, so a broken reference cannot hide a wrong result.
    """
    with single_threaded():
        return _gradient_expectations(case, cotangents, indices, directions, low_precision)


def _gradient_expectations(case, cotangents, indices, directions, low_precision):
    spec = case.spec
    arrays = [torch.from_numpy(a) for a in case.arrays64()]
    M, N = case.M, case.N
    eps, eps_acc = EPS[spec.dtype], EPS[acc_dtype(spec)]
    cot64 = [c.to(F64) for c in cotangents]
    dirs64 = None if directions is None else [d.to(F64) for d in directions]
    mask = case_mask(case)
    g64, mags, terms = dense_gradients(
        spec, arrays, M, N, cot64, indices=indices, directions=dirs64, mask=mask
    )
    arr32 = [a.to(torch.float32) for a in arrays]
    g32, _, _ = dense_gradients(
        spec,
        arr32,
        M,
        N,
        [c.to(torch.float32) for c in cot64],
        dtype=torch.float32,
        indices=indices,
        directions=None if dirs64 is None else [d.to(torch.float32) for d in dirs64],
        mask=mask,
    )
    gp, _, _ = dense_gradients(
        spec,
        _perturbed(arrays, 16 * eps, 3),
        M,
        N,
        cot64,
        indices=indices,
        directions=dirs64,
        perturb=(eps, 3),
        mask=mask,
    )
    result = []
    low = low_precision if low_precision is not None else [None] * len(g64)
    # the natural scale of this computation: gradients that cancel to ~0 are compared to it
    mags = [torch.nan_to_num(m, nan=0.0) for m in mags]
    scale = max(
        [float(m.max()) if m.numel() else 0.0 for m in mags]
        + [float(torch.nan_to_num(a.abs(), nan=0.0).max()) if a.numel() else 0.0 for a in g64]
        + [0.0]
    )
    for a, b, c, mag, n, r in zip(g64, g32, gp, mags, terms, low):
        dev = (b.to(F64) - a).abs()
        if r is not None:
            cap = 1e-3 * (mag + a.abs() + scale)
            rd = (r.to(F64) - a).abs()
            dev = torch.maximum(dev, torch.minimum(torch.where(torch.isfinite(rd), rd, cap), cap))
        noise = 8 * dev * (eps / EPS32) + (c - a).abs()
        noise = torch.where(torch.isfinite(noise), noise, torch.full_like(noise, math.inf))
        fc = fac(n, spec.sum_scheme)
        # eps (not eps_acc) x magnitudes: the forward outputs a gradient reduction reuses (OUT, LSE)
        # and the cotangents come in the dtype, each rounded once
        tol = (eps_acc * fc + 4 * eps) * (mag + scale) + noise + 2 * eps * a.abs() + TINY[spec.dtype]
        if directions is not None:
            tol = 2 * tol
        result.append((a, tol, mag))
    return result
