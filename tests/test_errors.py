"""Bad inputs raise a polykeops error (a PolyKeopsError subclass) whose message names the problem."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import polykeops
import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops import BackendError, DTypeError, FormulaError, PolyKeopsError, ShapeError

LT = pkt.LazyTensor


def _x(M=5, D=3, dtype=torch.float32):
    return LT(torch.randn(M, 1, D, dtype=dtype))


def _y(N=4, D=3, dtype=torch.float32):
    return LT(torch.randn(1, N, D, dtype=dtype))


def _raises(exc_type, pattern, fn):
    with pytest.raises(PolyKeopsError) as info:
        fn()
    assert isinstance(info.value, exc_type), f"{type(info.value).__name__}: {info.value}"
    assert re.search(pattern, str(info.value), re.IGNORECASE), str(info.value)
    return info.value


BAD = {
    "vector_dims_3_vs_2": (FormulaError, r"incompatible vector dimensions 3 and 2",
                           lambda: _x(D=3) - _y(D=2)),
    "vector_dims_Vi_Vj": (FormulaError, r"dimensions 3 and 2",
                          lambda: pkt.Vi(torch.randn(5, 3)) - pkt.Vj(torch.randn(4, 2))),
    "scalprod_dims": (FormulaError, r"equal dimensions", lambda: (_x(D=3) | _y(D=2))),
    "sqdist_dims": (FormulaError, r"equal dimension", lambda: _x(D=3).sqdist(_y(D=2))),
    "M_mismatch": (ShapeError, r"M \(the i axis\).*5.*6", lambda: _x(M=5) + _x(M=6)),
    "N_mismatch": (ShapeError, r"N \(the j axis\).*4.*7", lambda: _y(N=4) * _y(N=7)),
    "mixed_dtypes": (DTypeError, r"float32.*float64",
                     lambda: _x(dtype=torch.float32) - _y(dtype=torch.float64)),
    "mixed_dtypes_numpy": (DTypeError, r"float32.*float64",
                           lambda: pknp.LazyTensor(np.ones((3, 1, 2), np.float32))
                           + pknp.LazyTensor(np.ones((1, 4, 2), np.float64))),
    "int_tensor": (DTypeError, r"int64", lambda: LT(torch.ones(5, 1, 3, dtype=torch.int64))),
    "int_numpy": (DTypeError, r"int32", lambda: pknp.LazyTensor(np.ones((5, 1, 3), dtype=np.int32))),
    "bool_tensor": (DTypeError, r"bool", lambda: LT(torch.ones(5, 1, 3, dtype=torch.bool))),
    "K_greater_than_N": (ShapeError, r"K = 5 is larger.*4", lambda: _x().sqdist(_y(N=4)).Kmin(5, dim=1)),
    "K_greater_than_M": (ShapeError, r"K = 6 is larger.*5", lambda: _x(M=5).sqdist(_y()).argKmin(6, dim=0)),
    "K_zero": (FormulaError, r"positive int K", lambda: _x().sqdist(_y()).Kmin(0, dim=1)),
    "empty_M": (ShapeError, r"empty", lambda: LT(torch.zeros(0, 1, 3))),
    "empty_D": (ShapeError, r"empty", lambda: pknp.LazyTensor(np.zeros((5, 1, 0)))),
    "unknown_backend": (BackendError, r"unknown backend 'nope'.*reference",
                        lambda: (_x() - _y()).sum(dim=1, backend="nope")),
    "dim_5": (FormulaError, r"dim=5 is not valid", lambda: (_x() - _y()).sum(dim=5)),
    "dim_minus_4": (FormulaError, r"dim=-4 is not valid", lambda: (_x() - _y()).sum(dim=-4)),
    "dim_4_batched": (FormulaError, r"dim=4 is not valid.*1 batch",
                      lambda: (LT(torch.randn(2, 5, 1, 3)) - _y()).sum(dim=4)),
    "dim_vector_for_lse": (FormulaError, r"dim=-1", lambda: _x().sqdist(_y()).logsumexp(dim=-1)),
    "no_dim_for_lse": (FormulaError, r"dim", lambda: _x().sqdist(_y()).logsumexp()),
    "dim_not_int": (FormulaError, r"dim must be an int", lambda: (_x() - _y()).sum(dim=1.0)),
    "batch_mismatch": (ShapeError, r"batch dimensions \(2,\) and \(3,\)",
                       lambda: LT(torch.randn(2, 5, 1, 3)) + LT(torch.randn(3, 1, 4, 3))),
    "lse_vector_formula": (FormulaError, r"scalar formula.*dimension 3",
                           lambda: (_x() - _y()).logsumexp(dim=1)),
    "raw_array_operand": (FormulaError, r"raw 2-D array.*wrap it in a LazyTensor",
                          lambda: _x() + torch.randn(5, 3)),
    "ambiguous_2d": (ShapeError, r"ambiguous.*axis=0", lambda: LT(torch.randn(5, 3))),
    "neither_i_nor_j": (ShapeError, r"neither", lambda: LT(torch.randn(5, 4, 3))),
    "bad_sum_scheme": (FormulaError, r"sum_scheme", lambda: (_x() - _y()).sum(dim=1, sum_scheme="bogus")),
    "unknown_option": (FormulaError, r"unknown reduction option.*bogus_option",
                       lambda: (_x() - _y()).sum(dim=1, bogus_option=1)),
    "elem_out_of_range": (FormulaError, r"out of range", lambda: _x(D=3).elem(3)),
    "index_out_of_range": (FormulaError, r"out of range", lambda: _x(D=3)[5]),
    "extract_too_long": (FormulaError, r"out of range", lambda: _x(D=3).extract(1, 3)),
    "matvec_dims": (FormulaError, r"not a multiple", lambda: _x(D=5).matvecmult(_y(D=2))),
    "weightedsqnorm_dims": (FormulaError, r"weight dimension 2", lambda: _x(D=3).weightedsqnorm(_y(D=2))),
    "unsupported_type": (FormulaError, r"str", lambda: _x() + "a"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    exc_type, pattern, fn = BAD[case]
    _raises(exc_type, pattern, fn)


def test_errors_are_also_builtin_exceptions():
    assert issubclass(ShapeError, ValueError)
    assert issubclass(DTypeError, TypeError)
    assert issubclass(BackendError, RuntimeError)
    for name in polykeops.__all__:
        obj = getattr(polykeops, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, PolyKeopsError)


def test_bad_backend_env_var(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", "nope")
    err = _raises(BackendError, r"unknown backend 'nope'", lambda: (_x() - _y()).sum(dim=1))
    assert "POLYKEOPS_BACKEND" in str(err)
    assert "reference" in str(err)  # lists what is available
    # numpy front end too
    a = pknp.LazyTensor(np.ones((3, 1, 2)))
    b = pknp.LazyTensor(np.ones((1, 4, 2)))
    _raises(BackendError, r"POLYKEOPS_BACKEND.*nope", lambda: (a * b).sum(dim=0))


def test_backend_env_var_valid(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", "reference")
    x = torch.randn(4, 1, 2)
    y = torch.randn(1, 3, 2)
    res = (LT(x) * LT(y)).sum(dim=1)
    torch.testing.assert_close(res, (x * y).sum(1))


def test_backend_argument_wins_over_env(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", "nope")
    x = torch.randn(4, 1, 2)
    y = torch.randn(1, 3, 2)
    res = (LT(x) * LT(y)).sum(dim=1, backend="reference")
    torch.testing.assert_close(res, (x * y).sum(1))


def test_grad_of_index_reduction_is_refused_or_none():
    x = torch.randn(5, 1, 3, requires_grad=True)
    idx = _x().sqdist(LT(x.transpose(0, 1))).argmin(dim=1)
    assert idx.dtype == torch.int64 and not idx.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a GPU")
def test_mixed_devices():
    from polykeops import DeviceError

    a = LT(torch.randn(5, 1, 3))
    b = LT(torch.randn(1, 4, 3, device="cuda"))
    _raises(DeviceError, r"device", lambda: a - b)
