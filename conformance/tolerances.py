"""The tolerance policy of the oracle: how far a correct backend's outputs may be from the dense values.

:class:`CaseOracle` holds a drawn case's dense values (:mod:`.dense_values`) with
their noise estimates and turns them into one :class:`Expectation` per output.
The gradients' expectations (:mod:`.gradients`) follow the same policy.

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
  exactly representable and exactly computed (``exact``: the same in float32 and float64,
  and unchanged by the perturbation below, so not a comparison of nearly equal values),
  the smallest index must win
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

Rejected cases: a random case whose formula values are non-finite or larger than
1e4 (20 in float16) is discarded (``hypothesis.reject``): overflow is then the
formula's, not the backend's.

Special values: an expected NaN must be NaN, an expected infinity the same
infinity; NaN wins Min/Max/ArgMin (first NaN) and comes first in KMin, as
documented in :mod:`polykeops.formula.reductions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .dense_values import (
    F64,
    TORCH_DTYPES,
    _safe,
    _select,
    dense,
    first_index,
    kmin_order,
    perturbed_arrays,
    reduce_dense,
    single_threaded,
)
from .ranges_mask import apply_mask, case_mask

EPS = {name: torch.finfo(dt).eps for name, dt in TORCH_DTYPES.items()}
EPS32 = EPS["float32"]
#: the spacing of the smallest (subnormal) numbers: outputs that underflow are exact to that
TINY = {name: torch.finfo(dt).tiny * torch.finfo(dt).eps for name, dt in TORCH_DTYPES.items()}
#: |F| above which a generic case is rejected as meaningless (float16: sums must not overflow)
VALUE_LIMIT = {"float16": 20.0, "bfloat16": 1e4, "float32": 1e4, "float64": 1e4}


def _weighted(p, x):
    """``p * x`` with 0 where the weight ``p`` is 0 (not NaN from 0 x inf)."""
    return torch.where(p == 0, torch.zeros_like(p * 0), p * torch.nan_to_num(x, nan=math.inf))


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


class Rejected(Exception):
    """The case is outside the suite's scope (non-finite or huge values): not a backend failure."""


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
            spec, perturbed_arrays(self.arrays, 16 * self.eps, 1), M, N, perturb=(self.eps, 1), bounds=bounds
        )
        pert2 = dense(spec, perturbed_arrays(self.arrays, 16 * self.eps, 2), M, N, perturb=(self.eps, 2))
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
            # exact: computed exactly in float32 and float64, and not next to a discontinuity that
            # a rounding error crosses (a comparison of nearly equal values, flipped by the
            # perturbation): there, another correct backend may compute the other value
            stable = ~(dev > 0.25 * (f.abs() + 1))
            self.exact.append(
                ((f32 == f) | (torch.isnan(f32) & torch.isnan(f)))
                & ((rep == f) | ~torch.isfinite(f))
                & stable
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
                # log(sum_j p_j e^{n_j}) bounds the change of every F_j by up to n_j (sum_j p_j n_j
                # for small noise; a term far below the max can still take over when n_j is large)
                moved = torch.log1p(_weighted(p, torch.expm1(nF)).sum(-2))
                tol = ea * fc * (1 + 0 * r) + moved + 2 * e * r.abs()
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
                    + _weighted(ex, G.abs() * torch.expm1(nF + tol_m)).sum(-2)
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
                # weights p_j e^{d_j} / sum p e^d with |d_j| <= n_j: the output moves by at most
                # sum_j p_j expm1(n_j) |G_j - out| / sum_j p_j e^{-n_j} (first order: p n |G - out|)
                moved = _weighted(p, (G - r[..., None, :]).abs() * torch.expm1(nF)).sum(-2)
                moved = moved / _weighted(p, torch.exp(-nF)).sum(-2)
                tol = (
                    ea * fc * mag
                    + moved
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
