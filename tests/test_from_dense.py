"""``from_dense``: dense matrices as LazyTensors indexed by (i, j), on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polykeops.numpy as pkn
import polykeops.torch as pkt
from polykeops.backends.reference import ReferenceBackend
from polykeops.common.reduce import _number, _options
from polykeops.errors import DTypeError, FormulaError, ShapeError
from polykeops.formula.reduction_grads import sum_like_gradient

BACKENDS = ("reference", "cpu")
SIZES = [(1, 1), (2, 31), (31, 2), (31, 257), (257, 31), (257, 257)]


def _dense_gaussian(x, y):
    return np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


# ---------------------------------------------------------------------------
# NumPy: values against dense references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m, n", SIZES)
def test_numpy_reductions_match_dense(m, n, backend):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, n))
    x, y = rng.standard_normal((m, 2)), rng.standard_normal((n, 2))
    K = pkn.from_dense(a)
    assert K.shape == (m, n) and K.dtype == np.float64
    np.testing.assert_array_equal(K.dense(), a)
    np.testing.assert_allclose(K.sum(1, backend=backend)[:, 0], a.sum(1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(K.sum(0, backend=backend)[:, 0], a.sum(0), rtol=1e-10, atol=1e-12)
    # combined with symbolic LazyTensors
    G = K * (-pkn.Vi(x).sqdist(pkn.Vj(y))).exp()
    np.testing.assert_allclose(
        G.sum(1, backend=backend)[:, 0], (a * _dense_gaussian(x, y)).sum(1), rtol=1e-10, atol=1e-12
    )
    lse = K.logsumexp(1, backend=backend)[:, 0]
    ref = np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)
    np.testing.assert_allclose(lse, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(K.argmin(1, backend=backend)[:, 0], a.argmin(1))
    np.testing.assert_array_equal(K.argmax(0, backend=backend)[:, 0], a.argmax(0))
    v = rng.standard_normal((n, 3))
    np.testing.assert_allclose(K @ v, a @ v, rtol=1e-10, atol=1e-12)
    w = rng.standard_normal(m)
    np.testing.assert_allclose(K.rmatvec(w), a.T @ w, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(K.T.dense(), a.T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_vector_entries_batches_and_float32(backend):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 1, 5, 7, 3)).astype(np.float32)  # batch (2, 1), D = 3
    K = pkn.LazyTensor.from_dense(a)
    assert K.shape == (2, 1, 5, 7, 3) and K.dtype == np.float32
    np.testing.assert_array_equal(K.dense(), a)
    p = rng.standard_normal((1, 3, 1, 1, 3)).astype(np.float32)  # batch broadcasting to (2, 3)
    out = (K * pkn.LazyTensor(p)).sum(3, backend=backend)
    np.testing.assert_allclose(out, (a * p).sum(3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        K.sum(-1).sum(2, backend=backend), a.sum(-1).sum(2)[..., None], rtol=1e-5, atol=1e-5
    )
    # a batch of scalar matrices keeps the trailing D = 1 axis
    b = rng.standard_normal((4, 6, 5, 1))
    Kb = pkn.from_dense(b)
    assert Kb.shape == (4, 6, 5)
    np.testing.assert_allclose(Kb.sum(2, backend=backend), b.sum(2), rtol=1e-10)


def test_numpy_solve_matches_dense():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((31, 31))
    s = s @ s.T + 31 * np.eye(31)
    b = rng.standard_normal((31, 2))
    a = pkn.from_dense(s).solve(b, alpha=0.5, eps=1e-12)
    np.testing.assert_allclose(a, np.linalg.solve(s + 0.5 * np.eye(31), b), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------
# torch: values and gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m, n", SIZES)
def test_torch_gradients_match_dense(m, n, backend):
    g = torch.Generator().manual_seed(m + 7 * n)
    a = torch.randn(m, n, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(m, 2, dtype=torch.float64, generator=g)
    y = torch.randn(n, 2, dtype=torch.float64, generator=g)
    K = pkt.from_dense(a)
    gauss = (-((x[:, None] - y[None]) ** 2).sum(-1)).exp()
    cases = [
        (
            lambda: (K * (-pkt.Vi(x).sqdist(pkt.Vj(y))).exp()).sum(1, backend=backend)[:, 0],
            lambda: (a * gauss).sum(1),
        ),
        (lambda: K.sin().sum(0, backend=backend)[:, 0], lambda: a.sin().sum(0)),
        (lambda: K.logsumexp(1, backend=backend)[:, 0], lambda: a.logsumexp(1)),
        (lambda: (-K).logsumexp(0, backend=backend)[:, 0], lambda: (-a).logsumexp(0)),
    ]
    for lazy, dense in cases:
        out, ref = lazy(), dense()
        torch.testing.assert_close(out, ref)
        w = torch.randn(out.shape, dtype=torch.float64, generator=g)
        (ga,) = torch.autograd.grad((out * w).sum(), [a])
        (gr,) = torch.autograd.grad((ref * w).sum(), [a])
        torch.testing.assert_close(ga, gr)
    v = torch.randn(n, 2, dtype=torch.float64, generator=g)
    torch.testing.assert_close(K @ v, a @ v)
    assert torch.equal(K.argmin(1, backend=backend)[:, 0], a.argmin(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_vector_entries_batches_and_second_order(backend):
    a = torch.randn(3, 5, 7, 2, dtype=torch.float64, requires_grad=True)
    K = pkt.LazyTensor.from_dense(a)
    assert K.shape == (3, 5, 7, 2)
    torch.testing.assert_close(K.dense(), a)
    out = (K * K).sum(2, backend=backend)
    torch.testing.assert_close(out, (a * a).sum(2))
    (ga,) = torch.autograd.grad(out.sum(), [a], create_graph=True)
    torch.testing.assert_close(ga, 2 * a)
    (gga,) = torch.autograd.grad((ga**2).sum(), [a])
    torch.testing.assert_close(gga, 8 * a)


def test_torch_solve_is_differentiable():
    s0 = torch.randn(20, 20, dtype=torch.float64)
    s = (s0 @ s0.T + 20 * torch.eye(20, dtype=torch.float64)).requires_grad_()
    b = torch.randn(20, 1, dtype=torch.float64)
    a = pkt.from_dense(s).solve(b, alpha=1.0, eps=1e-12)
    ref = torch.linalg.solve(s + torch.eye(20, dtype=torch.float64), b)
    torch.testing.assert_close(a, ref)
    (g,) = torch.autograd.grad(a.sum(), [s])
    (gr,) = torch.autograd.grad(ref.sum(), [s])
    torch.testing.assert_close(g, gr, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_complex_matrices(lib):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5, 2)) + 1j * rng.standard_normal((6, 5, 2))
    w = rng.standard_normal((6, 1, 1)) + 1j * rng.standard_normal((6, 1, 1))
    if lib == "torch":
        z, w = torch.from_numpy(z).requires_grad_(), torch.from_numpy(w)
        mod = pkt
    else:
        mod = pkn
    K = mod.from_dense(z)
    assert isinstance(K, mod.ComplexLazyTensor) and K.shape == (6, 5, 2)
    out = (K * mod.LazyTensor(w)).sum(1)
    ref = (z * w).sum(1)
    if lib == "torch":
        torch.testing.assert_close(out, ref)
        (g,) = torch.autograd.grad(out.abs().sum(), [z])
        (gr,) = torch.autograd.grad(ref.abs().sum(), [z])
        torch.testing.assert_close(g, gr)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-12)
        np.testing.assert_array_equal(mod.from_dense(z[..., 0]).dense(), z[..., 0])
    # a real matrix made complex by the complex class
    real = mod.ComplexLazyTensor.from_dense(z.real if lib == "numpy" else z.detach().real)
    assert isinstance(real, mod.ComplexLazyTensor) and real.shape == (6, 5, 2)


# ---------------------------------------------------------------------------
# infinite and NaN entries stay in their place
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_and_special_values(backend):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((31, 17))
    mask = rng.random((31, 17)) < 0.3
    mask[:, 0] = False  # every row keeps a finite entry
    masked = np.where(mask, -np.inf, a)
    K = pkn.from_dense(masked)
    with np.errstate(all="ignore"):  # log(0) in the reference evaluation
        lse = K.logsumexp(1, backend=backend)[:, 0]
        m = masked.max(1, keepdims=True)
        np.testing.assert_allclose(
            lse, (m + np.log(np.exp(masked - m).sum(1, keepdims=True)))[:, 0], rtol=1e-12
        )
        np.testing.assert_array_equal(K.dense(), masked)
        special = a.copy()
        special[0, 3], special[1, 4], special[2, 5] = np.inf, -np.inf, np.nan
        S = pkn.from_dense(special)
        np.testing.assert_array_equal(S.dense(), special)
        out = S.sum(1, backend=backend)[:, 0]
        np.testing.assert_allclose(out[3:], special[3:].sum(1), rtol=1e-12)  # other rows untouched
        assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])
        np.testing.assert_array_equal(S.min(0, backend=backend)[:, 0], np.min(special, 0))
    # torch: gradients of a masked softmax reach the finite entries, 0 at the masked ones
    t = torch.from_numpy(a).requires_grad_()
    tmask = torch.from_numpy(mask)
    tm = torch.where(tmask, -torch.inf, t)
    out = pkt.from_dense(tm).logsumexp(1, backend=backend)[:, 0]
    ref = torch.logsumexp(tm, 1)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.sum(), [t], retain_graph=True)  # (tm is shared with ref)
    (gr,) = torch.autograd.grad(ref.sum(), [t])
    torch.testing.assert_close(g, gr)
    assert torch.all(g[tmask] == 0)


# ---------------------------------------------------------------------------
# errors and the size guard
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_infinite_gradient_stays_on_its_entry(backend):
    """d log(A_ij) / dA_ij is inf where A_ij = 0: the gradient is inf there and finite on the
    rest of the row, as torch's (Take's derivative selects; it does not multiply by a one-hot)."""
    a = torch.rand(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    a[1, 2] = 0
    a.requires_grad_()
    (g,) = torch.autograd.grad(pkt.LazyTensor.from_dense(a).log().sum(1, backend=backend).sum(), a)
    (want,) = torch.autograd.grad(torch.log(a).sum(), a)
    assert torch.equal(g, want)


def test_bad_inputs_are_named():
    with pytest.raises(FormulaError, match="from_dense needs a numpy array, got list"):
        pkn.from_dense([[1.0, 2.0]])
    with pytest.raises(ShapeError, match=r"shape \(5,\)"):
        pkn.from_dense(np.zeros(5))
    with pytest.raises(ShapeError, match="empty"):
        pkn.from_dense(np.zeros((3, 0)))
    with pytest.raises(DTypeError, match="int64"):
        pkn.from_dense(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ShapeError, match=r"shape \(2, 9000\) \(float32\).*N \* D = 9000.*max_row_size"):
        pkn.from_dense(np.zeros((2, 9000), dtype=np.float32))
    with pytest.raises(ShapeError, match="N \\* D = 30.*max_row_size=20"):
        pkt.from_dense(torch.zeros(2, 10, 3), max_row_size=20)
    with pytest.raises(ShapeError, match="float16.*2048"):
        pkn.from_dense(np.zeros((2, 3000), dtype=np.float16))
    with pytest.raises(ShapeError, match="complex matrix of shape \\(2, 40\\)"):
        pkn.from_dense(np.zeros((2, 40), dtype=np.complex64), max_row_size=30)
    big = pkn.from_dense(np.ones((2, 9000), dtype=np.float32), max_row_size=9000)  # opt-in
    assert big.shape == (2, 9000)
    K = pkn.from_dense(np.ones((3, 4)))
    with pytest.raises(ShapeError, match="N \\(the j axis\\)"):
        K + pkn.Vj(np.ones((5, 1)))


# ---------------------------------------------------------------------------
# compiled CUDA code: NVRTC compiles the kernels, the host emulator runs them
# ---------------------------------------------------------------------------


def _cuda_spec(m=9, n=13, d=2):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((m, n, d)).astype(np.float32)
    y = rng.standard_normal((n, d)).astype(np.float32)
    K = pkn.from_dense(a) * pkn.Vj(y).exp()
    spec, leaves = _number(K, [K.formula], "Sum", 1, None, _options({}))
    args = []
    for v, leaf in zip(spec.variables, leaves):
        args.append(np.ascontiguousarray(np.reshape(leaf.array, (leaf.n, v.dim))))
    return spec, args, (a * np.exp(y)[None]).sum(1)


def test_cuda_kernels_compile_with_nvrtc():
    from polykeops.backends.cuda import build
    from polykeops.backends.cuda import nvrtc as cu_nvrtc
    from polykeops.errors import PolyKeopsError

    try:
        cu_nvrtc.version()
    except PolyKeopsError as exc:
        pytest.skip(f"NVRTC unavailable: {exc}")
    spec, _, _ = _cuda_spec()
    specs = [spec] + [sum_like_gradient(spec, p).spec.canonical() for p in range(len(spec.variables))]
    built, sources = build.compile_specs(specs, "sm_80")
    resources = built.resources()
    for ks in sources.values():
        for name in ks.kernel_names:
            assert name in resources


def test_cuda_kernels_run_in_the_emulator():
    from polykeops.backends.cuda import emulator

    if emulator.compiler() is None:
        pytest.skip("no C++ compiler for the CUDA emulator")
    spec, args, dense = _cuda_spec()
    ks = emulator.kernel_source(spec, n_batch_dims=0)
    emulator.build(ks)
    expected = ReferenceBackend().evaluate(spec, args, nx=9, ny=13, batch_shape=())
    np.testing.assert_allclose(expected[0], dense, rtol=1e-5, atol=1e-5)
    for scheme in ("1d", "2d"):
        out = emulator.evaluate(spec, args, nx=9, ny=13, batch_shape=(), scheme=scheme, sm_count=8)
        np.testing.assert_allclose(out[0], dense, rtol=1e-5, atol=1e-5)
