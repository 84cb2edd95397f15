"""Tanh, Sinh, Cosh, Erf, Log1p and Expm1 on every engine, against float64 NumPy (math.erf for
erf): accuracy over their whole range, tiny arguments, overflow, +-inf and NaN; and their first
and second derivatives against torch.autograd on dense tensors.

Engines: the reference backend, the CPU backend's generic engine (``POLYKEOPS_JIT=off``) and its
specialised kernels (``POLYKEOPS_JIT=sync``).  The values go through ``op(x_i - y_j)`` with
``y_j = 0``: in a specialised kernel the op then runs in the vectorised loop over j.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import polykeops.torch as pkt
from polykeops.backends.cpu import CpuBackend, generic
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula import ReductionSpec, Var
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_I, CAT_J

NEW_OPS = ["Tanh", "Sinh", "Cosh", "Erf", "Log1p", "Expm1"]

EXACT = {  # float64 references
    "Tanh": np.tanh,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Erf": np.vectorize(math.erf, otypes=[np.float64]),
    "Log1p": np.log1p,
    "Expm1": np.expm1,
}

#: error bound in units in the last place of the dtype (on normal results), per engine: the C
#: functions compute in double (a few ulp there; the float ones round the double result once)
ULPS = {
    "reference": {"float32": 3.0, "float64": 2.0},  # NumPy's float32 functions
    "generic": {"float32": 1.0, "float64": 4.0},
    "kernels": {"float32": 1.0, "float64": 4.0},
}


@pytest.fixture(params=["reference", "generic", "kernels"])
def engine(request, monkeypatch):
    name = request.param
    if name == "reference":
        return name, ReferenceBackend()
    monkeypatch.setenv("POLYKEOPS_JIT", "off" if name == "generic" else "sync")
    backend = CpuBackend()
    if name == "kernels" and not backend.compiler_status()[0]:
        pytest.skip("no C compiler")
    if name == "generic" and not generic.available()[0]:
        pytest.skip("generic engine not built")
    return name, backend


def values(op: str, dtype) -> np.ndarray:
    """The whole range: a linear sweep, tiny and huge magnitudes, subnormals, the specials."""
    fi = np.finfo(dtype)
    tiny = np.geomspace(float(fi.smallest_subnormal), 1.0, 4001)
    huge = np.geomspace(1.0, float(fi.max), 4001)
    vals = np.concatenate([
        np.linspace(-40.0, 40.0, 40_001), tiny, -tiny, huge, -huge,
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 88.0, 89.5, 709.0, 710.4, 711.0],
    ])
    if op == "Log1p":
        vals = np.concatenate([vals, np.linspace(-1.0, 0.0, 10_001), [-1.0, -0.999999]])
    return vals.astype(dtype)


def evaluate(backend, op: str, vals: np.ndarray) -> np.ndarray:
    """``op(x_i - y_j)`` for every value (one row each, y_j = 0), as float64."""
    dtype = vals.dtype
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    spec = ReductionSpec("Sum", (A.node(op, A.sub(x, y)),), (x, y), dtype=str(dtype))
    (out,) = backend.evaluate(spec, [vals[:, None], np.zeros((1, 1), dtype)], nx=len(vals), ny=1,
                              batch_shape=())
    return np.asarray(out)[:, 0].astype(np.float64)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow and log of -1
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", NEW_OPS)
def test_values_over_the_whole_range(op, dtype, engine):
    name, backend = engine
    vals = values(op, np.dtype(dtype))
    got = evaluate(backend, op, vals)
    exact = EXACT[op](vals.astype(np.float64))
    rounded = exact.astype(dtype).astype(np.float64)  # what a correctly rounded function returns
    fi = np.finfo(dtype)
    special = ~np.isfinite(rounded) | (rounded == 0)
    np.testing.assert_array_equal(got[special], rounded[special], err_msg=f"{op} at specials")
    normal = ~special & (np.abs(rounded) >= fi.tiny)
    ulp = np.spacing(np.abs(rounded[normal]).astype(dtype)).astype(np.float64)
    err = np.abs(got[normal] - exact[normal]) / ulp
    worst = int(np.argmax(err))
    assert err[worst] <= ULPS[name][dtype], (
        f"{op}({vals[normal][worst]!r}) = {got[normal][worst]!r}, exact {exact[normal][worst]!r}: "
        f"{err[worst]:.2f} ulp"
    )
    sub = ~special & ~normal  # subnormal results: within 2 units of the smallest subnormal
    assert np.max(np.abs(got[sub] - exact[sub]), initial=0) <= 2 * float(fi.smallest_subnormal)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_points_and_signed_zeros(dtype, engine):
    """+-0 (sign kept), +-inf, NaN and tiny arguments (tanh, sinh, log1p, expm1 of a tiny x is x),
    through a Min reduction over one column (a Sum would add +0 to -0)."""
    _, backend = engine
    vals = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 3e-20, -3e-20], dtype)
    t = [1e-30, -1e-30, 3e-20, -3e-20]
    expected = {
        "Tanh": [0.0, -0.0, 1.0, -1.0, np.nan, *t],
        "Sinh": [0.0, -0.0, np.inf, -np.inf, np.nan, *t],
        "Cosh": [1.0, 1.0, np.inf, np.inf, np.nan, 1.0, 1.0, 1.0, 1.0],
        "Erf": [0.0, -0.0, 1.0, -1.0, np.nan] + [2 / math.sqrt(math.pi) * v for v in t],
        "Log1p": [0.0, -0.0, np.inf, np.nan, np.nan, *t],
        "Expm1": [0.0, -0.0, np.inf, -1.0, np.nan, *t],
    }
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    for op in NEW_OPS:
        spec = ReductionSpec("Min", (A.node(op, A.sub(x, y)),), (x, y), dtype=dtype)
        (out,) = backend.evaluate(spec, [vals[:, None], np.zeros((1, 1), dtype)], nx=len(vals), ny=1,
                                  batch_shape=())
        got = np.asarray(out)[:, 0]
        want = np.array(expected[op], dtype)  # rounded to the dtype
        np.testing.assert_array_equal(got, want, err_msg=op)
        np.testing.assert_array_equal(np.signbit(got[:2]), np.signbit(want[:2]), err_msg=f"{op}: sign of 0")


# ---------------------------------------------------------------------------
# derivatives, to second order, against torch.autograd on dense tensors
# ---------------------------------------------------------------------------

DENSE = {
    "Tanh": torch.tanh,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Erf": torch.erf,
    "Log1p": torch.log1p,
    "Expm1": torch.expm1,
}


@pytest.mark.parametrize("op", NEW_OPS)
def test_first_and_second_derivatives(op):
    gen = torch.Generator().manual_seed(0)
    M, N, D = 7, 9, 3
    x = torch.randn(M, 1, D, dtype=torch.float64, generator=gen)
    y = torch.randn(1, N, D, dtype=torch.float64, generator=gen)
    if op == "Log1p":  # x * y > -1
        x, y = x.abs() * 0.5, y.abs() * 0.5
    x.requires_grad_(True)
    y.requires_grad_(True)
    g = torch.randn(M, D, dtype=torch.float64, generator=gen)

    def lazy(X, Y):
        return getattr(X * Y, op.lower())().sum(dim=1)

    res = lazy(pkt.LazyTensor(x), pkt.LazyTensor(y))
    ref = DENSE[op](x * y).sum(1)
    torch.testing.assert_close(res, ref, rtol=1e-10, atol=1e-12)
    (dx, dy) = torch.autograd.grad((res * g).sum(), [x, y], create_graph=True)
    (dx_ref, dy_ref) = torch.autograd.grad((ref * g).sum(), [x, y], create_graph=True)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dy, dy_ref, rtol=1e-9, atol=1e-11)
    u = torch.randn(dx.shape, dtype=torch.float64, generator=gen)
    (dxx, dxy) = torch.autograd.grad((dx * u).sum(), [x, y])
    (dxx_ref, dxy_ref) = torch.autograd.grad((dx_ref * u).sum(), [x, y])
    torch.testing.assert_close(dxx, dxx_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dxy, dxy_ref, rtol=1e-9, atol=1e-11)


def test_formula_strings_and_methods_reach_the_new_ops():
    from polykeops.formula.nodes import walk
    from polykeops.formula.parser import parse_formula

    f = parse_formula("Tanh(x) + Sinh(x) * Cosh(x) - Erf(x) / Log1p(x) + Expm1(x)", {"x": Var(0, 2, CAT_I)})
    assert set(NEW_OPS) <= {n.op for n in walk(f)}
    X = pkt.LazyTensor(torch.rand(4, 1, 2, dtype=torch.float64))
    for op in NEW_OPS:
        assert getattr(X, op.lower())().formula.op == op
