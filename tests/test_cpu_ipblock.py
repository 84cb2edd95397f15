"""Inner products computed by blocks in the specialised CPU kernels (ipblock.py): results against
dense references written directly with torch, at sizes crossing the blocks and tiles."""

from __future__ import annotations

import pytest
import torch

from polykeops.backends.cpu.kernel_source import KernelWriter
from polykeops.formula import ReductionSpec
from polykeops.formula.parser import parse_reduction_formula
from polykeops.torch import LazyTensor


@pytest.fixture
def jit(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")


def lazy(x, y):
    return LazyTensor(x[..., :, None, :]), LazyTensor(y[..., None, :, :])


def d2_ref(x, y):
    return ((x.double()[..., :, None, :] - y.double()[..., None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("D", [15, 16, 100])
def test_source_uses_blocks_from_dimension_16(D):
    f, vs = parse_reduction_formula("SqDist(x, y)", [f"x = Vi(0, {D})", f"y = Vj(1, {D})"])
    spec = ReductionSpec(reduction="ArgKMin", formulas=(f,), variables=vs, k=3).canonical()
    assert ("pk_ip0(" in KernelWriter(spec).source()) == (D >= 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [17, 64])
def test_knn_indices_match_dense(jit, D, dtype):
    g = torch.Generator().manual_seed(D)
    for M, N in [(1, 1), (2, 31), (257, 1000)]:
        x = torch.randn(M, D, generator=g, dtype=dtype)
        y = torch.randn(N, D, generator=g, dtype=dtype)
        xi, yj = lazy(x, y)
        k = min(5, N)
        idx = ((xi - yj) ** 2).sum(-1).argKmin(k, dim=1, backend="cpu")
        ref = d2_ref(x, y).topk(k, dim=1, largest=False).indices
        assert torch.equal(idx, ref), (M, N)


def test_self_distance_is_zero_and_first(jit):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(300, 64, generator=g) * 30 + 100  # large norms: the expansion cancels most
    xi, yj = lazy(y[:200], y)
    vals, idx = ((xi - yj) ** 2).sum(-1).Kmin_argKmin(2, dim=1, backend="cpu")
    assert torch.equal(idx[:, 0], torch.arange(200))
    assert (vals[:, 0] >= 0).all() and (vals[:, 0] <= 1e-2 * vals[:, 1]).all()


def test_gaussian_sums_batched_float64_and_dot(jit):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 70, 33, generator=g, dtype=torch.float64) / 4
    y = torch.randn(3, 257, 33, generator=g, dtype=torch.float64) / 4
    b = torch.randn(3, 257, 2, generator=g, dtype=torch.float64)
    xi, yj = lazy(x, y)
    bj = LazyTensor(b[:, None, :, :])
    out = ((-((xi - yj) ** 2).sum(-1)).exp() * bj).sum(dim=2, backend="cpu")
    ref = torch.exp(-d2_ref(x, y)) @ b
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    dot = ((xi | yj).exp() * bj).sum(dim=2, backend="cpu")
    torch.testing.assert_close(dot, torch.exp(x @ y.transpose(1, 2)) @ b, rtol=1e-12, atol=1e-12)


def test_gradient(jit):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(40, 64, generator=g) / 8).requires_grad_(True)
    y = torch.randn(129, 64, generator=g) / 8
    b = torch.randn(129, 3, generator=g)
    xi, yj = lazy(x, y)
    a = ((-((xi - yj) ** 2).sum(-1)).exp() * LazyTensor(b[None])).sum(dim=1, backend="cpu")
    (gx,) = torch.autograd.grad((a**2).sum(), [x])
    xr = x.detach().double().requires_grad_(True)
    ar = torch.exp(-((xr[:, None] - y.double()[None]) ** 2).sum(-1)) @ b.double()
    (gr,) = torch.autograd.grad((ar**2).sum(), [xr])
    torch.testing.assert_close(gx.double(), gr, rtol=1e-4, atol=1e-5)


def test_special_values_keep_the_difference_form(jit, monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 32, generator=g)
    y = torch.randn(70, 32, generator=g)
    x[3, 5] = float("nan")
    x[4, 0] = float("inf")
    y[7, 1] = float("-inf")
    x[5, :] = 3e19  # finite, but |x|^2 overflows float32
    xi, yj = lazy(x, y)
    d2 = ((xi - yj) ** 2).sum(-1)
    vals = d2.Kmin(70, dim=1, backend="cpu")
    s = (-d2).exp().sum(dim=1, backend="cpu")
    assert torch.isnan(s[3]).all() and torch.isfinite(s[0]).all()
    assert torch.isnan(vals[3]).any()
    assert torch.isinf(vals[4]).all() and torch.isinf(vals[[0, 1, 2, 4, 5, 6], -1]).all()  # column 7: inf
    ref = ((x[:, None] - y[None]) ** 2).sum(-1).sort(dim=1).values  # float32, the same special values
    torch.testing.assert_close(vals[5], ref[5], rtol=1e-5, atol=0)
    keep = [r for r in range(20) if r not in (3, 4, 5)]
    torch.testing.assert_close(vals[keep], ref[keep], rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("POLYKEOPS_JIT", "off")  # the generic engine: pair by pair
    torch.testing.assert_close(vals, d2.Kmin(70, dim=1, backend="cpu"), rtol=1e-4, atol=1e-4, equal_nan=True)


def test_ties_as_the_generic_engine(jit, monkeypatch):
    g = torch.Generator().manual_seed(5)
    y = torch.randint(-2, 3, (400, 24), generator=g).float()  # integers: exact dots, many ties
    y = torch.cat([y, y[:100]])
    x = torch.randint(-2, 3, (50, 24), generator=g).float()
    xi, yj = lazy(x, y)
    d2 = ((xi - yj) ** 2).sum(-1)
    kernel = d2.argKmin(7, dim=1, backend="cpu")
    monkeypatch.setenv("POLYKEOPS_JIT", "off")
    assert torch.equal(kernel, d2.argKmin(7, dim=1, backend="cpu"))


def test_close_pairs_far_from_the_origin_keep_their_accuracy(jit):
    # |x|^2 + |y|^2 - 2 x.y cancels here: such entries are recomputed in the difference form
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 48, generator=g) + 10
    y = torch.randn(500, 48, generator=g) + 10
    y[:64] = x + 1e-3 * torch.randn(64, 48, generator=g)
    xi, yj = lazy(x, y)
    vals, idx = ((xi - yj) ** 2).sum(-1).Kmin_argKmin(3, dim=1, backend="cpu")
    ref = d2_ref(x, y).topk(3, dim=1, largest=False)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(vals.double(), ref.values, rtol=1e-5, atol=0)


@pytest.mark.parametrize("reduction", ["min", "argmin", "max", "argmax", "Kmin_argKmin"])
def test_selections_read_the_block_directly(jit, monkeypatch, reduction):
    """A formula that is the block itself (a distance, a dot product) reduced by a selection: the
    rows' states take the block column by column (pk_select_block, pk_kmin_block), with the
    results of the row-by-row reduction -- ties, NaNs and infinities included, across tiles,
    work items and j chunks (few rows: j is split across threads)."""
    g = torch.Generator().manual_seed(7)
    for M, N in [(1, 2), (31, 257), (400, 1000), (3, 5000)]:
        x = torch.randint(-2, 3, (2, M, 20), generator=g).float()  # exact products, many ties
        y = torch.randint(-2, 3, (2, N, 20), generator=g).float()
        y[:, N // 2] = x[:, 0]  # ties and zeros
        if N > 10:
            y[0, 3, 4] = float("nan")
            y[1, 5, 0] = float("inf")
        if M > 10:
            x[0, 7, 1] = float("nan")
        xi, yj = lazy(x, y)
        for formula in [((xi - yj) ** 2).sum(-1), (xi * yj).sum(-1)]:
            if reduction == "Kmin_argKmin":
                got = formula.Kmin_argKmin(min(4, N), dim=2, backend="cpu")
            else:
                got = getattr(formula, reduction)(dim=2, backend="cpu")
            monkeypatch.setenv("POLYKEOPS_JIT", "off")  # the generic engine: pair by pair
            if reduction == "Kmin_argKmin":
                ref = formula.Kmin_argKmin(min(4, N), dim=2, backend="cpu")
            else:
                ref = getattr(formula, reduction)(dim=2, backend="cpu")
            monkeypatch.setenv("POLYKEOPS_JIT", "sync")
            got_all = got if isinstance(got, tuple) else [got]
            for a, b in zip(got_all, ref if isinstance(ref, tuple) else [ref]):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    if reduction == "max":  # and against a dense reference: NaN wins
        dense = (x[0, :, None] * y[0, None]).sum(-1)
        top = dense.nan_to_num(-float("inf")).max(1).values
        want = torch.where(torch.isnan(dense).any(1), float("nan"), top)
        torch.testing.assert_close(got[0, :, 0], want, rtol=0, atol=0, equal_nan=True)


def test_block_selection_in_the_source():
    f, vs = parse_reduction_formula("SqDist(x, y)", ["x = Vi(0, 32)", "y = Vj(1, 32)"])
    for red, helper in [("ArgKMin", "pk_kmin_block("), ("ArgMin", "pk_select_block(")]:
        k = 3 if "K" in red else None
        spec = ReductionSpec(reduction=red, formulas=(f,), variables=vs, k=k).canonical()
        src = KernelWriter(spec).source()
        assert helper in src and "fb[" not in src
    g, vs = parse_reduction_formula("Exp(-SqDist(x, y))", ["x = Vi(0, 32)", "y = Vj(1, 32)"])
    spec = ReductionSpec(reduction="ArgMax", formulas=(g,), variables=vs).canonical()
    assert "pk_select_block(" not in KernelWriter(spec).source()  # the formula is not the block


_ANY_PROGRAM = r"""
#include "pk_runtime.h"
#include <stdio.h>
#define PK_T T
#define PK_ACC T
#define PK_FN(x) x
#define PK_EXPACC exp
#include "pk_reduce.h"
int main(void)
{
    enum { W = PK_W_FOR(T) };
    static T o[W] __attribute__((aligned(64))), thr[W];
    int code;
    while (scanf("%d", &code) == 1) {  /* a value code per lane for o, then for thr */
        for (int l = 0; l < 2 * W; ++l) {
            if (l > 0 && scanf("%d", &code) != 1) return 1;
            T v = code == 100 ? (T)NAN : code == 101 ? (T)INFINITY : code == -101 ? -(T)INFINITY : (T)code;
            if (l < W) o[l] = v; else thr[l - W] = v;
        }
        printf("%d %d\n", pk_block_any(o, thr, 0), pk_block_any(o, thr, 1));
    }
    return 0;
}
"""


@pytest.mark.parametrize("isa", ["-mavx512f", "-mavx2", "-mno-avx"])
@pytest.mark.parametrize("T", ["float", "double"])
def test_block_candidate_test_on_every_isa(tmp_path, isa, T):
    """pk_block_any (the vector test of the block selections) on each code path (AVX-512, AVX2,
    portable): true when a lane's value is NaN, or its threshold NaN, or the value beats it."""
    import random
    import subprocess
    import sys

    from polykeops.backends.cpu.compiler import INCLUDE_DIR, compiler_command

    if sys.platform != "linux" or __import__("platform").machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 code paths")
    src = tmp_path / "any.c"
    src.write_text(f"typedef {T} T;\n" + _ANY_PROGRAM)
    exe = tmp_path / "any"
    subprocess.run(compiler_command() + ["-O2", isa, "-I", str(INCLUDE_DIR), str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True)
    W = 16 if T == "float" else 8
    rnd = random.Random(isa + T)
    codes = [-101, -3, 0, 2, 5, 101, 100]
    cases, want = [], []
    for _ in range(300):
        o = [rnd.choice(codes) for _ in range(W)]
        t = [rnd.choice(codes) for _ in range(W)]
        if rnd.random() < 0.4:  # values equal to their thresholds but in a few lanes
            o = [5 if v == 100 else v for v in o]
            t = list(o)
            for _ in range(rnd.randrange(3)):
                t[rnd.randrange(W)] = rnd.choice(codes)
        cases.append(" ".join(map(str, o + t)))

        def val(c):
            return {100: float("nan"), 101: float("inf"), -101: -float("inf")}.get(c, c)

        lo = any(not (val(a) >= val(b)) for a, b in zip(o, t))
        hi = any(not (val(a) <= val(b)) for a, b in zip(o, t))
        want.append(f"{int(lo)} {int(hi)}")
    out = subprocess.run([str(exe)], input="\n".join(cases) + "\n", capture_output=True, text=True)
    if out.returncode < 0:  # SIGILL: an instruction set this CPU lacks
        pytest.skip(f"this CPU cannot run {isa} code")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:-1] == want
    assert set(want) == {"0 0", "0 1", "1 0", "1 1"}  # every outcome is exercised


@pytest.mark.parametrize("isa", [["-mavx2", "-mfma"], []], ids=["avx2", "baseline"])
def test_blocks_on_narrower_instruction_sets(jit, monkeypatch, isa):
    """The kernels built for AVX2 (4x3 register tiles of 32-byte vectors) and for baseline x86-64:
    kNN (block selections, fused finishing of the distances, close pairs) and a Gaussian sum,
    against dense references."""
    import platform

    from polykeops.backends.cpu import compiler

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 instruction sets")
    if isa and "avx2" not in compiler.cpu_flags().split():
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setattr(compiler, "_arch_flags", lambda: list(isa))
    g = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(300, 40, generator=g, dtype=dtype) + 5
        y = torch.randn(1100, 40, generator=g, dtype=dtype) + 5
        y[:50] = x[:50] + 1e-3  # close pairs far from the origin
        xi, yj = lazy(x, y)
        d2 = ((xi - yj) ** 2).sum(-1)
        vals, idx = d2.Kmin_argKmin(4, dim=1, backend="cpu")
        ref = d2_ref(x, y).topk(4, dim=1, largest=False)
        assert torch.equal(idx, ref.indices)
        torch.testing.assert_close(vals.double(), ref.values, rtol=1e-4, atol=1e-6)
        b = torch.randn(1100, 3, generator=g, dtype=dtype)
        s = (-d2 / 40).exp() @ b
        torch.testing.assert_close(s.double(), (-d2_ref(x, y) / 40).exp() @ b.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", ["sync", "off"], ids=["kernel", "generic"])
@pytest.mark.parametrize("shift", [10.0, 1e3])
def test_points_far_from_the_origin_are_centred(jit, monkeypatch, shift, engine, dtype):
    """Far from the origin (for their spread), the squared-distance blocks work on x - c and
    y - c (c: the mean of a work item's rows), in the specialised kernels (pk_ip_centre) and the
    generic engine (pkg_block_rows), so that the expansion keeps its accuracy for every pair;
    rows with NaN or infinite entries are left out of the centre, and keep their values; an
    i-only expression as an operand is centred like a variable."""
    f, vs = parse_reduction_formula("SqDist(x, y)", ["x = Vi(0, 48)", "y = Vj(1, 48)"])
    spec = ReductionSpec(reduction="ArgKMin", formulas=(f,), variables=vs, k=3).canonical()
    assert "pk_ip_centre(" in KernelWriter(spec).source()
    monkeypatch.setenv("POLYKEOPS_JIT", engine)
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(2, 300, 48, generator=g) + shift).to(dtype)
    y = (torch.randn(2, 2000, 48, generator=g) + shift).to(dtype)
    x[0, 3, 2] = float("nan")
    x[1, 4, 0] = float("inf")
    xi, yj = lazy(x, y)
    vals, idx = ((xi - yj) ** 2).sum(-1).Kmin_argKmin(5, dim=2, backend="cpu")
    ref = d2_ref(x, y).topk(5, dim=2, largest=False)
    assert torch.isnan(vals[0, 3]).all() and torch.isinf(vals[1, 4]).all()
    ok = torch.ones(2, 300, dtype=torch.bool)
    ok[0, 3] = ok[1, 4] = False
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(vals[ok].double(), ref.values[ok], rtol=rtol, atol=0)
    assert (idx[ok] == ref.indices[ok]).double().mean() > 0.999  # float32 near-ties may swap
    s = (-((xi * 2 - yj * 2) ** 2).sum(-1) / 160).exp().sum(dim=2, backend="cpu")
    want = (-d2_ref(2 * x, 2 * y) / 160).exp().sum(2, keepdim=True)
    torch.testing.assert_close(s[ok].double(), want[ok], rtol=100 * rtol, atol=0)
