"""Comparisons of a backend's results with the oracle, with failures that explain themselves.

Every failure message gives: what was computed (reduction, axis, dtype, formula,
argument shapes, M, N, batch, seed), which output or gradient is wrong, how many
entries, the maximum absolute and relative errors (relative to the magnitude of
the terms reduced) and where, the worst entry against its tolerance, and a
minimal runnable snippet (:mod:`conformance.repro`).
"""

from __future__ import annotations

import math
import traceback
from dataclasses import replace

import numpy as np
import torch

from polykeops.formula.nodes import CAT_I, CAT_J
from polykeops.formula.reductions import REDUCTIONS

from .gradients import gradient_expectations
from .pending import issue11_sensitive, signed_zero_ambiguous
from .repro import snippet
from .runner import cotangents_for, directions_for, run_forward, run_gradients, to_torch_cpu
from .tolerances import CaseOracle, Rejected


def _with_indices(red) -> str | None:
    """The reduction of the same selection as ``red`` that returns both values and indices."""
    for other in REDUCTIONS.values():
        same = type(other) is type(red) and other.selection_kind == red.selection_kind
        if same and other.want_value and other.want_index:
            return other.name
    return None


#: selection reductions (Min, KMin, Min_ArgMin, ...) -> the variant that also returns indices
WITH_INDICES = {
    name: both
    for name, red in REDUCTIONS.items()
    if red.is_selection and red.want_value and (both := _with_indices(red)) is not None
}


class ConformanceFailure(AssertionError):
    """A backend result disagrees with the oracle (the message explains it)."""


def reject(reason: str):
    """Discard the current hypothesis example: ``reason`` says why it is outside the suite's scope."""
    from hypothesis import reject as _reject

    _reject()


# ---------------------------------------------------------------------------
# report formatting
# ---------------------------------------------------------------------------


def describe_case(case, bt) -> str:
    spec = case.spec
    over = "j (axis=1, output indexed by i)" if spec.axis == 1 else "i (axis=0, output indexed by j)"
    lines = [
        f"backend {bt.label!r}: {spec.reduction} over {over}, dtype {spec.dtype}"
        + (f", K={spec.k}" if spec.k is not None else "")
        + (f", sum_scheme={spec.sum_scheme}" if spec.sum_scheme != "block_sum" else "")
        + f", {case.array_kind} arrays",
    ]
    from polykeops.formula.printing import to_string

    for n, f in enumerate(spec.formulas):
        lines.append(f"  formula{' ' + str(n + 1) if len(spec.formulas) > 1 else ''}: {to_string(f)}")
    for v, shape in zip(spec.variables, case.shapes):
        cat = {CAT_I: "Vi", CAT_J: "Vj"}.get(v.cat, "Pm")
        lines.append(f"  argument {v.index}: {cat}(dim {v.dim}) shape {tuple(shape)}")
    lines.append(
        f"  M={case.M}, N={case.N}, batch={tuple(case.batch)}, data seed={case.seed} ({case.data} data"
        + (f", {len(case.specials)} special values" if case.specials else "")
        + ")"
    )
    if case.specials:
        shown = ", ".join(
            f"argument {p} flat index {idx} = {value!r}" for p, idx, value in case.specials[:8]
        )
        lines.append(f"  special values: {shown}" + (" ..." if len(case.specials) > 8 else ""))
    if case.ranges is not None:
        lines.append("  " + describe_ranges(case))
    return "\n".join(lines)


def describe_ranges(case) -> str:
    """One line about a case's block-sparse ranges (what is kept, which rows reduce over nothing)."""
    from .ranges_mask import ranges_mask

    r = case.ranges
    mask = ranges_mask(r.arrays(), case.M, case.N)
    rows = mask.any(-1) if case.spec.axis == 1 else mask.any(-2)
    name = "i" if case.spec.axis == 1 else "j"
    return (
        f"block-sparse ranges: {r.shapes[0][-2]} i-ranges, {r.shapes[3][-2]} j-ranges, "
        f"{r.shapes[2][-2]} (i-range, j-interval) pairs"
        + (f", per-batch (ranges batch shape {r.batch})" if r.batch else "")
        + f"; {int(mask.sum())} of {mask.numel()} (i, j) pairs kept, "
        f"{int((~rows).sum())} of {rows.numel()} output rows ({name}) reduce over nothing"
    )


def _where(idx, shape, case, what: str) -> str:
    """Human-readable position of a flat index in an output of ``shape``."""
    pos = np.unravel_index(int(idx), shape)
    nb = len(case.batch)
    parts = []
    if nb:
        parts.append(f"batch {tuple(int(p) for p in pos[:nb])}")
    rest = [int(p) for p in pos[nb:]]
    if what == "output" and rest:
        row = "i" if case.spec.axis == 1 else "j"
        parts.append(f"{row}={rest[0]}")
        rest = rest[1:]
        if case.spec.k is not None and rest:
            parts.append(f"k={rest[0]}")
            rest = rest[1:]
        if rest:
            parts.append(f"component {rest[0]}")
    elif rest:
        parts.append("index " + str(tuple(rest)))
    return ", ".join(parts) or "scalar"


def _fmt(x) -> str:
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return repr(x)
    return f"{x:.6g}"


def float_mismatches(got, exp, tol):
    got = got.to(torch.float64)
    exp = exp.to(torch.float64)
    err = (got - exp).abs()
    ok = (torch.isnan(got) & torch.isnan(exp)) | (got == exp)
    ok = ok | (torch.isfinite(exp) & torch.isfinite(got) & (err <= tol))
    return ~ok, err


def summarize_floats(label, got, exp, tol, scale, bad, err, case, what="output") -> list[str]:
    n_bad, total = int(bad.sum()), bad.numel()
    lines = [f"{label}: {n_bad} of {total} entries out of tolerance"]
    shape = tuple(exp.shape)
    fin = torch.isfinite(err)
    if bool(fin.any()):
        e = torch.where(fin, err, torch.zeros_like(err))
        k = int(torch.argmax(e.reshape(-1)))
        lines.append(
            f"  max abs error {_fmt(e.reshape(-1)[k])} at {_where(k, shape, case, what)}: got "
            f"{_fmt(got.reshape(-1)[k])}, expected {_fmt(exp.reshape(-1)[k])}, tolerance "
            f"{_fmt(tol.reshape(-1)[k])}"
        )
        s = scale if scale is not None else exp.abs()
        rel = e / torch.clamp(s.to(torch.float64), min=1e-300)
        rel = torch.where(torch.isfinite(rel), rel, torch.zeros_like(rel))
        k2 = int(torch.argmax(rel.reshape(-1)))
        lines.append(
            f"  max rel error {_fmt(rel.reshape(-1)[k2])} (relative to the magnitude of the reduced "
            f"terms, {_fmt(s.reshape(-1)[k2])}) at {_where(k2, shape, case, what)}"
        )
    badk = torch.nonzero(bad.reshape(-1)).reshape(-1)
    if len(badk):
        ratio = torch.where(
            torch.isfinite(err), err / torch.clamp(tol, min=1e-300), torch.full_like(err, math.inf)
        )
        rk = ratio.reshape(-1)[badk]
        k = int(badk[int(torch.argmax(torch.nan_to_num(rk, nan=math.inf)))])
        lines.append(
            f"  worst against its tolerance at {_where(k, shape, case, what)}: got "
            f"{_fmt(got.reshape(-1)[k])}, expected {_fmt(exp.reshape(-1)[k])}, error "
            f"{_fmt(err.reshape(-1)[k])}, tolerance {_fmt(tol.reshape(-1)[k])}"
        )
    return lines


def fail(case, bt, title: str, details: list[str], *, mode="forward", device="cpu", cause=None):
    text = [
        f"polykeops conformance: {title}",
        describe_case(case, bt),
        *details,
        "",
        "Reproduce (run from the repository root):",
        "-" * 60,
        snippet(case, bt, mode=mode, device=device),
        "-" * 60,
    ]
    err = ConformanceFailure("\n".join(text))
    if cause is not None:
        raise err from cause
    raise err


# ---------------------------------------------------------------------------
# index outputs
# ---------------------------------------------------------------------------


def check_indices(exp, got_idx, got_val=None):
    """Problems with selected indices (list of strings) -- see the oracle's tolerance policy."""
    info = exp.extra
    F, nF, ex = info["F"], info["noise"], info["exact"]
    ref, tol, oracle_idx = info["ref"], info["tol"], info["oracle_idx"]
    C = F.shape[-2]
    idx = got_idx.to(torch.int64)
    K = ref.shape[-2]
    # bring to (..., R, K, D)
    if idx.dim() == ref.dim() - 1:
        idx = idx.unsqueeze(-2) if K == 1 and ref.shape[-1] == idx.shape[-1] else idx.unsqueeze(-1)
    if got_val is not None and got_val.dim() == ref.dim() - 1:
        got_val = (
            got_val.unsqueeze(-2) if K == 1 and ref.shape[-1] == got_val.shape[-1] else got_val.unsqueeze(-1)
        )
    problems = []
    # block-sparse ranges: a rank with no kept pair left must hold index -1
    void = (oracle_idx < 0).expand_as(idx)
    bad_void = void & (idx != -1)
    if bool(bad_void.any()):
        k = int(torch.nonzero(bad_void.reshape(-1))[0])
        problems.append(
            f"{int(bad_void.sum())} indices should be -1 (the row has no kept (i, j) pair left for this "
            f"rank: it reduces over nothing) but are not; first at flat position {k} "
            f"{tuple(int(x) for x in np.unravel_index(k, tuple(idx.shape)))} of (*batch, rows, K, dim): "
            f"got {int(idx.reshape(-1)[k])}"
        )
    out_of_range = ~void & ((idx < 0) | (idx >= C))
    if bool(out_of_range.any()):
        k = int(torch.nonzero(out_of_range.reshape(-1))[0])
        got = int(idx.reshape(-1)[k])
        hint = " (-1: the reduction of nothing, but kept pairs are left for this rank)" if got == -1 else ""
        problems.append(f"index out of range [0, {C}): {got} (flat position {k}){hint}")
    if problems:
        return problems, None
    idx_all = idx
    idx = torch.where(void, torch.zeros_like(idx), idx)
    Fg = torch.take_along_dim(F, idx, dim=-2)
    ng = torch.take_along_dim(nF, idx, dim=-2)
    nan_ref = torch.isnan(ref)
    inf_ref = torch.isinf(ref)
    strict = torch.zeros_like(nan_ref)
    # exactly computed ties (and NaN / infinite rows): the documented order is the only answer
    if K == 1:
        tied = F == ref
        all_exact = (~tied | ex).all(-2, keepdim=True)
        strict = nan_ref | inf_ref | (all_exact & (Fg == ref))
    else:
        last = ref[..., -1:, :]
        cand = (F <= last) | torch.isnan(F)
        row_exact = (~cand | ex).all(-2, keepdim=True) & torch.isfinite(last) | torch.isnan(last)
        strict = row_exact.expand_as(ref) | nan_ref
        strict = strict | (inf_ref & (Fg == ref))
    close = ((Fg - ref).abs() <= tol + ng) | (torch.isnan(Fg) & nan_ref) | (inf_ref & (Fg == ref))
    wrong = torch.where(strict, idx != oracle_idx, ~close) & ~void
    if bool(wrong.any()):
        k = int(torch.nonzero(wrong.reshape(-1))[0])
        kind = "tie order / NaN rule" if bool(strict.reshape(-1)[k]) else "value"
        problems.append(
            f"{int(wrong.sum())} of {wrong.numel()} indices wrong ({kind}); first at flat position {k}"
            f" {tuple(int(x) for x in np.unravel_index(k, tuple(wrong.shape)))}"
            " of (*batch, rows, K, dim): got "
            f"j={int(idx.reshape(-1)[k])} (value {_fmt(Fg.reshape(-1)[k])}), expected j="
            f"{int(oracle_idx.reshape(-1)[k])} (value {_fmt(ref.reshape(-1)[k])}, tolerance "
            f"{_fmt(tol.reshape(-1)[k])})"
            + ("; among equal values the smallest index wins, NaN first" if kind != "value" else "")
        )
    if K > 1:
        distinct = -1 - torch.arange(K, device=idx.device).reshape(K, 1)  # voids never collide
        srt = torch.sort(torch.where(void, distinct, idx), dim=-2).values
        dup = (srt[..., 1:, :] == srt[..., :-1, :]).any(-2)
        if bool(dup.any()):
            problems.append(f"{int(dup.sum())} rows select the same index twice")
    if got_val is not None:
        gv = got_val.to(torch.float64)
        mism = ~(((gv - Fg).abs() <= tol + ng) | (torch.isnan(gv) & torch.isnan(Fg)) | (gv == Fg)) & ~void
        if bool(mism.any()):
            k = int(torch.nonzero(mism.reshape(-1))[0])
            problems.append(
                f"{int(mism.sum())} values do not match the formula at their own index: e.g. "
                f"value {_fmt(gv.reshape(-1)[k])} but F at index {int(idx.reshape(-1)[k])} is "
                f"{_fmt(Fg.reshape(-1)[k])}"
            )
    return problems, idx_all


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def has_nonfinite_specials(case) -> bool:
    """Whether ``case`` places NaN or infinities (or values too large for the dtype's generic
    cases) in its data: only then may its formula values be non-finite.  Finite special values
    (zeros, halves, tiny and subnormal numbers, ties) keep the generic checks of the oracle."""
    return any(not math.isfinite(v) or abs(v) > 1e4 for _, _, v in case.specials)


def _oracle(case, deterministic: bool):
    if not deterministic and issue11_sensitive(case.spec):
        reject("issue 11 pending: ReLU's negative zero reaches a sign-sensitive op")
    if not deterministic and signed_zero_ambiguous(case.spec):
        reject("the sign of a computed zero (IEEE: the order of operations) reaches atan2, 1/x...")
    try:
        return CaseOracle(case, allow_special=has_nonfinite_specials(case))
    except Rejected as exc:
        if deterministic:
            raise AssertionError(f"conformance suite bug: a hand-written case was rejected: {exc}") from None
        reject(str(exc))


def _run_or_fail(fn, case, bt, mode, device):
    try:
        return fn()
    except ConformanceFailure:
        raise
    except Exception as exc:  # the backend raised: a failure, explained
        tb = traceback.format_exception_only(type(exc), exc)
        fail(
            case,
            bt,
            "the backend raised an exception",
            ["  " + "".join(tb).strip()],
            mode=mode,
            device=device,
            cause=exc,
        )


def check_forward(bt, case, *, device: str = "cpu", deterministic: bool = False, runner=None):
    """Run ``case`` on the backend and compare every output with the oracle (``runner``: how the
    backend is run, :func:`~.runner.run_forward` by default)."""
    oracle = _oracle(case, deterministic)
    arrays64 = case.arrays64()
    runner = runner or run_forward
    outs, problems = _run_or_fail(
        lambda: runner(bt, case, arrays64, device), case, bt, "forward", device
    )
    if problems:
        fail(case, bt, "the backend broke the output contract", ["  " + p for p in problems], device=device)
    exps = oracle.expectations()
    details = []
    got_vals = None
    for pos, (o, exp) in enumerate(zip(outs, exps)):
        got = to_torch_cpu(o)
        if exp.kind == "float":
            bad, err = float_mismatches(got, exp.expected, exp.tol)
            got_vals = got
            if bool(bad.any()):
                details += summarize_floats(
                    f"output {pos} (values)",
                    got.to(torch.float64),
                    exp.expected,
                    exp.tol,
                    exp.scale,
                    bad,
                    err,
                    case,
                )
        else:
            probs, _ = check_indices(exp, got, got_vals if case.spec.red.want_value else None)
            details += [f"output {pos} (indices): {p}" for p in probs]
    if details:
        fail(case, bt, "wrong reduction result", details, device=device)
    return outs


class _Reference:
    name = "reference"


_REFERENCE = _Reference()


def backend_indices(bt, case, device):
    """For a selection reduction: the indices the backend selects (validated), oracle layout."""
    spec = case.spec
    sib = replace(case, spec=spec.with_(reduction=WITH_INDICES[spec.reduction]))
    outs = check_forward(bt, sib, device=device, deterministic=True)
    idx = to_torch_cpu(outs[-1]).to(torch.int64)
    d = spec.formulas[0].dim
    if spec.k is not None and d == 1:
        idx = idx.unsqueeze(-1)
    return idx


def check_gradients(bt, case, *, order: int = 1, device: str = "cpu", deterministic: bool = False):
    """First-order (or second-order) gradients w.r.t. every argument, against torch.autograd."""
    _oracle(case, deterministic)
    arrays64 = case.arrays64()
    mode = "gradient" if order == 1 else "second"
    indices = None
    if case.spec.red.is_selection:
        indices = backend_indices(bt, case, device)
    cots = cotangents_for(case)
    dirs = directions_for(case) if order == 2 else None
    got = _run_or_fail(
        lambda: run_gradients(bt, case, arrays64, cots, device=device, directions=dirs),
        case,
        bt,
        mode,
        device,
    )
    low = None
    try:  # the symbolic gradient formulas' own rounding, for the tolerance (see gradient_expectations)
        case32 = replace(case, spec=case.spec.with_(dtype="float32"), array_kind="torch")
        low = run_gradients(_REFERENCE, case32, case32.arrays64(), cots, directions=dirs)
    except Exception:
        low = None
    expected = gradient_expectations(case, cots, indices=indices, directions=dirs, low_precision=low)
    details = []
    for p, (g, (e, tol, mag)) in enumerate(zip(got, expected)):
        if tuple(g.shape) != tuple(e.shape):
            details.append(f"gradient of argument {p}: shape {tuple(g.shape)}, expected {tuple(e.shape)}")
            continue
        bad, err = float_mismatches(g, e, tol)
        if bool(bad.any()):
            v = case.spec.variables[p]
            cat = {CAT_I: "Vi", CAT_J: "Vj"}.get(v.cat, "Pm")
            details += summarize_floats(
                f"{'second-order ' if order == 2 else ''}gradient w.r.t. argument {p} ({cat}, shape "
                f"{tuple(case.shapes[p])})",
                g,
                e,
                tol,
                mag,
                bad,
                err,
                case,
                what="argument",
            )
    if details:
        fail(
            case,
            bt,
            f"wrong {'second-order ' if order == 2 else ''}gradient",
            details,
            mode=mode,
            device=device,
        )
