"""Gradient expectations: ``torch.autograd`` on the dense computation of :mod:`.dense_values`.

Every variable enters as an *expanded* leaf of shape ``(*batch, M, N, dim)``:
the gradient with respect to the expanded leaf gives each (i, j) pair's
contribution, whose sum is the gradient and whose sum of absolute values is the
magnitude the tolerance is relative to.  Second order is the gradient of ``<first-order gradients, V>``.

Their tolerances follow the gradient rule of the policy in :mod:`.tolerances`
(``noise_grad`` and the magnitudes bounded without cancellation are computed here).
"""

from __future__ import annotations

import math

import torch

from .dense_values import (
    F64,
    _safe,
    batch_ndim,
    dense,
    full_shape,
    grid_view,
    perturbed_arrays,
    reduce_dense,
    single_threaded,
    sum_back,
)
from .ranges_mask import apply_mask, case_mask, oriented_mask, ranges_mask
from .tolerances import EPS, EPS32, TINY, acc_dtype, fac


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
        perturbed_arrays(arrays, 16 * eps, 3),
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
