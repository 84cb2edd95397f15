"""Hostile or absurd input gets a PolyKeopsError naming the operand, within milliseconds."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from polykeops.errors import DTypeError, FormulaError, PolyKeopsError, ShapeError
from polykeops.formula.nodes import Const, Var
from polykeops.formula.parser import parse_formula
from polykeops.torch import Genred, LazyTensor, Vi, Vj

x3 = torch.ones(3, 1)
y4 = torch.ones(4, 1)

HOSTILE = {
    "pow_huge_constant": lambda: parse_formula("Pow(IntCst(99999999999999999999), 2147483648)"),
    "pow_huge_exponent": lambda: parse_formula("Pow(IntCst(2), 100000000000000000000)"),
    "lazy_pow": lambda: LazyTensor(10**20) ** 2**31,
    "sumt_huge": lambda: parse_formula("SumT(Var(0,1,0), 2147483648)"),
    "pow_overflow": lambda: parse_formula("Pow(IntCst(3), 100000)"),
    "lazy_pow_overflow": lambda: LazyTensor(3) ** 100000,
    "literal_overflow": lambda: parse_formula("Var(0,1,0) * 1e999"),
    "index_huge": lambda: Genred("Var(99999999, 3, 0)", [], reduction_op="Sum", axis=1),
    "index_too_large": lambda: Var(2**40, 1, 0),
    "dim_huge": lambda: Var(0, 2**40, 0),
    "const_overflow": lambda: Const(10**400),
    "reduction_none": lambda: Genred("x", ["x = Vi(1)"], reduction_op=None, axis=1),
    "out_not_an_array": lambda: Vi(x3).sqdist(Vj(y4)).sum(1, out=3),
    "out_wrong_shape": lambda: Vi(x3).sqdist(Vj(y4)).sum(1, out=torch.empty(4, 1)),
    "out_wrong_dtype": lambda: Vi(x3).sqdist(Vj(y4)).sum(1, out=torch.empty(3, 1, dtype=torch.float64)),
    "float_for_pm": lambda: Genred("x * p", ["x = Vi(1)", "p = Pm(1)"], axis=1)(x3, 2.0),
    "sparse_lazytensor": lambda: Vi(x3.to_sparse()),
    "sparse_genred": lambda: Genred("x * y", ["x = Vi(1)", "y = Vj(1)"], axis=1)(x3.to_sparse(), y4),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_a_clear_error_fast(name):
    t0 = time.perf_counter()
    with pytest.raises(PolyKeopsError) as info:
        HOSTILE[name]()
    assert time.perf_counter() - t0 < 0.5
    assert len(str(info.value)) < 2000  # a message, not a dump


def test_messages_name_the_operand():
    with pytest.raises(ShapeError, match=r"argument 1 \(Pm\(1,1\)\).*float"):
        HOSTILE["float_for_pm"]()
    with pytest.raises(DTypeError, match="sparse"):
        HOSTILE["sparse_lazytensor"]()
    with pytest.raises(FormulaError, match="missing: 0, 1, 2, 3, 4 and 99999994 more"):
        HOSTILE["index_huge"]()
    with pytest.raises(FormulaError, match="exponent"):
        HOSTILE["lazy_pow"]()


def test_large_but_valid_constants_still_fold():
    assert parse_formula("Pow(IntCst(2), 1000)").value == 2**1000
    assert parse_formula("Pow(IntCst(10), -300)").value == pytest.approx(1e-300, rel=1e-12)
    assert parse_formula("Pow(IntCst(1), 2147483647)").value == 1
    assert parse_formula("Pow(IntCst(-1), 2147483647)").value == -1
    v = Vi(torch.ones(2, 1, dtype=torch.float64)) * 1e300
    out = (v * Vj(torch.ones(3, 1, dtype=torch.float64))).sum(1)
    np.testing.assert_allclose(out.numpy(), 3e300)


def test_cuda_cli_takes_formulas_starting_with_minus(monkeypatch, capsys):
    from polykeops.backends.cuda import __main__ as cli
    from polykeops.backends.cuda import build
    from polykeops.backends.cuda import nvrtc as cu_nvrtc

    seen = []

    def fake_build(*args, **kwargs):
        seen.append(args)
        raise cu_nvrtc.CompileError("stop here", log="")

    monkeypatch.setattr(build, "build", fake_build)
    # argparse used to take "-SqDist(x,y)" for an unknown option (exit status 2)
    assert cli.main(["compile", "-SqDist(x,y)", "x = Vi(3)", "y = Vj(3)"]) == 1  # reached the compiler
    assert seen


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_a_formula_string_nested_10000_deep_runs(backend):
    """A Genred formula of 10,000 nested operations: parsed, simplified, rendered and reduced."""
    depth = 10_000
    g = Genred("SqDist(" + "Cos(" * depth + "x" + ")" * depth + ",y)", ["x=Vi(1)", "y=Vj(1)"], axis=1)
    x = torch.linspace(0, 1, 5, dtype=torch.float64).reshape(5, 1)
    y = torch.linspace(-1, 1, 4, dtype=torch.float64).reshape(4, 1)
    c = x.clone()
    for _ in range(depth):
        c = torch.cos(c)
    want = ((c[:, None] - y[None]) ** 2).sum(-1).sum(1, keepdim=True)
    torch.testing.assert_close(g(x, y, backend=backend), want)


def test_a_huge_formula_is_not_compiled_even_in_sync_mode(monkeypatch, tmp_path):
    from polykeops.backends.cpu import JIT_MAX_NODES, cache

    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    x = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(6, 1)
    F, f = Vi(x), x
    for k in range(JIT_MAX_NODES):  # distinct constants: distinct nodes
        F, f = (F + (k + 1)).cos(), torch.cos(f + (k + 1))
    builds = cache.BUILDS
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="generic engine even with POLYKEOPS_JIT=sync"):
        out = F.sum(dim=0, backend="cpu")
    assert cache.BUILDS == builds and time.perf_counter() - t0 < 30
    torch.testing.assert_close(out, f.sum(0, keepdim=True))
