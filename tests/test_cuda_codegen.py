"""The CUDA backend without a GPU: NVRTC compiles what it generates, an emulator runs it.

* NVRTC (``cuda-python`` + ``nvidia-cuda-nvrtc`` wheels) compiles, for sm_80 and
  sm_90, the kernels of every op, every reduction, their gradient formulas, a
  hypothesis sample of random formulas of the conformance strategies, float16 and
  float64 variants -- many specs per translation unit to keep CI cheap.  Skipped
  when NVRTC is not installed.
* The host emulator (:mod:`polykeops.backends.cuda.emulator`) compiles the same
  kernel text with g++ and runs the grid on CPU threads: every reduction, both
  schemes (1D and 2D + combine), small tiles, batch broadcasting, dtypes, special
  values, chunked and sliced code paths, gradients -- against the reference backend.
* Tests marked ``gpu`` compare the backend with dense torch and run only where a
  CUDA GPU is available.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from polykeops.backends.cuda import build, cache, cubin, emulator, launch
from polykeops.backends.cuda import nvrtc as cu_nvrtc
from polykeops.backends.reference import ReferenceBackend
from polykeops.errors import BackendError, PolyKeopsError
from polykeops.formula.nodes import CAT_I, CAT_J, CAT_P, Node, Var, substitute
from polykeops.formula.ops import public_ops
from polykeops.formula.parser import parse_reduction_formula
from polykeops.formula.reduction_grads import selection_gradient, sum_like_gradient
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec


def _nvrtc_missing() -> str | None:
    try:
        cu_nvrtc.version()
        return None
    except PolyKeopsError as exc:
        return str(exc)


def _gpu_missing() -> str | None:
    from polykeops.backends.cuda import CudaBackend

    ok, why = CudaBackend().availability()
    return None if ok else why


NVRTC_MISSING = _nvrtc_missing()
needs_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC unavailable: {NVRTC_MISSING}")
needs_cxx = pytest.mark.skipif(emulator.compiler() is None, reason="no C++ compiler for the CUDA emulator")
GPU_MISSING = _gpu_missing()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=f"no usable CUDA GPU: {GPU_MISSING}")
ARCHS = ("sm_80", "sm_90")


# ---------------------------------------------------------------------------
# spec builders
# ---------------------------------------------------------------------------

_DIM_TRIALS = ((3, 3, 3), (1, 1, 1), (6, 3), (3, 6), (2, 3), (3, 2))


def op_spec(opdef, dtype="float32") -> ReductionSpec:
    """A Sum reduction of ``op(x_i, y_j, p)`` with dimensions and parameters the op accepts."""
    rnd = random.Random(opdef.name)
    for dims in _DIM_TRIALS:
        if len(dims) < opdef.arity:
            continue
        dims = dims[: opdef.arity]
        vs = tuple(Var(k, d, (CAT_I, CAT_J, CAT_P)[k]) for k, d in enumerate(dims))
        params = opdef.random_params(dims, rnd) if opdef.random_params else ()
        try:
            f = Node(opdef.name, vs, params)
        except PolyKeopsError:
            continue
        return ReductionSpec("Sum", (f,), vs, dtype=dtype)
    raise AssertionError(f"no operand dimensions found for op {opdef.name}")


def gradient_specs(spec) -> list[ReductionSpec]:
    """The reductions autograd evaluates for d(spec)/d(each argument), canonical."""
    out = []
    red = spec.red
    for p in range(len(spec.variables)):
        if red.is_sum_like and red.differentiable:
            out.append(sum_like_gradient(spec, p).spec.canonical())
        elif red.is_selection and red.differentiable:
            h, e = selection_gradient(spec, p)
            mapping = {v: Var(v.index, v.dim, CAT_I) for v in spec.variables if v.cat == CAT_J}
            variables = tuple(mapping.get(v, v) for v in spec.variables) + (e,)
            out.append(spec.with_(reduction="Sum", formulas=(substitute(h, mapping),),
                                  variables=variables, k=None))
    return out


_X3 = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "p = Pm(3)"]


def reduction_spec(name: str, dtype="float32", **options) -> ReductionSpec:
    """One spec per reduction: a scalar or vector formula of an i-, a j- and a parameter variable."""
    red = REDUCTIONS[name]
    if red.scalar_formula:
        f, vs = parse_reduction_formula("-SqDist(x * p, y) + b", _X3)
    else:
        f, vs = parse_reduction_formula("(x - y) * p + b", _X3)
    forms = (f,)
    if red.n_formulas == 2:
        g, _ = parse_reduction_formula("Exp(y) * b", _X3)
        forms = (f, g)
    k = 4 if red.uses_k else None
    return ReductionSpec(name, forms, vs, k=k, dtype=dtype, **options)


def all_reduction_specs(dtype="float32") -> list[ReductionSpec]:
    specs = [reduction_spec(name, dtype) for name in REDUCTIONS]
    specs += [reduction_spec("Sum", dtype, sum_scheme=s) for s in ("kahan_scheme", "direct_sum")]
    specs += [reduction_spec("LogSumExp", dtype, axis=0)]
    if dtype != "float64":
        specs += [reduction_spec("Sum", dtype, dtype_acc="float64")]
    if dtype == "float16":
        specs += [reduction_spec("Sum", dtype, dtype_acc="float16")]
    return specs


def with_gradients(specs, keep=lambda grad_index: True) -> list[ReductionSpec]:
    out = list(specs)
    for s in specs:
        out += [g for n, g in enumerate(gradient_specs(s.canonical())) if keep(n)]
    return out


#: reductions whose gradient formulas have their own shape (the others: Sum-like or plain)
_GRADIENT_REPRESENTATIVES = ("LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight", "Min_ArgMin", "KMin")


def _compile(specs, arch, **kw):
    built, sources = build.compile_specs(specs, arch, **kw)
    res = built.resources()
    for ks in sources.values():
        for name in ks.kernel_names:
            assert name in res, f"kernel {name} missing from the cubin"
            assert 0 < res[name].registers <= 255
    return built, sources, res


def _assert_no_spill(sources, res):
    spilled = {str(ks.spec): res[s.main].local_bytes
               for ks in sources.values() for s in ks.slices if res[s.main].local_bytes}
    assert not spilled, f"kernels use local memory (register spills): {spilled}"


# ---------------------------------------------------------------------------
# NVRTC: code generation compiles
# ---------------------------------------------------------------------------


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_op_and_its_gradients_compile(arch):
    specs = [op_spec(o) for o in public_ops()]
    assert len(specs) == len(public_ops()) > 30
    built, sources, res = _compile(with_gradients(specs), arch)
    assert built.arch == arch and cubin.kernel_resources(built.binary)
    assert len(sources) > len(specs)  # gradients were added
    _assert_no_spill(sources, res)  # D = 3 formulas fit in registers


@needs_nvrtc
def test_every_op_compiles_in_float64():
    """float64 uses the double math functions (exp, not expf): every op once."""
    _compile([op_spec(o, "float64") for o in public_ops()], "sm_90")


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_reduction_and_its_gradients_compile(arch):
    specs = all_reduction_specs("float32")
    assert {s.reduction for s in specs} == set(REDUCTIONS)
    reps = [s for s in specs if s.reduction in _GRADIENT_REPRESENTATIVES and s.axis == 1]
    grads = with_gradients(reps, keep=lambda n: n < 2)  # w.r.t. the i- and the j-variable
    built, sources, res = _compile(specs + grads, arch)
    assert len(sources) > len(specs) + len(_GRADIENT_REPRESENTATIVES)  # (some coincide)
    _assert_no_spill(sources, res)


@needs_nvrtc
@pytest.mark.parametrize("arch, dtype", [("sm_90", "float64"), ("sm_80", "float16"), ("sm_80", "bfloat16")])
def test_every_reduction_compiles_in_float64_float16_and_bfloat16(arch, dtype):
    specs = all_reduction_specs(dtype)
    _compile(specs, arch)
    _compile(specs[:3], arch, n_batch_dims=2, idx64=True)  # batch dimensions, 64-bit indices


def _conformance_formulas(n: int) -> list[ReductionSpec]:
    strategies = pytest.importorskip("conformance.strategies",
                                     reason="the conformance suite (conformance/) is not importable")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        red = data.draw(st.sampled_from(sorted(REDUCTIONS)))
        forms, vars_ = data.draw(strategies.formulas(red))
        out.append(ReductionSpec(red, forms, vars_, k=3 if REDUCTIONS[red].uses_k else None))

    collect()
    return out


@needs_nvrtc
@pytest.mark.parametrize("arch, n", [("sm_90", 16), ("sm_80", 8)])
def test_random_conformance_formulas_compile(arch, n):
    specs = _conformance_formulas(n)
    assert len(specs) == n
    _compile(specs, arch)


@needs_nvrtc
def test_wide_formulas_are_chunked_and_sliced_without_spills():
    """D = 256: the SqDist is a loop (no 256-wide temporaries), a 256-wide output runs as
    slices; neither spills registers."""
    gauss, vs = parse_reduction_formula("Exp(-SqDist(x, y)) * b", ["x = Vi(256)", "y = Vj(256)", "b = Vj(1)"])
    kb, vs2 = parse_reduction_formula("Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(256)"])
    s1 = ReductionSpec("Sum", (gauss,), vs)
    s2 = ReductionSpec("Sum", (kb,), vs2)
    dist, _ = parse_reduction_formula("SqDist(x, y)", ["x = Vi(256)", "y = Vj(256)"])
    s3 = ReductionSpec("ArgKMin", (dist,), vs[:2], k=10)
    grads = gradient_specs(s1)[:1]
    built, sources, res = _compile([s1, s2, s3, *grads], "sm_90")
    _assert_no_spill(sources, res)
    assert "for (int c" in sources[s1].body  # the chunk loop
    assert len(sources[s2].slices) > 1
    assert len(sources[grads[0]].slices) > 1  # gradient wrt x: 256 wide


@needs_nvrtc
def test_resources_from_the_cubin_match_ptxas():
    specs = [reduction_spec("Sum"), reduction_spec("ArgKMin"), reduction_spec("LogSumExp", "float64")]
    for arch in ARCHS:
        built, sources = build.compile_specs(specs, arch)
        from_log = cu_nvrtc.parse_ptxas_log(built.log)
        from_elf = built.resources()
        assert from_log and set(from_log) == set(from_elf)
        for name, r in from_elf.items():
            assert r.registers == from_log[name]["registers"]
            assert r.shared_bytes == from_log[name]["smem"]
            assert r.local_bytes == from_log[name]["stack"]
            assert r.arch == int(arch[3:])
        main = sources[specs[0]].slices[0].main
        assert from_elf[main].shared_bytes == sources[specs[0]].smem_bytes > 0


@needs_nvrtc
def test_compile_error_carries_the_log():
    with pytest.raises(cu_nvrtc.CompileError) as info:
        cu_nvrtc.compile_source('extern "C" __global__ void k() { undefined_name(); }', "sm_90")
    assert "undefined_name" in str(info.value) and "undefined_name" in info.value.log


@needs_nvrtc
def test_cli_prints_registers_and_shared_memory(capsys, tmp_path, monkeypatch):
    from polykeops.backends.cuda.__main__ import main

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    argv = ["compile", "Exp(-SqDist(x, y)) * b", "x = Vi(3)", "y = Vj(3)", "b = Vj(1)",
            "--reduction", "Sum", "--axis", "1", "--dtype", "float32", "--arch", "sm_80"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registers" in out and "sm_80 cubin" in out and "_main_0" in out and "_comb_0" in out
    row = next(line for line in out.splitlines() if "_main_0" in line).split()
    assert int(row[1]) > 0 and int(row[2]) == 4096  # 256 columns x (3 + 1) floats
    assert main(argv) == 0  # second time: from the disk cache
    assert "disk cache" in capsys.readouterr().out
    argv_w = ["compile", "-SqDist(x, y)", "x = Vi(3)", "y = Vj(3)", "--weight", "y",
              "--reduction", "SumSoftMaxWeight", "--axis", "0", "--arch", "sm_90", "--no-cache"]
    assert main(argv_w) == 0


def test_cli_reports_formula_and_compile_errors(capsys, monkeypatch):
    from polykeops.backends.cuda import __main__ as cli

    assert cli.main(["compile", "Exp(x", "x = Vi(3)"]) == 2
    assert "error" in capsys.readouterr().err

    def broken(*a, **k):
        raise cu_nvrtc.CompileError("failed", log="polykeops.cu(12): error: something broke")

    monkeypatch.setattr(build, "build", broken)
    assert cli.main(["compile", "SqDist(x, y)", "x = Vi(3)", "y = Vj(3)"]) == 1
    assert "something broke" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the disk cache
# ---------------------------------------------------------------------------


def test_cache_rebuilds_corrupted_and_truncated_files(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    calls = []

    def make():
        calls.append(1)
        return b"payload-" * 100

    key = cache.make_key("src", ("-O3",), "sm_90", (13, 0))
    assert cache.get_or_build(key, "cubin", make) == (b"payload-" * 100, True)
    assert cache.get_or_build(key, "cubin", make) == (b"payload-" * 100, False)
    path = cache._path(key, "cubin")
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # truncated
    assert cache.get_or_build(key, "cubin", make)[1] is True
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # corrupted
    path.write_bytes(bytes(data))
    assert cache.get_or_build(key, "cubin", make)[1] is True
    assert len(calls) == 3
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    # every input of the key matters
    variants = [("src", ("-O3",), "sm_90", (13, 0)), ("src2", ("-O3",), "sm_90", (13, 0)),
                ("src", ("-O2",), "sm_90", (13, 0)), ("src", ("-O3",), "sm_80", (13, 0)),
                ("src", ("-O3",), "sm_90", (13, 1))]
    keys = {cache.make_key(*a) for a in variants}
    assert len(keys) == 5


_CACHE_WORKER = """
import sys, time
from polykeops.backends.cuda import cache

def make():
    with open(sys.argv[1], "a") as fh:
        fh.write("built\\n")
    time.sleep(0.5)
    return b"kernel" * 1000

key = cache.make_key("same source", (), "sm_90", (13, 0))
assert cache.get_or_build(key, "cubin", make)[0] == b"kernel" * 1000
"""


def test_cache_builds_once_when_processes_race(tmp_path):
    counter = tmp_path / "count.txt"
    env = dict(os.environ, POLYKEOPS_CACHE_DIR=str(tmp_path / "c"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", _CACHE_WORKER, str(counter)], env=env)
             for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert counter.read_text().count("built") == 1


# ---------------------------------------------------------------------------
# launch planning
# ---------------------------------------------------------------------------


def test_launch_plan_1d_and_2d():
    big = launch.plan_launch(1_000_000, 1_000_000, 1, tile_j=256, block=256, max_threads=1024, sm_count=132)
    assert not big.two_d and big.grid_x * big.block >= 1_000_000 and big.block == 256
    few = launch.plan_launch(10, 1_000_000, 1, tile_j=256, block=256, max_threads=1024, sm_count=132)
    assert few.two_d and few.block == 32
    assert few.jchunk % 256 == 0 and few.nchunks * few.jchunk >= 1_000_000
    assert (few.nchunks - 1) * few.jchunk < 1_000_000 and few.nchunks <= launch.MAX_GRID_YZ
    limited = launch.plan_launch(100_000, 100, 1, tile_j=64, block=256, max_threads=160, sm_count=8)
    assert limited.block == 160 and not limited.two_d  # registers limit the block; short j: 1D
    batched = launch.plan_launch(100, 100_000, 200_000, tile_j=64, block=256, max_threads=1024, sm_count=8)
    assert batched.grid_z == launch.MAX_GRID_YZ and not batched.two_d
    forced = launch.plan_launch(500, 600, 1, tile_j=16, block=64, max_threads=1024, sm_count=1, scheme="2d")
    assert forced.two_d


def test_batch_strides_broadcast():
    sizes, strides = launch.batch_params([(2, 1, 5, 3), (1, 4, 7, 3), (2, 4, 3)], (2, 4))
    assert sizes == [2, 4]
    assert strides == [15, 0, 0, 21, 12, 3]


# ---------------------------------------------------------------------------
# the emulator: the generated kernels compute the right thing
# ---------------------------------------------------------------------------

_REF = ReferenceBackend()


def _data(spec, nx, ny, batch=(), per_var_batch=None, seed=0, fill=None):
    rng = np.random.default_rng(seed)
    args = []
    for n, v in enumerate(spec.variables):
        b = per_var_batch[n] if per_var_batch else batch
        rows = {CAT_I: (nx,), CAT_J: (ny,), CAT_P: ()}[v.cat]
        a = rng.uniform(0.2, 0.95, b + rows + (v.dim,)) if fill == "positive" else rng.standard_normal(
            b + rows + (v.dim,))
        args.append(a.astype(spec.dtype))
    return args


def _close(out, exp, dtype, what):
    for o, e in zip(out, exp):
        assert o.shape == e.shape and o.dtype == e.dtype, what
        if o.dtype == np.int64:
            np.testing.assert_array_equal(o, e, err_msg=what)
        else:
            tol = {"float16": 2e-2, "float32": 2e-5, "float64": 1e-12}[dtype]
            np.testing.assert_allclose(o.astype(np.float64), e.astype(np.float64), rtol=tol, atol=tol,
                                       err_msg=what)


def _emulate_all(cases, **options):
    """Build every case's kernels in one host library, then run each case and compare."""
    kss = [emulator.kernel_source(c["spec"], n_batch_dims=len(c.get("batch", ())),
                                  tile_j=options.get("tile_j")) for c in cases]
    emulator.build(*{ks.digest: ks for ks in kss}.values())
    for c in cases:
        spec, nx, ny, batch = c["spec"], c["nx"], c["ny"], c.get("batch", ())
        args = c.get("args") or _data(spec, nx, ny, batch, c.get("per_var_batch"), fill=c.get("fill"))
        for scheme in c.get("schemes", ("1d", "2d")):
            out = emulator.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, scheme=scheme, sm_count=8,
                                    **options)
            if ny == 0:  # the reduction of nothing: the documented empty outputs
                fills = spec.red.empty_outputs(tuple(f.dim for f in spec.formulas), spec.k)
                exp = tuple(np.broadcast_to(np.array(f, dtype=o.dtype), o.shape) for f, o in zip(fills, out))
            else:
                with np.errstate(all="ignore"):  # special values: the reference warns, we check
                    exp = _REF.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch)
            _close(out, exp, spec.dtype, f"{spec} ({scheme})")


@needs_cxx
def test_emulated_reductions_match_reference():
    """Every reduction; small tiles (many tiles, partial last tile), 2 row blocks, 1D and 2D."""
    cases = [dict(spec=s.canonical(), nx=37, ny=203) for s in all_reduction_specs("float32")]
    _emulate_all(cases, tile_j=16, block=32)


@needs_cxx
def test_emulated_dtypes_batches_and_schemes():
    cases = []
    for dtype in ("float16", "float64"):
        cases += [dict(spec=s.canonical(), nx=21, ny=75, schemes=("2d",))
                  for s in all_reduction_specs(dtype) if s.reduction in ("Sum", "LogSumExp", "ArgKMin")]
    gauss = reduction_spec("Sum")
    cases.append(dict(spec=gauss, nx=9, ny=50, batch=(2, 3),
                      per_var_batch=[(2, 1), (1, 3), (2, 3), (1, 1)]))
    cases.append(dict(spec=reduction_spec("Min_ArgMin"), nx=9, ny=50, batch=(3,),
                      per_var_batch=[(3,), (1,), (3,), (1,)]))
    for r in ("Sum", "LogSumExp", "Min_ArgMin", "KMin_ArgKMin", "SumSoftMaxWeight"):  # nothing to reduce
        cases.append(dict(spec=reduction_spec(r), nx=5, ny=0, schemes=("1d",)))
    cases.append(dict(spec=reduction_spec("ArgKMin"), nx=5, ny=2, schemes=("1d",)))  # K > N: -1
    _emulate_all(cases, tile_j=16, block=32)


@needs_cxx
def test_emulated_special_values():
    """NaN wins (first NaN index), ties go to the first index, LSE with -inf rows and +inf."""
    f, vs = parse_reduction_formula("x * y", ["x = Vi(2)", "y = Vj(2)"])
    nx, ny = 4, 40
    x = np.ones((nx, 2), np.float32)
    y = np.zeros((ny, 2), np.float32)
    y[5, 0] = y[9, 0] = -1.0  # ties for the min at 5 and 9
    y[7, 1] = y[30, 1] = np.nan  # first NaN at 7
    y[3, 1] = -2.0
    x[2] = -np.inf
    x[3] = np.inf
    cases = [dict(spec=ReductionSpec(r, (f,), vs, k=(5 if REDUCTIONS[r].uses_k else None)),
                  nx=nx, ny=ny, args=[x, y])
             for r in ("Min_ArgMin", "Max_ArgMax", "KMin_ArgKMin", "ArgMin", "Max")]
    g, vg = parse_reduction_formula("Sum(x * y)", ["x = Vi(2)", "y = Vj(2)"])
    y2 = np.ones((ny, 2), np.float32)
    y2[4] = np.inf
    cases += [dict(spec=ReductionSpec(r, (g,), vg), nx=nx, ny=ny, args=[x, y2])
              for r in ("LogSumExp", "Max_SumShiftExp")]
    _emulate_all(cases, tile_j=16, block=32)
    out = emulator.evaluate(cases[0]["spec"], [x, y], nx=nx, ny=ny, batch_shape=(), tile_j=16, block=32)
    assert out[1][0, 0] == 5 and out[1][0, 1] == 7 and np.isnan(out[0][0, 1])
    lse = emulator.evaluate(cases[-2]["spec"], [x, y2], nx=nx, ny=ny, batch_shape=(), tile_j=16, block=32)[0]
    assert lse[2, 0] == -np.inf and lse[3, 0] == np.inf and lse[0, 0] == np.inf


@needs_cxx
def test_emulated_chunked_sums_and_output_slices():
    g, vs = parse_reduction_formula("Exp(-SqDist(x, y) / 50) * b", ["x = Vi(80)", "y = Vj(80)", "b = Vj(70)"])
    w, vw = parse_reduction_formula("-SqDist(x, y) / 50", ["x = Vi(80)", "y = Vj(80)"])
    d, vd = parse_reduction_formula("x - y", ["x = Vi(40)", "y = Vj(40)"])
    cases = [
        dict(spec=ReductionSpec("Sum", (g,), vs), nx=19, ny=33),
        dict(spec=ReductionSpec("Sum", (g,), vs, sum_scheme="kahan_scheme"), nx=19, ny=33),
        dict(spec=ReductionSpec("SumSoftMaxWeight", (w, Var(2, 100, CAT_J)), vw + (Var(2, 100, CAT_J),)),
             nx=19, ny=33),
        dict(spec=ReductionSpec("KMin_ArgKMin", (d,), vd, k=3), nx=19, ny=33),
    ]
    edge = [  # i only, j only, parameter only; a chunked sum inside a hoisted scalar; nested sums
        ("Exp(-Sum(x * x) / 80) * x", ["x = Vi(80)"]),
        ("Sin(y) * Sum(y * y)", ["y = Vj(80)"]),
        ("p * Sum(p)", ["p = Pm(80)"]),
        ("Exp(-Sum((x - p) * (x - p)) / 80) * Sum(y * (x - p)) / 80",
         ["x = Vi(80)", "y = Vj(80)", "p = Pm(80)"]),
        ("Sum(x * Sum(y * y) / 80 - y) / 80", ["x = Vi(80)", "y = Vj(80)"]),
    ]
    for text, aliases in edge:
        f, v = parse_reduction_formula(text, aliases)
        cases.append(dict(spec=ReductionSpec("Sum", (f,), v), nx=11, ny=17))
    for c in cases[:1] + cases[2:4]:
        assert len(emulator.kernel_source(c["spec"]).slices) > 1
    assert "for (int c" in emulator.kernel_source(cases[0]["spec"]).body
    _emulate_all(cases, tile_j=8, block=32)


@needs_cxx
def test_emulated_gradients():
    specs = [reduction_spec(r) for r in ("Sum", "LogSumExp", "SumSoftMaxWeight", "Min_ArgMin", "KMin")]
    cases = [dict(spec=g, nx=13, ny=29, schemes=("1d",)) for s in specs for g in gradient_specs(s)]
    assert len(cases) >= 15
    _emulate_all(cases, tile_j=16, block=32)


@needs_cxx
def test_emulated_ops():
    """Every op, on data inside its domain (positive values: every domain is satisfied)."""
    cases = [dict(spec=op_spec(o), nx=7, ny=11, schemes=("1d",), fill="positive") for o in public_ops()]
    _emulate_all(cases, tile_j=8, block=32)


@needs_cxx
@needs_nvrtc
def test_backend_evaluate_on_a_fake_gpu(monkeypatch, tmp_path):
    """CudaBackend.evaluate end to end -- code generation, NVRTC build through the disk cache,
    module loading (once), launch planning, parameter packing of torch tensors -- with only the
    device replaced: launches go to the emulator, "device memory" is CPU tensors."""
    torch = pytest.importorskip("torch")
    from fake_gpu import install

    import polykeops.backends.cuda as cu

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    loads = install(monkeypatch)
    backend = cu.CudaBackend()
    backend._availability = (True, "fake GPU")
    for spec, nx, ny, batch in [(reduction_spec("Sum"), 300, 70, ()),  # 1D, 3 row blocks
                                (reduction_spec("ArgKMin"), 5, 1500, ()),  # 2D
                                (reduction_spec("LogSumExp", "float16"), 9, 40, (2,))]:
        args = [torch.from_numpy(a) for a in _data(spec, nx, ny, batch)]
        for _ in range(2):
            out = backend.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch)
        exp = _REF.evaluate(spec, [a.numpy() for a in args], nx=nx, ny=ny, batch_shape=batch)
        _close([o.numpy() for o in out], exp, spec.dtype, str(spec))
    assert len(loads) == 3  # one module per spec, not per call


# ---------------------------------------------------------------------------
# the backend object without a GPU
# ---------------------------------------------------------------------------


def test_importing_polykeops_imports_no_cuda():
    code = ("import sys, polykeops, polykeops.backends, polykeops.backends.cuda; "
            "bad = [m for m in sys.modules if m == 'cuda' or m.startswith('cuda.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_availability_says_what_is_missing(monkeypatch):
    import polykeops.backends.cuda as cu
    from polykeops.backends.cuda import driver

    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    ok, why = cu._probe()
    assert not ok and "cuda-python is not installed" in why
    monkeypatch.undo()
    if NVRTC_MISSING is not None:
        pytest.skip("cuda-python is needed for the remaining checks")

    def no_nvrtc():
        raise cu_nvrtc.NvrtcMissing("the NVRTC library was not found: pip install nvidia-cuda-nvrtc")

    monkeypatch.setattr(cu_nvrtc, "version", no_nvrtc)
    ok, why = cu._probe()
    assert not ok and "NVRTC" in why
    monkeypatch.undo()
    for reason in ("no NVIDIA driver: libcuda.so could not be loaded",
                   "the NVIDIA driver is installed but reports no CUDA GPU"):
        def fail(reason=reason):
            raise BackendError(reason)

        monkeypatch.setattr(driver, "init", fail)
        assert cu._probe() == (False, reason)
        monkeypatch.undo()


def test_capabilities_declare_the_renderable_ops():
    """Every public op is declared; a formula with an op the C renderer lacks is refused
    (auto selection then falls back to another backend) instead of failing at compile time."""
    from polykeops.backends.cuda import CudaBackend
    from polykeops.formula.ops import OPS

    caps = CudaBackend.capabilities
    assert {o.name for o in public_ops()} <= caps.ops
    ok_spec = reduction_spec("Sum")
    assert caps.unsupported(ok_spec, "torch", "cuda", False) is None
    for name in sorted(set(OPS) - caps.ops):
        try:
            spec = op_spec(OPS[name])
        except AssertionError:  # no simple operands for this op
            continue
        assert name in caps.unsupported(spec, "torch", "cuda", False)
        break
    else:
        pytest.skip("the C renderer renders every op of the op table")


def test_registry_knows_cuda_and_explicit_use_fails_loudly():
    import polykeops.backends as registry

    assert "cuda" in registry.names()
    ok, why = registry.available()["cuda"]
    backend = registry.instance("cuda")
    assert backend.priority == 20 and backend.capabilities.devices == frozenset({"cuda"})
    if ok:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="not available"):
        registry.get_backend("cuda")
    assert why  # a reason is always given


def test_cpu_tensors_are_rejected_with_a_clear_error():
    torch = pytest.importorskip("torch")
    from polykeops.backends.cuda import CudaBackend

    backend = CudaBackend()
    backend._availability = (True, "pretend")
    spec = reduction_spec("Sum")
    args = [torch.zeros(s) for s in [(4, 3), (5, 3), (5, 1), (3,)]]
    with pytest.raises(PolyKeopsError, match="CUDA tensors"):
        backend.evaluate(spec, args, nx=4, ny=5, batch_shape=())


# ---------------------------------------------------------------------------
# on a GPU: against dense torch
# ---------------------------------------------------------------------------


def _dense_gauss(x, y, b):
    return (-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)).exp() @ b


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("m, n", [(1000, 1500), (3, 20000), (20000, 5)])
def test_gpu_gaussian_sum_matches_dense_torch(dtype, m, n):
    import torch

    from polykeops.torch import LazyTensor

    tdt = getattr(torch, dtype)
    x, y = torch.randn(m, 3, device="cuda"), torch.randn(n, 3, device="cuda")
    b = torch.randn(n, 2, device="cuda")
    ref = _dense_gauss(x.double(), y.double(), b.double())
    xi, yj, bj = LazyTensor(x.to(tdt)[:, None]), LazyTensor(y.to(tdt)[None]), LazyTensor(b.to(tdt)[None])
    out = ((-((xi - yj) ** 2).sum(-1)).exp() * bj).sum(1, backend="cuda")
    assert out.dtype == tdt and out.device.type == "cuda"
    tol = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-10}[dtype]
    assert torch.allclose(out.double(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@needs_gpu
def test_gpu_reductions_and_gradients_match_dense_torch():
    import torch

    from polykeops.torch import LazyTensor

    x = torch.randn(700, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    y = torch.randn(900, 3, device="cuda", dtype=torch.float64)
    d = ((x[:, None] - y[None]) ** 2).sum(-1)
    xi, yj = LazyTensor(x[:, None]), LazyTensor(y[None])
    D = ((xi - yj) ** 2).sum(-1)
    lse = (-D).logsumexp(1, backend="cuda")
    assert torch.allclose(lse[:, 0], torch.logsumexp(-d, 1), atol=1e-10)
    idx = D.argKmin(10, dim=1, backend="cuda")
    assert torch.equal(idx, d.topk(10, dim=1, largest=False).indices)
    vals, ind = D.min_argmin(1, backend="cuda")
    assert torch.equal(ind[:, 0], d.argmin(1))
    (g,) = torch.autograd.grad(lse.sum(), [x])
    (g_ref,) = torch.autograd.grad(torch.logsumexp(-d, 1).sum(), [x])
    assert torch.allclose(g, g_ref, atol=1e-9)


@needs_gpu
def test_gpu_batches_and_wide_dimensions():
    import torch

    from polykeops.torch import LazyTensor

    x = torch.randn(2, 1, 300, 256, device="cuda")
    y = torch.randn(1, 3, 400, 256, device="cuda")
    b = torch.randn(2, 3, 400, 64, device="cuda")
    xi, yj = LazyTensor(x[..., :, None, :]), LazyTensor(y[..., None, :, :])
    bj = LazyTensor(b[..., None, :, :])
    out = ((-((xi - yj) ** 2).sum(-1) / 256).exp() * bj).sum(3, backend="cuda")
    k = (-((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1) / 256).exp()
    assert torch.allclose(out, k @ b, rtol=1e-4, atol=1e-4)


@needs_gpu
def test_gpu_modules_are_loaded_once():
    import torch

    from polykeops.backends import get_backend
    from polykeops.backends.cuda import driver

    backend = get_backend("cuda")
    spec = reduction_spec("Sum")
    args = [torch.randn(s, device="cuda") for s in [(40, 3), (50, 3), (50, 1), (3,)]]
    backend.evaluate(spec, args, nx=40, ny=50, batch_shape=())
    n = len(driver.device(0).modules)
    for _ in range(5):
        backend.evaluate(spec, args, nx=40, ny=50, batch_shape=())
    assert len(driver.device(0).modules) == n


@needs_cxx
def test_emulated_bfloat16_kernels_match_the_reference_backend():
    """bfloat16 storage (pk_bf16: loads widen to float, stores round to nearest even) on the host
    emulator: NumPy holds the bits as uint16, torch converts them."""
    torch = pytest.importorskip("torch")

    def bits(t):
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)

    def from_bits(a):
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)

    specs = [s.canonical() for s in all_reduction_specs("bfloat16")
             if s.reduction in ("Sum", "LogSumExp", "Min_ArgMin", "ArgKMin", "SumSoftMaxWeight")]
    kss = [emulator.kernel_source(s) for s in specs]
    emulator.build(*{ks.digest: ks for ks in kss}.values())
    for spec in specs:
        args64 = _data(spec.with_(dtype="float64"), 23, 90, seed=5)
        targs = [torch.from_numpy(a).to(torch.bfloat16) for a in args64]
        want = _REF.evaluate(spec, targs, nx=23, ny=90, batch_shape=())
        for scheme in ("1d", "2d"):
            got = emulator.evaluate(spec, [bits(t) for t in targs], nx=23, ny=90, batch_shape=(),
                                    scheme=scheme, sm_count=8, tile_j=16, block=32)
            for o, w, meta in zip(got, want, spec.outputs()):
                if meta.kind == "index":
                    np.testing.assert_array_equal(o, w.numpy(), err_msg=f"{spec} {scheme}")
                else:  # float32 in both, summed in another order: the same bfloat16 almost always
                    torch.testing.assert_close(from_bits(o).float(), w.float(), rtol=2.0**-7, atol=1e-3,
                                               msg=f"{spec} {scheme}")
                    same = np.mean(o == bits(w))
                    assert same >= 0.9, f"{spec} {scheme}: only {same:.0%} of the values round alike"
