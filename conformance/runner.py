"""Driving the backend under test through the public API.

Forward values go through :func:`polykeops.common.call.run_spec` (what
``Genred`` and ``LazyTensor`` reductions call), with torch tensors
(:class:`polykeops.torch.tools.TorchTools`) or NumPy arrays; gradients flow
through :mod:`polykeops.torch.autograd`, which evaluates the symbolic gradient
reductions with the same backend.
"""

from __future__ import annotations

import numpy as np
import torch

from polykeops.backends.split_j import evaluate_split
from polykeops.common.call import finish_outputs, prepare_call, run_spec

from .dense_values import TORCH_DTYPES


def tools_for(kind: str):
    if kind == "numpy":
        from polykeops.numpy.tools import NumpyTools

        return NumpyTools()
    from polykeops.torch.tools import TorchTools

    return TorchTools()


def backend_arrays(case, arrays64, device: str = "cpu", requires_grad: bool = False):
    """The case's data as the backend receives it (dtype, array kind, device)."""
    if case.array_kind == "numpy":
        return [np.ascontiguousarray(a.astype(case.dtype)) for a in arrays64]
    dt = TORCH_DTYPES[case.dtype]
    return [torch.from_numpy(a).to(device=device, dtype=dt).requires_grad_(requires_grad) for a in arrays64]


def backend_ranges(case, kind: str, device: str = "cpu"):
    """The case's block-sparse 6-tuple as the reduction receives it (None without ranges):
    int64 NumPy arrays, or torch tensors on the arguments' device."""
    if case.ranges is None:
        return None
    arrays = case.ranges.arrays()
    if kind == "numpy":
        return tuple(arrays)
    return tuple(torch.from_numpy(r).to(device) for r in arrays)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


class ContractViolation(AssertionError):
    """The backend broke the contract (output kind, dtype, shape, device, mutated inputs)."""


def _describe(x) -> str:
    shape = tuple(getattr(x, "shape", ()))
    return f"{type(x).__module__}.{type(x).__name__} dtype={getattr(x, 'dtype', '?')} shape={shape}"


def to_torch_cpu(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().cpu()


def expected_out_shapes(case):
    spec = case.spec
    rows = case.M if spec.axis == 1 else case.N
    shapes = []
    for o in spec.outputs():
        if spec.k is not None:
            d = o.dim // spec.k
            tail = (spec.k,) if d == 1 else (spec.k, d)
        else:
            tail = (o.dim,)
        shapes.append(tuple(case.batch) + (rows,) + tail)
    return shapes


def check_contract(case, args, outs, snapshot, device):
    """Output kinds, dtypes, shapes and devices; inputs must not be modified."""
    spec = case.spec
    metas = spec.outputs()
    problems = []
    if len(outs) != len(metas):
        problems.append(f"expected {len(metas)} output(s) ({[o.kind for o in metas]}), got {len(outs)}")
    for pos, (o, meta, shape) in enumerate(zip(outs, metas, expected_out_shapes(case))):
        want_dtype = "int64" if meta.kind == "index" else spec.dtype
        if case.array_kind == "numpy":
            if not isinstance(o, np.ndarray):
                problems.append(f"output {pos}: expected a NumPy array, got {_describe(o)}")
                continue
            got_dtype = str(o.dtype)
        else:
            if not isinstance(o, torch.Tensor):
                problems.append(f"output {pos}: expected a torch tensor, got {_describe(o)}")
                continue
            got_dtype = str(o.dtype).replace("torch.", "")
            if o.device.type != torch.device(device).type:
                problems.append(f"output {pos}: on device {o.device}, inputs on {device}")
        if got_dtype != want_dtype:
            problems.append(f"output {pos} ({meta.kind}): dtype {got_dtype}, expected {want_dtype}")
        if tuple(o.shape) != tuple(shape):
            problems.append(f"output {pos} ({meta.kind}): shape {tuple(o.shape)}, expected {tuple(shape)}")
    for pos, (a, before) in enumerate(zip(args, snapshot)):
        now = to_torch_cpu(a).to(torch.float64)
        if not torch.equal(torch.nan_to_num(now, nan=0.123), torch.nan_to_num(before, nan=0.123)):
            problems.append(f"argument {pos} was modified in place by the backend")
    return problems


def run_forward(bt, case, arrays64, device: str = "cpu"):
    """The backend's outputs for ``case`` (tuple, as returned), and contract problems found."""
    tools = tools_for(case.array_kind)
    args = backend_arrays(case, arrays64, device)
    snapshot = [to_torch_cpu(a).to(torch.float64).clone() for a in args]
    ranges = backend_ranges(case, case.array_kind, device)
    outs = as_tuple(run_spec(tools, case.spec, list(args), backend=bt.name, ranges=ranges))
    problems = check_contract(case, args, outs, snapshot, device)
    return outs, problems


def piece_bounds(case, n: int) -> list[int]:
    """Cuts of the reduced axis (``n`` columns) into 1 to 4 pieces drawn from the case's seed,
    pieces of one column and empty pieces included."""
    rng = np.random.default_rng(case.seed + 7)
    cuts = sorted(int(c) for c in rng.integers(0, n + 1, size=int(rng.integers(0, 4))))
    return [0, *cuts, n]


def run_forward_split(bt, case, arrays64, device: str = "cpu"):
    """Like :func:`run_forward`, but through partial states: the reduced axis cut into pieces
    (:func:`piece_bounds`), each piece's state computed by the backend (``evaluate_states``),
    the states combined with the reduction's own rules and finalized."""
    tools = tools_for(case.array_kind)
    args = backend_arrays(case, arrays64, device)
    snapshot = [to_torch_cpu(a).to(torch.float64).clone() for a in args]
    ranges = backend_ranges(case, case.array_kind, device)
    call, normalised = prepare_call(tools, case.spec, list(args), backend=bt.name, ranges=ranges)
    outs = evaluate_split(call, normalised, piece_bounds(case, call.ny))
    outs = as_tuple(finish_outputs(tools, case.spec, outs))
    return outs, check_contract(case, args, outs, snapshot, device)


def cotangents_for(case, seed_offset: int = 1):
    """Random float64 cotangents, one per float output (run_spec's shapes), regenerated from the seed."""
    rng = np.random.default_rng(case.seed + seed_offset)
    dt = TORCH_DTYPES[case.dtype]
    res = []
    for meta, shape in zip(case.spec.outputs(), expected_out_shapes(case)):
        if meta.kind == "float":  # rounded to the dtype, as the backend receives them
            res.append(torch.from_numpy(rng.standard_normal(shape)).to(dt).to(torch.float64))
    return res


def directions_for(case, seed_offset: int = 2):
    """Random directions (one per argument, shaped like it) for second-order checks."""
    rng = np.random.default_rng(case.seed + seed_offset)
    dt = TORCH_DTYPES[case.dtype]
    return [torch.from_numpy(rng.standard_normal(shape)).to(dt).to(torch.float64) for shape in case.shapes]


def run_gradients(bt, case, arrays64, cotangents, *, device="cpu", directions=None):
    """The backend's first-order gradients (or second-order, with ``directions``) w.r.t. every argument."""
    tools = tools_for("torch")
    dt = TORCH_DTYPES[case.dtype]
    args = backend_arrays(case, arrays64, device, requires_grad=True)
    ranges = backend_ranges(case, "torch", device)
    outs = as_tuple(run_spec(tools, case.spec, list(args), backend=bt.name, ranges=ranges))
    floats = [o for o, meta in zip(outs, case.spec.outputs()) if meta.kind == "float"]
    cots = [c.to(device=device, dtype=dt) for c in cotangents]
    second = directions is not None
    if any(f.requires_grad for f in floats):
        grads = torch.autograd.grad(
            [f for f in floats], args, grad_outputs=cots, allow_unused=True, create_graph=second
        )
    else:  # the outputs do not depend on the arguments
        grads = [None] * len(args)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(args, grads)]
    if second:
        terms = [
            (g * d.to(device=device, dtype=dt)).sum() for g, d in zip(grads, directions) if g.requires_grad
        ]
        if not terms:  # no first-order gradient depends on the arguments
            return [torch.zeros(a.shape, dtype=torch.float64) for a in args]
        grads = torch.autograd.grad(sum(terms), args, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(args, grads)]
    return [g.detach().cpu().to(torch.float64) for g in grads]
