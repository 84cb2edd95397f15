"""NumPy LazyTensors as scipy LinearOperators (``matvec``, ``rmatvec``, ``shape``, ``dtype``)."""

from __future__ import annotations

import numpy as np
import pytest

import polykeops.numpy as pkn
from polykeops.errors import DTypeError

sla = pytest.importorskip("scipy.sparse.linalg")


def _gaussian(m, n, dtype=np.float64, seed=0):
    """A Gaussian kernel matrix, symmetric positive definite for m == n (same points)."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((m, 3)).astype(dtype), rng.standard_normal((n, 3)).astype(dtype)
    y = x if m == n else y
    K = (-pkn.Vi(x).sqdist(pkn.Vj(y)) / 2).exp()
    dense = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / 2)
    return K, dense


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_aslinearoperator_products(backend, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", backend)
    K, dense = _gaussian(40, 31)
    op = sla.aslinearoperator(K)
    assert op.shape == (40, 31) and op.dtype == np.float64
    rng = np.random.default_rng(1)
    v, w, V = rng.standard_normal(31), rng.standard_normal(40), rng.standard_normal((31, 4))
    np.testing.assert_allclose(op.matvec(v), dense @ v, rtol=1e-12)
    np.testing.assert_allclose(op.matvec(v[:, None]), dense @ v[:, None], rtol=1e-12)
    np.testing.assert_allclose(op.rmatvec(w), dense.T @ w, rtol=1e-12)
    np.testing.assert_allclose(op.matmat(V), dense @ V, rtol=1e-12)
    np.testing.assert_allclose(op.H @ w, dense.T @ w, rtol=1e-12)
    np.testing.assert_allclose((op @ op.H) @ w, dense @ (dense.T @ w), rtol=1e-12)


def test_cg_and_eigsh_match_dense():
    K, dense = _gaussian(60, 60)
    op = sla.aslinearoperator(K) + sla.aslinearoperator(np.eye(60)) * 0.1  # alpha I + K
    b = np.random.default_rng(2).standard_normal(60)
    a, info = sla.cg(op, b, rtol=1e-12, atol=0, maxiter=1000)
    assert info == 0
    np.testing.assert_allclose(a, np.linalg.solve(dense + 0.1 * np.eye(60), b), rtol=1e-8, atol=1e-10)
    vals = sla.eigsh(sla.aslinearoperator(K), k=4, which="LM", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals), np.linalg.eigvalsh(dense)[-4:], rtol=1e-8)
    u, s, vt = sla.svds(sla.aslinearoperator(_gaussian(50, 30, seed=3)[0]), k=3)
    np.testing.assert_allclose(
        np.sort(s), np.linalg.svd(_gaussian(50, 30, seed=3)[1])[1][:3][::-1], rtol=1e-8
    )


def test_float32_operator_and_dtype_mismatch():
    K, dense = _gaussian(30, 30, dtype=np.float32)
    op = sla.aslinearoperator(K)
    assert op.dtype == np.float32
    vals = sla.eigsh(op, k=2, return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals), np.linalg.eigvalsh(dense.astype(np.float64))[-2:], rtol=1e-4)
    with pytest.raises(DTypeError, match=r"K @ v: v of shape \(30,\) has dtype float64 but K .* float32"):
        op.matvec(np.ones(30))


def test_complex_operator_rmatvec_is_the_adjoint():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((7, 5)) + 1j * rng.standard_normal((7, 5))
    op = sla.aslinearoperator(pkn.from_dense(z))
    assert op.shape == (7, 5) and op.dtype == np.complex128
    v = rng.standard_normal(5) + 1j * rng.standard_normal(5)
    w = rng.standard_normal(7) + 1j * rng.standard_normal(7)
    np.testing.assert_allclose(op.matvec(v), z @ v, rtol=1e-12)
    np.testing.assert_allclose(op.rmatvec(w), z.conj().T @ w, rtol=1e-12)
    np.testing.assert_allclose(op.matmat(np.eye(5)), z, rtol=1e-12)
