"""The CPU backend against the reference backend: every reduction, both engines.

The generic engine (``POLYKEOPS_JIT=off``) runs every case; specialised kernels
(``sync``) run one spec per reduction (each is a compilation, cached on disk
under ``POLYKEOPS_CACHE_DIR``).  Sizes cross the tile and block boundaries of
both engines, and the split of j across threads (forced with
``POLYKEOPS_NUM_THREADS`` and one row).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polykeops.backends import get_backend
from polykeops.backends.cpu import CpuBackend, call, generic
from polykeops.backends.cpu.kernel_source import KernelWriter
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula import ReductionSpec, Var
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_I, CAT_J, CAT_P
from polykeops.formula.reductions import REDUCTIONS

pytestmark = [
    pytest.mark.skipif(not generic.available()[0], reason="generic engine not built"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # NumPy reference on inf/NaN inputs
]

REF = ReferenceBackend()

X = Var(0, 3, CAT_I)
Y = Var(1, 3, CAT_J)
B = Var(2, 2, CAT_J)
P = Var(3, 1, CAT_P)
VARS = (X, Y, B, P)
D2 = A.vsum(A.square(A.sub(X, Y)))
GAUSS = A.node("Exp", A.neg(A.mul(D2, P)))


def case(name):
    """A formula (tuple) and K for each reduction, using the variables X, Y, B, P."""
    diff = A.sub(X, Y)
    table = {
        "Sum": ((A.mul(GAUSS, B),), None),
        "LogSumExp": ((A.neg(D2),), None),
        "LogSumExpWeight": ((A.neg(D2), B), None),
        "Max_SumShiftExp": ((A.neg(D2),), None),
        "Max_SumShiftExpWeight": ((A.neg(D2), B), None),
        "SumSoftMaxWeight": ((A.neg(D2), B), None),
        "Min": ((diff,), None),
        "Max": ((diff,), None),
        "ArgMin": ((diff,), None),
        "ArgMax": ((diff,), None),
        "Min_ArgMin": ((D2,), None),
        "Max_ArgMax": ((diff,), None),
        "KMin": ((D2,), 5),
        "ArgKMin": ((diff,), 3),
        "KMin_ArgKMin": ((diff,), 4),
    }
    return table[name]


def spec_of(name, dtype="float32", **kw):
    forms, k = case(name)
    return ReductionSpec(name, forms, VARS, k=k, dtype=dtype, **kw)


def make_args(spec, nx, ny, batch=(), rng=None, special=False, kind="numpy", ties=False):
    rng = rng or np.random.default_rng(0)
    args = []
    for v in spec.variables:
        n = nx if v.cat == CAT_I else ny if v.cat == CAT_J else None
        shape = batch + ((n,) if n else ()) + (v.dim,)
        a = rng.standard_normal(shape)
        if ties:
            a = np.round(a)  # many exact ties
        if v.cat == CAT_P:
            a = np.abs(a) + 0.1
        elif special:
            flat = a.reshape(-1)
            idx = rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)
            flat[idx] = rng.choice([np.inf, -np.inf, np.nan], size=idx.size)
        a = a.astype(spec.dtype)
        args.append(torch.from_numpy(a) if kind == "torch" else a)
    return args


def compare(spec, out, ref, rtol=None):
    assert len(out) == len(ref)
    for o, r, meta in zip(out, ref, spec.outputs()):
        o = o.numpy() if isinstance(o, torch.Tensor) else o
        r = r.numpy() if isinstance(r, torch.Tensor) else r
        assert o.shape == r.shape, (o.shape, r.shape)
        if meta.kind == "index":
            assert o.dtype == np.int64
            np.testing.assert_array_equal(o, r)
            continue
        assert o.dtype == r.dtype
        np.testing.assert_array_equal(np.isnan(o), np.isnan(r))
        tol = rtol or {"float16": 3e-3, "float32": 2e-5, "float64": 1e-12}[spec.dtype]
        o64, r64 = o.astype(np.float64), r.astype(np.float64)
        finite = np.isfinite(r64)
        np.testing.assert_array_equal(o64[~finite & ~np.isnan(r64)], r64[~finite & ~np.isnan(r64)])
        scale = max(1.0, float(np.abs(r64[finite]).max())) if finite.any() else 1.0
        np.testing.assert_allclose(o64[finite], r64[finite], rtol=tol * 10, atol=tol * scale)


def check(spec, nx, ny, batch=(), **kw):
    args = make_args(spec, nx, ny, batch, **kw)
    out = CpuBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch)
    ref = REF.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch)
    compare(spec, out, ref)


@pytest.fixture
def jit_off(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "off")


@pytest.fixture
def jit_sync(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    if not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")


# sizes: rows crossing BI (32 / 64), columns crossing the tiles (TJ <= 2048), a single row
SIZES = [(1, 1, ()), (70, 2100, ()), (131, 37, ()), (3, 4500, ()), (33, 65, (2, 3)), (5, 600, (3, 1))]


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generic_engine_matches_reference(name, dtype, jit_off):
    spec = spec_of(name, dtype)
    for nx, ny, batch in SIZES:
        if spec.k and ny < spec.k:
            continue
        check(spec, nx, ny, batch)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_generic_engine_special_values(name, jit_off):
    spec = spec_of(name)
    check(spec, 40, 1500, special=True)
    check(spec, 17, 300, ties=True)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_specialised_kernels_match_reference(name, jit_sync):
    spec = spec_of(name)
    for nx, ny, batch in SIZES:
        if spec.k and ny < spec.k:
            continue
        check(spec, nx, ny, batch)
    check(spec, 40, 2500, special=True)
    check(spec, 17, 300, ties=True)


@pytest.mark.parametrize("name", ["Sum", "LogSumExpWeight", "Min_ArgMin", "KMin_ArgKMin"])
def test_specialised_float64(name, jit_sync):
    spec = spec_of(name, "float64")
    for nx, ny, batch in SIZES[1:4]:
        check(spec, nx, ny, batch)
    check(spec, 40, 2500, special=True)


@pytest.mark.parametrize("mode", ["off", "sync"])
@pytest.mark.parametrize("name", ["Sum", "LogSumExp", "ArgMin", "KMin_ArgKMin", "SumSoftMaxWeight"])
def test_j_split_across_threads(name, mode, monkeypatch):
    """Few rows and many columns: j is split across threads and the partial states merged."""
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    monkeypatch.setenv("POLYKEOPS_NUM_THREADS", "4")
    spec = spec_of(name)
    check(spec, 1, 20000)
    check(spec, 3, 9000, (2,))
    check(spec, 2, 9000, special=True)


@pytest.mark.parametrize("mode", ["off", "sync"])
@pytest.mark.parametrize("scheme", ["kahan_scheme", "direct_sum"])
def test_sum_schemes_and_accumulation(scheme, mode, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    spec = spec_of("Sum", sum_scheme=scheme)
    check(spec, 50, 3000)
    check(spec, 1, 9000)


def test_kahan_is_more_accurate_than_plain_float32(jit_off):
    """sum_j (1 + 1e-4 * noise): Kahan in float32 is close to the float64 sum."""
    one = Var(0, 1, CAT_J)
    xi = Var(1, 1, CAT_I)
    f = A.add(one, A.mul(xi, A.const(0)))
    n = 200_000
    vals = (1 + 1e-4 * np.random.default_rng(1).standard_normal((n, 1))).astype(np.float32)
    xs = np.zeros((2, 1), np.float32)
    exact = vals.astype(np.float64).sum()
    res = {}
    for scheme in ("block_sum", "kahan_scheme"):
        spec = ReductionSpec("Sum", (f,), (one, xi), sum_scheme=scheme)
        (out,) = CpuBackend().evaluate(spec, [vals, xs], nx=2, ny=n, batch_shape=())
        res[scheme] = abs(float(out[0, 0]) - exact)
    ulp = float(np.spacing(np.float32(exact)))
    assert res["kahan_scheme"] <= ulp  # exact up to the rounding of the float32 output
    assert res["kahan_scheme"] <= res["block_sum"] + 1e-6


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_float64_accumulation_of_float32(mode, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    spec = spec_of("Sum", dtype_acc="float64")
    check(spec, 40, 3000)
    spec = spec_of("LogSumExp", dtype_acc="float64")
    check(spec, 40, 3000)


def test_float16_is_computed_in_float32(jit_off):
    for name in ("Sum", "LogSumExp", "ArgKMin"):
        spec = spec_of(name, "float16")
        check(spec, 40, 700)
        args = make_args(spec, 10, 50, kind="torch")
        out = CpuBackend().evaluate(spec, args, nx=10, ny=50, batch_shape=())
        assert out[0].dtype in (torch.float16, torch.int64)


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_torch_tensors_in_torch_tensors_out(mode, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    spec = spec_of("Min_ArgMin")
    args = make_args(spec, 30, 900, (2,), kind="torch")
    out = CpuBackend().evaluate(spec, args, nx=30, ny=900, batch_shape=(2,))
    assert all(isinstance(o, torch.Tensor) for o in out)
    assert out[1].dtype == torch.int64
    ref = REF.evaluate(spec, args, nx=30, ny=900, batch_shape=(2,))
    compare(spec, out, ref)


def test_batch_broadcasting_offsets():
    """Arguments broadcasting along different batch dimensions get 0 strides."""
    boff = call.batch_offsets([(2, 1, 5, 3), (1, 3, 7, 3), (2, 3, 1)], 3, (2, 3))
    assert boff.shape == (6, 3)
    np.testing.assert_array_equal(boff[:, 0], [0, 0, 0, 15, 15, 15])
    np.testing.assert_array_equal(boff[:, 1], [0, 21, 42, 0, 21, 42])
    np.testing.assert_array_equal(boff[:, 2], [0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_i_only_j_only_and_constant_roots(mode, monkeypatch):
    """Roots that do not depend on both i and j (hoisted rows, tile buffers, constants)."""
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    x, y, p = Var(0, 2, CAT_I), Var(1, 2, CAT_J), Var(2, 2, CAT_P)
    forms = [
        A.mul(A.node("Exp", x), p),  # i only: every j gives the same value
        A.node("Exp", A.mul(y, p)),  # j only
        A.add(A.node("Sin", x), A.node("Cos", y)),  # i-only and j-only sub-formulas
    ]
    for pos, f in enumerate(forms):
        spec = ReductionSpec("Sum" if pos % 2 else "Max_ArgMax", (f,), (x, y, p))
        check(spec, 45, 700)
        if mode == "off":
            spec = ReductionSpec("Max_ArgMax" if pos % 2 else "Sum", (f,), (x, y, p))
            check(spec, 45, 700)


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_large_vector_dimensions(mode, monkeypatch):
    """Vectors above the unroll limit: component loops, in-place Sums, buffers across stages."""
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    x, y, b, p = Var(0, 40, CAT_I), Var(1, 40, CAT_J), Var(2, 20, CAT_J), Var(3, 20, CAT_P)
    diff = A.sub(x, y)
    d2 = A.vsum(A.square(diff))
    k = A.node("Exp", A.neg(A.mul(d2, A.const(0.01))))
    mixed = A.add(A.mul(k, b), A.mul(A.node("Sin", A.node("Extract", diff, params=(3, 20))), p))
    cases = [
        ("ArgKMin", (d2,), 7),  # Sum of a 40-D square: accumulated inside the component loop
        ("Sum", (A.mul(k, b),), None),  # a 20-D root reduced per component (4 at a time)
        ("Sum", (A.mul(k, A.node("Extract", b, params=(1, 18))),), None),  # 4 at a time, then 2
        ("Sum", (mixed,), None),  # small and large stages, Extract of a large vector
        ("Max_ArgMax", (A.node("Cos", diff),), None),  # a 40-D root through the formula buffer
        ("LogSumExpWeight", (A.neg(d2), b), None),
    ]
    for name, forms, kk in cases:
        spec = ReductionSpec(name, forms, (x, y, b, p), k=kk, sum_scheme="block_sum")
        check(spec, 37, 2300)
        check(spec, 2, 300, (2,))


# -- block-sparse ranges -------------------------------------------------------------------


def random_ranges(rng, nx, ny, nblocks=6, batch=()):
    """(ranges_x, slices_x, redranges_y): some rows in no range, some blocks with no interval,
    empty intervals."""

    def one():
        cuts = np.sort(rng.choice(np.arange(1, nx), size=min(nblocks, nx - 1), replace=False))
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [nx]])
        keep = rng.random(len(starts)) < 0.8
        rx = np.stack([starts, ends], 1)[keep]
        counts = rng.integers(0, 4, size=len(rx))
        sx = np.cumsum(counts)
        a = rng.integers(0, ny, size=(int(sx[-1]) if len(sx) else 0, 2))
        ry = np.sort(a, axis=1)
        if len(ry):
            ry[0, 1] = ny  # up to the last column
        return rx.astype(np.int64), sx.astype(np.int64), ry.astype(np.int64)

    if not batch:
        return one()
    sets = [one() for _ in range(int(np.prod(batch)))]
    k = min(len(s[0]) for s in sets)
    s_ = min(int(s[1][k - 1]) if k else 0 for s in sets)
    rx = np.stack([s[0][:k] for s in sets]).reshape(batch + (k, 2))
    sx = np.stack([np.minimum(s[1][:k], s_) for s in sets]).reshape(batch + (k,))
    ry = np.stack([s[2][:s_] for s in sets]).reshape(batch + (s_, 2))
    return rx, sx, ry


def check_ranges(spec, nx, ny, batch=(), ranges_batch=None, seed=0, kind="numpy"):
    rng = np.random.default_rng(seed)
    args = make_args(spec, nx, ny, batch, rng=rng, kind=kind)
    ranges = random_ranges(rng, nx, ny, batch=batch if ranges_batch is None else ranges_batch)
    if kind == "torch":
        ranges = tuple(torch.from_numpy(r) for r in ranges)
    out = CpuBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, ranges=ranges)
    ref = REF.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, ranges=ranges)
    compare(spec, out, ref)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_block_sparse_ranges_generic(name, jit_off):
    spec = spec_of(name)
    for seed, (nx, ny, batch, rbatch) in enumerate(
        [(150, 3000, (), None), (80, 500, (2, 3), None), (80, 500, (2, 3), (1, 3)), (70, 400, (2,), ())]
    ):
        check_ranges(spec, nx, ny, batch, rbatch, seed=seed)


@pytest.mark.parametrize("name", ["Sum", "LogSumExpWeight", "Min_ArgMin", "KMin_ArgKMin"])
def test_block_sparse_ranges_specialised(name, jit_sync):
    spec = spec_of(name)
    check_ranges(spec, 150, 3000)
    check_ranges(spec, 80, 500, (2, 3), seed=1, kind="torch")


def many_short_ranges(rng, nx, ny, nblocks=5, per_block=60):
    """Blocks of rows, each reduced over many short j intervals (clusters of a few points: a tile
    gathers the columns of several intervals), some empty, some overlapping, some longer than a
    tile, one block with no interval."""
    cuts = np.sort(rng.choice(np.arange(1, nx), size=nblocks - 1, replace=False))
    rx = np.stack([np.concatenate([[0], cuts]), np.concatenate([cuts, [nx]])], 1)
    counts = rng.integers(per_block // 2, per_block, size=nblocks)
    counts[1] = 0
    sx = np.cumsum(counts)
    starts = rng.integers(0, ny, size=int(sx[-1]))
    lengths = rng.integers(0, 40, size=starts.size)
    lengths[::17] = rng.integers(2000, 5000, size=lengths[::17].size)  # across tiles
    ry = np.stack([starts, np.minimum(starts + lengths, ny)], 1)
    return rx.astype(np.int64), sx.astype(np.int64), ry.astype(np.int64)


@pytest.mark.parametrize("name", ["Sum", "LogSumExpWeight", "SumSoftMaxWeight", "Min_ArgMin", "KMin_ArgKMin"])
@pytest.mark.parametrize("mode", ["off", "sync"])
def test_block_sparse_many_short_intervals(name, mode, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(3)
    # (blocks of ~20 rows; blocks of ~300 rows, cut into several work items)
    for dtype, nx, nblocks in [("float32", 90, 5), ("float64", 90, 5), ("float64", 900, 3)]:
        spec = spec_of(name, dtype=dtype)
        ny = 6000
        args = make_args(spec, nx, ny, rng=rng)
        ranges = many_short_ranges(rng, nx, ny, nblocks=nblocks)
        out = CpuBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=(), ranges=ranges)
        ref = REF.evaluate(spec, args, nx=nx, ny=ny, batch_shape=(), ranges=ranges)
        compare(spec, out, ref)


def test_block_sparse_ranges_are_declared():
    assert CpuBackend().capabilities.ranges
    from polykeops.backends import select_backend

    assert select_backend(None, spec_of("Sum"), "numpy", "cpu", False, True).name == "cpu"


# -- gradients through the whole stack (torch autograd), both engines -----------------


def _grad_inputs(n=60, m=900, d=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, dtype=dtype, generator=g, requires_grad=True)
    y = torch.randn(m, d, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(m, 2, dtype=dtype, generator=g, requires_grad=True)
    return x, y, b


GRAD_CASES = ["sum", "lse", "lse_w", "softmax", "min", "kmin", "sum_axis0"]


def _reduction(name, x, y, b, backend):
    from polykeops.torch import LazyTensor

    xi, yj, bj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    d2 = ((xi - yj) ** 2).sum(-1)
    k = (-d2).exp()
    return {
        "sum": lambda: (k * bj).sum(dim=1, backend=backend),
        "lse": lambda: (-d2).logsumexp(dim=1, backend=backend),
        "lse_w": lambda: (-d2).logsumexp(dim=1, weight=bj.exp(), backend=backend),
        "softmax": lambda: (-d2).sumsoftmaxweight(bj, dim=1, backend=backend),
        "min": lambda: d2.min(dim=1, backend=backend),
        "kmin": lambda: d2.Kmin(3, dim=1, backend=backend),
        "sum_axis0": lambda: (k * xi[:, :, :1]).sum(dim=0, backend=backend),
    }[name]()


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_gradients_match_reference(mode, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    if mode == "sync" and not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    x, y, b = _grad_inputs()
    # every gradient through the generic engine; the main ones through compiled kernels
    names = GRAD_CASES if mode == "off" else ["sum", "lse", "min"]
    for name in names:
        out, ref = _reduction(name, x, y, b, "cpu"), _reduction(name, x, y, b, "reference")
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        w = torch.randn_like(out)
        g1 = torch.autograd.grad((out * w).sum(), [x, y, b], allow_unused=True)
        g2 = torch.autograd.grad((ref * w).sum(), [x, y, b], allow_unused=True)
        for a, r in zip(g1, g2):
            if r is None:
                assert a is None or float(a.abs().max()) == 0
            else:
                torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-8, msg=f"gradient of {name}")


def test_second_order_gradient_through_generic_engine(jit_off):
    x, y, b = _grad_inputs(20, 200)
    from polykeops.torch import LazyTensor

    def energy(backend):
        xi, yj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
        return (-((xi - yj) ** 2).sum(-1)).exp().sum(dim=1, backend=backend).sum()

    g1 = torch.autograd.grad(energy("cpu"), x, create_graph=True)[0]
    h1 = torch.autograd.grad(g1.square().sum(), x)[0]
    g2 = torch.autograd.grad(energy("reference"), x, create_graph=True)[0]
    h2 = torch.autograd.grad(g2.square().sum(), x)[0]
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-8)


def test_cpu_is_the_automatic_default_on_cpu(monkeypatch):
    monkeypatch.delenv("POLYKEOPS_BACKEND", raising=False)
    from polykeops.backends import select_backend

    chosen = select_backend(None, spec_of("Sum"), "numpy", "cpu", False)
    assert chosen.name == "cpu"
    assert get_backend("cpu").priority > get_backend("reference").priority


@pytest.mark.parametrize("width", [17, 32, 35])
@pytest.mark.parametrize(
    "dtype,dtype_acc", [("float32", "auto"), ("float32", "float64"), ("float64", "auto")]
)
def test_kernel_matrix_times_wide_b(width, dtype, dtype_acc, jit_sync):
    """K_ij b_j with a wide b (K @ b): rows and components reduced in register blocks after the
    row loop; row counts and widths that are not multiples of the blocks, ranges, batches."""
    x, y, b = Var(0, 5, CAT_I), Var(1, 5, CAT_J), Var(2, width, CAT_J)
    k = A.node("Exp", A.neg(A.vsum(A.square(A.sub(x, y)))))
    for form in (A.mul(k, b), A.mul(b, k)):
        spec = ReductionSpec("Sum", (form,), (x, y, b), dtype=dtype, dtype_acc=dtype_acc)
        src = KernelWriter(spec).source()
        assert "lb0_all" in src  # the register-blocked reduction is used
        for nx, ny, batch in [(70, 2100, ()), (3, 700, ()), (37, 130, (2,))]:
            check(spec, nx, ny, batch)
        check_ranges(spec, 150, 3000)
        rng = np.random.default_rng(5)
        args = make_args(spec, 90, 6000, rng=rng)
        ranges = many_short_ranges(rng, 90, 6000)
        out = CpuBackend().evaluate(spec, args, nx=90, ny=6000, batch_shape=(), ranges=ranges)
        compare(spec, out, REF.evaluate(spec, args, nx=90, ny=6000, batch_shape=(), ranges=ranges))
