"""Tensor-core inner products of the CUDA kernels (polykeops.backends.cuda.mma).

Without a GPU: the kernels with ``mma.sync`` compile with NVRTC for sm_80 and sm_90 (the
PTX holds the mma instructions), and the host emulator runs them -- its ``pk_mma_*``
implement the warp-wide products from the PTX ISA fragment tables -- against dense
float64 NumPy references computed from the same (rounded) inputs.

Tolerances, relative to the natural scale of each result:

* float16 / bfloat16 data: products are exact and accumulate in float32, so the error is
  that of rounding the result to the output dtype (2^-11 / 2^-8 relative) plus float32
  rounding; we allow two units of the output dtype.
* float32 with precision="tf32": each product has a relative error up to about 2^-10
  (both inputs rounded to 10-bit mantissas), so an inner product errs by at most
  ~2^-10 sum_k |x_k y_k| <= 2^-10 |x| |y|; the squared distances kept from the expansion
  are within 2^-10 (|x|^2 + |y|^2) / 2 of the truth, the others are exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from polykeops.backends.cuda import build, emulator, mma
from polykeops.backends.cuda import nvrtc as cu_nvrtc
from polykeops.backends.cuda.kernel_source import generate
from polykeops.errors import PolyKeopsError
from polykeops.formula.parser import parse_reduction_formula
from polykeops.formula.reduction_grads import sum_like_gradient
from polykeops.formula.serial import spec_from_text, spec_to_text
from polykeops.formula.spec import ReductionSpec


def _nvrtc_missing():
    try:
        cu_nvrtc.version()
        return None
    except PolyKeopsError as exc:
        return str(exc)


NVRTC_MISSING = _nvrtc_missing()
needs_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC unavailable: {NVRTC_MISSING}")
needs_cxx = pytest.mark.skipif(emulator.compiler() is None, reason="no C++ compiler for the CUDA emulator")

#: (dtype, precision) of each tensor-core mode
MODES = {"f16": ("float16", "ieee"), "bf16": ("bfloat16", "ieee"), "tf32": ("float32", "tf32")}
#: allowed error, relative to the result's scale (see the module docstring)
TOL = {"f16": 2.0**-10, "bf16": 2.0**-7, "tf32": 2.0**-9}


def gaussian_spec(D, mode, nb=3):
    dtype, precision = MODES[mode]
    f, vs = parse_reduction_formula("Exp(-SqDist(x, y) * g) * b",
                                    [f"x = Vi({D})", f"y = Vj({D})", f"b = Vj({nb})", "g = Pm(1)"])
    return ReductionSpec("Sum", (f,), vs, dtype=dtype, precision=precision)


def knn_spec(D, mode, k=10):
    dtype, precision = MODES[mode]
    f, vs = parse_reduction_formula("SqDist(x, y)", [f"x = Vi({D})", f"y = Vj({D})"])
    return ReductionSpec("ArgKMin", (f,), vs, k=k, dtype=dtype, precision=precision)


def dot_spec(D, mode, reduction="Sum"):
    dtype, precision = MODES[mode]
    f, vs = parse_reduction_formula("(x | y)", [f"x = Vi({D})", f"y = Vj({D})"])
    return ReductionSpec(reduction, (f,), vs, dtype=dtype, precision=precision)


# -- storage of each dtype in the emulator (bfloat16 as its bits) and back to float64 ----------

def _to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _store(a, dtype):
    if dtype == "bfloat16":
        return _to_bf16_bits(a)
    return np.asarray(a, dtype=dtype)


def _f64(a, dtype):
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def _run(spec, args, nx, ny, arch="sm_80", block=64, scheme="1d", batch=()):
    """Emulated evaluation; ``scheme="2d"``: j split over blocks (partial states, combined)."""
    return emulator.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, block=block, arch=arch,
                             scheme=scheme, sm_count=8)


# ---------------------------------------------------------------------------
# choice of the path
# ---------------------------------------------------------------------------


def test_mode_follows_dtype_precision_and_architecture():
    assert mma.tensor_core_mode(knn_spec(64, "f16"), "sm_80") == "f16"
    assert mma.tensor_core_mode(knn_spec(64, "bf16"), "sm_90") == "bf16"
    assert mma.tensor_core_mode(knn_spec(64, "tf32"), (9, 0)) == "tf32"
    f32 = knn_spec(64, "tf32").with_(precision="ieee")
    assert mma.tensor_core_mode(f32, "sm_90") is None  # float32: TF32 only when asked for
    assert mma.tensor_core_mode(knn_spec(64, "tf32").with_(dtype="float64"), "sm_90") is None
    assert mma.tensor_core_mode(knn_spec(64, "f16"), "sm_75") is None
    assert mma.tensor_core_mode(knn_spec(64, "f16"), None) is None
    assert mma.arch_number("sm_90a") == 90 and mma.arch_number("compute_80") == 80


def test_simt_source_is_unchanged_where_tensor_cores_do_not_apply():
    for spec in (knn_spec(64, "f16"), knn_spec(8, "f16").with_(dtype="float16"), gaussian_spec(64, "tf32")):
        plain = generate(spec)
        assert not plain.tensor_cores and "pk_mma" not in plain.body
        assert generate(spec, arch="sm_75").body == plain.body
    # below MIN_DIM, float32 without tf32, float64, block-sparse kernels: the SIMT path
    for spec, kw in ((knn_spec(15, "f16"), {}), (knn_spec(64, "tf32").with_(precision="ieee"), {}),
                     (knn_spec(64, "tf32").with_(dtype="float64"), {}),
                     (knn_spec(64, "f16"), {"ranges": True})):
        ks = generate(spec, arch="sm_90", **kw)
        assert not ks.tensor_cores and "pk_mma" not in ks.body
        assert ks.body == generate(spec, **kw).body
    ks = generate(knn_spec(64, "f16"), arch="sm_80")
    assert ks.tensor_cores == "f16" and "pk_mma_f16" in ks.body


def test_precision_option_is_validated_and_kept():
    with pytest.raises(PolyKeopsError, match=r"precision must be one of \('ieee', 'tf32'\)"):
        knn_spec(16, "tf32").with_(precision="tf16")
    s = gaussian_spec(32, "tf32")
    assert spec_from_text(spec_to_text(s)) == s
    plain = s.with_(precision="ieee")
    assert spec_from_text(spec_to_text(plain)) == plain and "tf32" not in spec_to_text(plain)
    assert s != plain and hash(s) != hash(plain)  # distinct kernels, distinct cache entries
    assert generate(s, arch="sm_80").digest != generate(plain, arch="sm_80").digest


def test_front_end_option_is_exact_on_the_cpu():
    from polykeops.numpy import LazyTensor

    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 20)).astype(np.float32)
    y = rng.standard_normal((30, 20)).astype(np.float32)
    D = LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    a = (-D).exp().sum(dim=1)
    b = (-D).exp().sum(dim=1, precision="tf32")  # no effect off the GPU: IEEE float32
    np.testing.assert_array_equal(a, b)
    with pytest.raises(PolyKeopsError, match="precision must be one of"):
        (-D).exp().sum(dim=1, precision="half")


# ---------------------------------------------------------------------------
# NVRTC: the mma kernels compile for sm_80 and sm_90
# ---------------------------------------------------------------------------


def _compile_cases():
    specs = []
    for mode in MODES:
        for D in (16, 17, 100, 256):
            specs += [gaussian_spec(D, mode), knn_spec(D, mode)]
        specs.append(dot_spec(64, mode, "Max"))
        g = gaussian_spec(64, mode)
        specs += [sum_like_gradient(g, p).spec.canonical() for p in (0, 1)]
    return specs


@needs_nvrtc
@pytest.mark.parametrize("arch", ("sm_80", "sm_90"))
def test_tensor_core_kernels_compile(arch):
    specs = _compile_cases()
    built, sources = build.compile_specs(specs, arch)
    res = built.resources()
    modes = {ks.tensor_cores for ks in sources.values()}
    assert modes == {"f16", "bf16", "tf32"}
    for ks in sources.values():
        for s in ks.slices:
            assert 0 < res[s.main].registers <= 255
            assert res[s.main].shared_bytes <= 48 * 1024
    # the gradients of a Gaussian sum also read SqDist(x, y): tensor cores too
    grads = [ks for spec, ks in sources.items() if spec.reduction == "Sum" and spec.formulas[0].dim == 64]
    assert grads and all(ks.tensor_cores for ks in grads)
    for mode, instructions in (("f16", ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",)),
                               ("bf16", ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",)),
                               ("tf32", ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                                         "cvt.rna.tf32.f32"))):
        ks = next(k for k in sources.values() if k.tensor_cores == mode)
        ptx = build.build(ks.source, arch, "ptx", use_cache=False).binary
        text = ptx.decode(errors="replace") if isinstance(ptx, bytes) else ptx
        for ins in instructions:
            assert ins in text, (mode, ins)


# ---------------------------------------------------------------------------
# emulation against dense references
# ---------------------------------------------------------------------------

#: (D, M, N): the dimensions of the issue, odd sizes, M and N across the warp's 32 rows,
#: the 16-column chunks and the tiles
SHAPES = ((16, 1000, 257), (17, 31, 1000), (64, 257, 31), (100, 1, 257), (256, 70, 100))


def _gaussian_check(mode, D, M, N, out, args):
    dtype = MODES[mode][0]
    x, y, b, g = (_f64(a, dtype) for a in args)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    K = np.exp(-d2 * g[0])
    ref = K @ b
    scale = K @ np.abs(b) + 1e-30
    err = np.abs(_f64(out, dtype) - ref) / scale
    assert err.max() <= TOL[mode], (mode, D, M, N, err.max())


def _knn_check(mode, D, M, N, idx, args):
    dtype = MODES[mode][0]
    x, y = (_f64(a, dtype) for a in args)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    k = idx.shape[1]
    assert idx.min() >= 0 and idx.max() < N
    assert all(len(set(r)) == k for r in idx.tolist())
    best = np.sort(d2, axis=1)[:, :k]
    got = np.take_along_axis(d2, idx, axis=1)
    norms = (x**2).sum(1)[:, None] + (y**2).sum(1).max()
    slack = (2.0**-10 if mode == "tf32" else 2.0**-20) * norms
    assert np.all(np.abs(got - best) <= slack), (mode, D, M, N)


@needs_cxx
@pytest.mark.parametrize("mode", list(MODES))
def test_emulated_gaussian_sums_and_knn_match_dense_references(mode):
    dtype = MODES[mode][0]
    rng = np.random.default_rng(7)
    cases = []
    for D, M, N in SHAPES:
        x = rng.standard_normal((M, D))
        y = rng.standard_normal((N, D)) + 0.1
        b = rng.standard_normal((N, 3))
        g = np.array([1.0 / (2 * D)])
        cases.append((D, M, N, [_store(a, dtype) for a in (x, y, b, g)]))
    specs = [s for D, *_ in cases for s in (gaussian_spec(D, mode), knn_spec(D, mode))]
    kss = [emulator.kernel_source(s, arch="sm_80") for s in specs]
    assert all(ks.tensor_cores == mode for ks in kss)
    emulator.build(*kss)
    for D, M, N, args in cases:
        scheme = "2d" if M < 64 else "1d"  # few rows: the 2D scheme (partial states)
        out = _run(gaussian_spec(D, mode), args, M, N, scheme=scheme)[0]
        _gaussian_check(mode, D, M, N, out, args)
        idx = _run(knn_spec(D, mode), args[:2], M, N, scheme=scheme)[0]
        _knn_check(mode, D, M, N, idx, args[:2])


@needs_cxx
def test_emulated_batches_and_broadcasts():
    """Batch dimensions: per-argument batch strides reach the warp's row pointers (x
    broadcast over the batch, y and b not)."""
    rng = np.random.default_rng(2)
    D, M, N, B = 24, 40, 50, 3
    spec = gaussian_spec(D, "f16", nb=1)
    x = rng.standard_normal((1, M, D))
    y, b = rng.standard_normal((B, N, D)), rng.standard_normal((B, N, 1))
    g = np.array([[1.0 / (2 * D)]])
    args = [_store(a, "float16") for a in (x, y, b, g)]
    assert emulator.kernel_source(spec, n_batch_dims=1, arch="sm_80").tensor_cores == "f16"
    out = _run(spec, args, M, N, batch=(B,))[0]
    for k in range(B):
        _gaussian_check("f16", D, M, N, out[k], [args[0][0], args[1][k], args[2][k], args[3][0]])


@needs_cxx
def test_emulated_tf32_rounds_the_inputs():
    """TF32 really is used with precision='tf32' (and only then): 1 + 2^-15 is 1 in TF32."""
    spec = dot_spec(16, "tf32")
    x = np.full((33, 16), 1 + 2.0**-15, dtype=np.float32)
    y = np.ones((5, 16), dtype=np.float32)
    tc = _run(spec, [x, y], 33, 5)[0]
    ieee = _run(spec.with_(precision="ieee"), [x, y], 33, 5)[0]
    np.testing.assert_array_equal(tc, np.full((33, 1), 80.0, dtype=np.float32))
    np.testing.assert_allclose(ieee, 80.0 * (1 + 2.0**-15), rtol=1e-7)


@needs_cxx
@pytest.mark.parametrize("mode", list(MODES))
def test_emulated_dot_products_and_gradients(mode):
    """Dot products (K = X Y^T, max over j) and the gradient reductions of a Gaussian sum."""
    dtype = MODES[mode][0]
    rng = np.random.default_rng(11)
    D, M, N = 48, 70, 90
    x, y = rng.standard_normal((M, D)), rng.standard_normal((N, D))
    args = [_store(a, dtype) for a in (x, y)]
    out = _run(dot_spec(D, mode, "Max"), args, M, N)[0]
    xf, yf = (_f64(a, dtype) for a in args)
    G = xf @ yf.T
    scale = np.sqrt((xf**2).sum(1))[:, None] * np.sqrt((yf**2).sum(1)).max()
    err = np.abs(_f64(out, dtype) - G.max(1, keepdims=True)) / scale
    assert err.max() <= TOL[mode]
    g = gaussian_spec(D, mode, nb=2)
    b = rng.standard_normal((N, 2))
    gam = np.array([1.0 / (2 * D)])
    for p in (0, 1):  # d/dx and d/dy, with a gradient of ones for the output
        gspec = sum_like_gradient(g, p).spec.canonical()
        ks = emulator.kernel_source(gspec, arch="sm_80")
        assert ks.tensor_cores == mode, gspec
        gin = [_store(a, dtype) for a in (x, y, b, gam)]
        xs, ys, bs, gs = (_f64(a, dtype) for a in gin)
        d2 = ((xs[:, None, :] - ys[None, :, :]) ** 2).sum(-1)
        K = np.exp(-d2 * gs[0])
        W = K * bs.sum(1)[None, :]  # e = ones: sum over the output components of b
        absW = K * np.abs(bs).sum(1)[None, :]
        if p == 0:
            ref = -2 * gs[0] * (W.sum(1)[:, None] * xs - W @ ys)
            scl = 2 * gs[0] * (absW.sum(1)[:, None] * np.abs(xs) + absW @ np.abs(ys))
        else:
            ref = -2 * gs[0] * (W.sum(0)[:, None] * ys - W.T @ xs)
            scl = 2 * gs[0] * (absW.sum(0)[:, None] * np.abs(ys) + absW.T @ np.abs(xs))
        nvar = len(gspec.variables)
        ones = _store(np.ones((M, 2)), dtype)
        vals = {0: gin[0], 1: gin[1], 2: gin[2], 3: gin[3]}
        gargs = [vals.get(v.index, ones) for v in gspec.variables[:nvar]]
        nx, ny = (M, N) if p == 0 else (N, M)
        res = _run(gspec, gargs, nx, ny)[0]
        err = np.abs(_f64(res, dtype) - ref) / (scl + 1e-30)
        assert err.max() <= 4 * TOL[mode], (mode, p, err.max())


@needs_cxx
@pytest.mark.parametrize("mode", list(MODES))
def test_emulated_special_values_match_the_difference_form(mode):
    """inf / NaN in an operand, huge values and exact duplicates give what the SIMT path gives."""
    dtype = MODES[mode][0]
    rng = np.random.default_rng(5)
    D, M, N = 20, 40, 45
    x, y = rng.standard_normal((M, D)), rng.standard_normal((N, D))
    x[3, 4], x[5, 0], y[7, 19] = np.inf, np.nan, -np.inf
    x[8] = y[9]  # a duplicate: distance exactly 0
    x[10] = y[11] + 2.0**-6  # a close pair: the expansion cancels, the difference form is used
    if dtype != "float16":
        x[12, 2] = 3e38 if dtype == "float32" else 1e38  # norm overflows: difference form
    args = [_store(a, dtype) for a in (x, y)]
    for red in ("Min", "Sum"):
        f, vs = parse_reduction_formula("SqDist(x, y)", [f"x = Vi({D})", f"y = Vj({D})"])
        spec = ReductionSpec(red, (f,), vs, dtype=dtype, precision=MODES[mode][1])
        tc = _f64(_run(spec, args, M, N)[0], dtype)
        simt = _f64(_run(spec, args, M, N, arch=None)[0], dtype)
        assert emulator.kernel_source(spec, arch="sm_80").tensor_cores == mode
        np.testing.assert_array_equal(np.isnan(tc), np.isnan(simt))
        np.testing.assert_array_equal(np.isinf(tc), np.isinf(simt))
        fin = np.isfinite(simt)
        np.testing.assert_allclose(tc[fin], simt[fin], rtol=TOL[mode], atol=0)
    f, vs = parse_reduction_formula("SqDist(x, y)", [f"x = Vi({D})", f"y = Vj({D})"])
    spec = ReductionSpec("Min", (f,), vs, dtype=dtype, precision=MODES[mode][1])
    mins = _f64(_run(spec, args, M, N)[0], dtype)
    assert mins[8, 0] == 0.0 and mins[3, 0] == np.inf and np.isnan(mins[5, 0])


@needs_cxx
@needs_nvrtc
def test_torch_precision_option_reaches_the_kernels_forward_and_backward(monkeypatch, tmp_path):
    """LazyTensor(...).sum(precision="tf32", backend="cuda") on a fake sm_90 GPU (launches
    emulated): the forward and gradient reductions run TF32 kernels, and match float64."""
    torch = pytest.importorskip("torch")
    from fake_gpu import fake_backend, install

    import polykeops.backends as registry
    from polykeops.torch import LazyTensor

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    install(monkeypatch)
    backend = fake_backend(monkeypatch, registry.instance("cuda"))
    modes = []
    real = type(backend).evaluate

    def recording(self, spec, args, **kw):
        modes.append(mma.tensor_core_mode(spec, "sm_90"))
        return real(self, spec, args, **kw)

    monkeypatch.setattr(type(backend), "evaluate", recording)
    g = torch.Generator().manual_seed(1)
    D, M, N = 32, 50, 40
    x0, y0 = torch.randn(M, D, generator=g), torch.randn(N, D, generator=g)
    b0 = torch.randn(N, 2, generator=g)
    res = {}
    for name, dt in (("cuda", torch.float32), ("reference", torch.float64)):
        x, y, b = (t.to(dt).clone().requires_grad_() for t in (x0, y0, b0))
        d2 = ((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)
        opts = {"precision": "tf32"} if name == "cuda" else {}
        out = ((-d2 / (2 * D)).exp() * LazyTensor(b[None])).sum(1, backend=name, **opts)
        res[name] = (out, *torch.autograd.grad(out.sum(), [x, y]))
    assert modes and all(m == "tf32" for m in modes) and len(modes) >= 3
    for u, v in zip(res["cuda"], res["reference"]):
        scale = v.abs().max().item()
        assert (u.double() - v).abs().max().item() <= 2.0**-8 * scale
