"""Minimal runnable snippets that reproduce a failing case.

A snippet regenerates the case's data from its seed (the recipe of
:class:`.strategies.Case`), builds the reduction with ``Genred`` (the
formula printed in the KeOps formula language; when the text does not parse back
to the same formula, the spec is built from nodes instead), with the case's
block-sparse ``ranges`` 6-tuple written out when it has one, calls the backend
and compares with the dense oracle (:mod:`.dense_values`, :mod:`.gradients`).  Run it
from the repository root (or anywhere, when polykeops is installed).
"""

from __future__ import annotations

from polykeops.formula.nodes import CAT_I, CAT_J, walk
from polykeops.formula.printing import to_string

from .strategies import DATA_KINDS

_CAT = {CAT_I: "Vi", CAT_J: "Vj"}
#: the suite's package as imported now: ``conformance`` in a checkout, ``polykeops.conformance`` installed
SUITE = __package__


def _roundtrips(spec) -> bool:
    """Whether ``Genred`` with the printed formula(s) builds exactly this spec."""
    try:
        from polykeops.numpy import Genred

        kwargs = {"reduction_op": spec.reduction, "axis": spec.axis}
        if len(spec.formulas) > 1:
            kwargs["formula2"] = to_string(spec.formulas[1])
        if spec.k is not None:
            kwargs["opt_arg"] = spec.k
        built = Genred(to_string(spec.formulas[0]), [], **kwargs).spec
        return built.formulas == spec.formulas and built.variables == spec.variables
    except Exception:
        return False


def _node_code(f, names):
    """Python code that rebuilds ``f`` from :class:`Node` constructors, and the name of the result.

    ``names`` (shared by the formulas of one spec) maps the nodes already written to their names.
    """
    lines = []
    for n in walk(f):
        if n in names:
            continue
        if n.op == "Var":
            text = f"Var({n.params[0]}, {n.params[1]}, {n.params[2]})"
        else:
            args = ", ".join(names[a] for a in n.args)
            comma = "," if len(n.args) == 1 else ""
            text = f"Node({n.op!r}, ({args}{comma}), {n.params!r}, {n.dim})"
        name = f"n{len(names)}"
        names[n] = name
        lines.append(f"{name} = {text}")
    return "\n".join(lines), names[f]


def _registration(bt) -> list[str]:
    if bt.origin == "registered":
        return []
    module, _, attr = bt.origin.partition(":")
    return [
        "from polykeops.backends import register_backend",
        f"from {module} import {attr.split('.')[0]}",
        f"register_backend({bt.name!r}, {attr}, replace=True)",
    ]


def data_lines(case, var: str = "a"):
    """Lines regenerating the case's data (float64 NumPy arrays), and their names."""
    lines = [f"rng = np.random.default_rng({case.seed})"]
    if case.data == "cancelling":
        lines.append(f"from {SUITE}.strategies import cancelling")
    names = []
    for pos, (v, shape) in enumerate(zip(case.spec.variables, case.shapes)):
        what = {CAT_I: "(*batch, M, dim)", CAT_J: "(*batch, N, dim)"}.get(v.cat, "(*batch, dim)")
        if case.data == "int":
            lo, hi = case.int_range
            expr = f"rng.integers({lo}, {hi + 1}, {tuple(shape)}).astype(np.float64)"
        elif case.data in DATA_KINDS:
            expr = DATA_KINDS[case.data].replace("shape", repr(tuple(shape)))
        else:
            scale = "" if case.scale == 1.0 else f" * {case.scale!r}"
            expr = f"3 * np.tanh(rng.standard_normal({tuple(shape)}) / 3){scale}"
        cat = _CAT.get(v.cat, "Pm")
        lines.append(f"{var}{pos} = {expr}  # {cat}({v.index}, {v.dim}): {what}")
        names.append(f"{var}{pos}")
    for p, idx, value in case.specials:
        lines.append(f"{var}{p}.flat[{idx}] = {value!r}")
    return lines, names


def ranges_lines(case, kind: str, device: str = "cpu") -> list[str]:
    """Lines building the case's block-sparse 6-tuple ``ranges`` (nothing without ranges)."""
    if case.ranges is None:
        return []
    from .strategies import RANGES_NAMES

    lines = ["ranges = ["]
    for name, values, shape in zip(RANGES_NAMES, case.ranges.values, case.ranges.shapes):
        lines.append(f"    np.array({list(values)}, dtype=np.int64).reshape({tuple(shape)}),  # {name}")
    lines.append("]")
    if kind == "numpy":
        lines.append("ranges = tuple(ranges)")
    else:
        lines.append(f"ranges = tuple(torch.from_numpy(r).to({device!r}) for r in ranges)")
    return lines


def snippet(case, bt, *, mode: str = "forward", device: str = "cpu") -> str:
    """The reproduction snippet (``mode``: "forward", "gradient" or "second")."""
    spec = case.spec
    kind = case.array_kind if mode == "forward" else "torch"
    lines = ["import numpy as np", "import torch"]
    lines += _registration(bt)
    front = "polykeops.numpy" if kind == "numpy" else "polykeops.torch"
    dl, names = data_lines(case)
    lines += dl
    if kind == "numpy":
        lines.append(f"args = [x.astype({spec.dtype!r}) for x in ({', '.join(names)},)]")
    else:
        grad = ".requires_grad_()" if mode != "forward" else ""
        lines.append(
            f"args = [torch.from_numpy(x).to(torch.{spec.dtype}).to({device!r}){grad} "
            f"for x in ({', '.join(names)},)]"
        )
    lines += ranges_lines(case, kind, device)
    with_ranges = ", ranges=ranges" if case.ranges is not None else ""
    if _roundtrips(spec):
        lines.append(f"from {front} import Genred")
        opts = [f"reduction_op={spec.reduction!r}", f"axis={spec.axis}"]
        if len(spec.formulas) > 1:
            opts.append(f"formula2={to_string(spec.formulas[1])!r}")
        if spec.k is not None:
            opts.append(f"opt_arg={spec.k}")
        if spec.sum_scheme != "block_sum":
            opts.append(f"sum_scheme={spec.sum_scheme!r}")
        lines.append(f"fn = Genred({to_string(spec.formulas[0])!r}, [], {', '.join(opts)})")
        lines.append(f"out = fn(*args, backend={bt.name!r}{with_ranges})")
        spec_expr = f"fn.spec.with_(dtype={spec.dtype!r})"
    else:
        tools = "NumpyTools as Tools" if kind == "numpy" else "TorchTools as Tools"
        lines.append("from fractions import Fraction")
        lines.append("from polykeops.formula.nodes import Node, Var")
        lines.append("from polykeops.formula.spec import ReductionSpec")
        lines.append(f"from {front}.tools import {tools}")
        lines.append("from polykeops.common.call import run_spec")
        forms, names = [], {}
        for f in spec.formulas:
            code, name = _node_code(f, names)
            if code:
                lines.append(code)
            forms.append(name)
        variables = ", ".join(f"Var({v.index}, {v.dim}, {v.cat})" for v in spec.variables)
        lines.append(
            f"spec = ReductionSpec({spec.reduction!r}, ({', '.join(forms)},), ({variables},), "
            f"axis={spec.axis}, "
            f"k={spec.k!r}, dtype={spec.dtype!r}, sum_scheme={spec.sum_scheme!r})"
        )
        lines.append(f"out = run_spec(Tools(), spec, args, backend={bt.name!r}{with_ranges})")
        spec_expr = "spec"
    if mode == "forward":
        lines.append(f"from {SUITE}.dense_values import expected_outputs  # the dense float64 torch oracle")
        lines.append(f"expected = expected_outputs({spec_expr}, args{with_ranges})")
        lines.append("outs = out if isinstance(out, tuple) else (out,)")
        lines.append("for o, e in zip(outs, expected):")
        lines.append("    o = torch.as_tensor(np.asarray(o.detach().cpu() if hasattr(o, 'detach') else o))")
        lines.append(
            "    o, e = o.double(), e.double()  # equal infinities and NaN where NaN is expected: no error"
        )
        lines.append("    err = torch.where((o == e) | (o.isnan() & e.isnan()), 0.0, (o - e).abs())")
        lines.append("    print('max abs error', err.max().item())")
        return "\n".join(lines)
    second = mode == "second"
    lines.append(f"rng = np.random.default_rng({case.seed + 1})  # cotangents of the float outputs")
    lines.append("outs = out if isinstance(out, tuple) else (out,)")
    lines.append("floats = [o for o in outs if o.is_floating_point()]")
    lines.append("cots = [torch.from_numpy(rng.standard_normal(tuple(o.shape))).to(o) for o in floats]")
    lines.append(f"grads = torch.autograd.grad(floats, args, cots, allow_unused=True, create_graph={second})")
    if second:
        lines.append(f"rng = np.random.default_rng({case.seed + 2})  # directions")
        lines.append("dirs = [torch.from_numpy(rng.standard_normal(tuple(a.shape))).to(a) for a in args]")
        lines.append("loss = sum((g * d).sum() for g, d in zip(grads, dirs) if g is not None)")
        lines.append("grads = torch.autograd.grad(loss, args, allow_unused=True)")
    lines.append(f"from {SUITE}.gradients import dense_gradients  # torch.autograd on the dense computation")
    lines.append("exact, _, _ = dense_gradients(")
    lines.append(f"    {spec_expr}, [a.detach().double() for a in args], {case.M}, {case.N},")
    lines.append("    [c.double() for c in cots],")
    lines.append(f"    directions={'[d.double() for d in dirs]' if second else 'None'}{with_ranges})")
    lines.append("for p, (g, e) in enumerate(zip(grads, exact)):")
    lines.append("    g = torch.zeros_like(e) if g is None else g.detach().double()")
    lines.append("    print('argument', p, 'max abs error', (g - e).abs().max().item())")
    return "\n".join(lines)
