"""The CPU backend's JIT modes and kernel cache: concurrency, corruption, fork, no compiler.

Tests that need a fresh cache use their own ``POLYKEOPS_CACHE_DIR`` and a
formula made unique by a random constant, so that no kernel loaded by another
test is reused.  Subprocesses import polykeops from this checkout.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import polykeops
from polykeops.backends.cpu import JIT_WORK_THRESHOLD, CpuBackend, cache, compiler, generic, kernels
from polykeops.backends.reference import ReferenceBackend
from polykeops.errors import BackendError, ConfigError
from polykeops.formula import ReductionSpec, Var
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_I, CAT_J

ROOT = Path(__file__).resolve().parents[1]
HAS_CC = CpuBackend().compiler_status()[0]
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler")
needs_generic = pytest.mark.skipif(not generic.available()[0], reason="generic engine not built")


def unique_spec(reduction="Sum", dtype="float32"):
    """exp(-c |x - y|^2) b with a random constant c: a formula no other test compiled."""
    c = Fraction(int(np.random.SeedSequence().entropy % 10**9) + 1, 10**9)
    x, y, b = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 1, CAT_J)
    d2 = A.vsum(A.square(A.sub(x, y)))
    k = A.node("Exp", A.neg(A.mul(A.const(c), d2)))
    forms = (A.mul(k, b),) if reduction == "Sum" else (A.neg(d2),)
    return ReductionSpec(reduction, forms, (x, y, b), dtype=dtype)


def args_for(nx, ny, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((nx, 3), dtype=np.float32), rng.random((ny, 3), dtype=np.float32),
            rng.standard_normal((ny, 1)).astype(np.float32)]


def run(spec, args):
    nx, ny = args[0].shape[0], args[1].shape[0]
    return CpuBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=())


def reference(spec, args):
    nx, ny = args[0].shape[0], args[1].shape[0]
    return ReferenceBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=())


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(path))
    return path


def sofiles(path: Path):
    return sorted(path.glob("cpu/*/*.so"))


# -- modes ---------------------------------------------------------------------------


@needs_cc
@needs_generic
def test_auto_answers_with_the_generic_engine_then_swaps_in_the_kernel(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    spec = unique_spec()
    n = int(JIT_WORK_THRESHOLD**0.5) + 1
    args = args_for(n, n)
    first = run(spec, args)
    assert kernels.TABLE.get_loaded(spec) is None  # answered without waiting for a compiler
    assert CpuBackend().wait_for_builds(120)
    kernel = kernels.TABLE.get_loaded(spec)
    assert kernel is not None and Path(kernel.path).exists()
    second = run(spec, args)
    np.testing.assert_allclose(first[0], second[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(second[0], reference(spec, args)[0], rtol=1e-4, atol=1e-3)


@needs_cc
@needs_generic
def test_auto_does_not_compile_small_one_off_calls(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    spec = unique_spec()
    run(spec, args_for(100, 100))
    assert CpuBackend().wait_for_builds(60)
    assert kernels.TABLE.get_loaded(spec) is None
    assert sofiles(fresh_cache) == []


@needs_cc
def test_sync_compiles_first(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    spec = unique_spec("LogSumExp")
    before = cache.BUILDS
    args = args_for(50, 700)
    out = run(spec, args)
    assert cache.BUILDS == before + 1
    assert kernels.TABLE.get_loaded(spec) is not None
    assert len(sofiles(fresh_cache)) == 1
    np.testing.assert_allclose(out[0], reference(spec, args)[0], rtol=1e-5, atol=1e-5)
    run(spec, args)
    assert cache.BUILDS == before + 1


@needs_generic
def test_off_never_compiles(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "off")
    spec = unique_spec()
    before = cache.BUILDS
    n = int(JIT_WORK_THRESHOLD**0.5) + 1
    run(spec, args_for(n, n))
    run(spec, args_for(n, n))
    assert CpuBackend().wait_for_builds(10)
    assert cache.BUILDS == before and sofiles(fresh_cache) == []


def test_invalid_jit_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "synch")
    with pytest.raises(ConfigError, match="sync"):
        run(unique_spec(), args_for(5, 5))


def test_num_threads(monkeypatch):
    spec = unique_spec()
    args = args_for(64, 5000)
    outs = []
    for n in ("1", "3"):
        monkeypatch.setenv("POLYKEOPS_NUM_THREADS", n)
        outs.append(run(spec, args)[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("POLYKEOPS_NUM_THREADS", "zero")
    with pytest.raises(ConfigError):
        run(spec, args)


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_concurrent_calls_share_the_thread_pool(mode, monkeypatch):
    """Several Python threads calling the same kernel at once: one call uses the kernel's pool
    of helper threads, the others create their own threads; every result is right, also for
    calls of different sizes one after the other (pool threads parked, woken, reused)."""
    if mode == "sync" and not HAS_CC:
        pytest.skip("no C compiler")
    if mode == "off" and not generic.available()[0]:
        pytest.skip("generic engine not built")
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    monkeypatch.setenv("POLYKEOPS_NUM_THREADS", "3")
    spec = unique_spec()
    cases = [args_for(n, 700) for n in (40, 300, 1000)]
    expected = [ReferenceBackend().evaluate(spec, a, nx=len(a[0]), ny=700, batch_shape=())[0] for a in cases]
    errors = []

    def worker(seed):
        try:
            for q in range(30):
                k = (seed + q) % len(cases)
                got = run(spec, cases[k])[0]
                np.testing.assert_allclose(got, expected[k], rtol=1e-4, atol=1e-5)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    for k, a in enumerate(cases):  # after the concurrent phase, one caller again
        np.testing.assert_allclose(run(spec, a)[0], expected[k], rtol=1e-4, atol=1e-5)


# -- the disk cache --------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from fractions import Fraction
    from polykeops.backends.cpu import CpuBackend, cache
    from polykeops.formula import ReductionSpec, Var, algebra as A
    c = Fraction(int(sys.argv[1]), 10**9)
    x, y, b = Var(0, 3, 0), Var(1, 3, 1), Var(2, 1, 1)
    d2 = A.vsum(A.square(A.sub(x, y)))
    spec = ReductionSpec("Sum", (A.mul(A.node("Exp", A.neg(A.mul(A.const(c), d2))), b),), (x, y, b))
    rng = np.random.default_rng(0)
    args = [rng.random((300, 3), dtype=np.float32), rng.random((900, 3), dtype=np.float32),
            rng.standard_normal((900, 1)).astype(np.float32)]
    (out,) = CpuBackend().evaluate(spec, args, nx=300, ny=900, batch_shape=())
    print(json.dumps({"builds": cache.BUILDS, "sum": float(out.astype(np.float64).sum())}))
    """
)


def _worker_env(cache_dir):
    env = dict(os.environ)
    env.update(POLYKEOPS_CACHE_DIR=str(cache_dir), POLYKEOPS_JIT="sync",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@needs_cc
def test_eight_processes_compile_a_new_kernel_once(fresh_cache, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    const = str(int(np.random.SeedSequence().entropy % 10**9) + 1)
    procs = [
        subprocess.Popen([sys.executable, str(script), const], env=_worker_env(fresh_cache),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["builds"] for r in results) == 1
    assert len({r["sum"] for r in results}) == 1
    assert len(sofiles(fresh_cache)) == 1
    # a later process finds it on disk
    out = subprocess.run([sys.executable, str(script), const], env=_worker_env(fresh_cache),
                         capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1])["builds"] == 0


def in_threads(work, n=8):
    """Runs ``work(t)`` for ``t`` in ``range(n)``, each in its own thread; the exceptions raised."""
    errors = []

    def guarded(t):
        try:
            work(t)
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@needs_cc
def test_eight_threads_share_one_build(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    spec = unique_spec()
    args = args_for(200, 3000)
    before = cache.BUILDS
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(t):
        barrier.wait()
        results[t] = run(spec, args)[0]

    assert not in_threads(work)
    assert cache.BUILDS == before + 1
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@needs_generic
def test_eight_threads_different_reductions_auto(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    args = args_for(150, 2000)
    specs = [unique_spec("Sum") if t % 2 else unique_spec("LogSumExp") for t in range(8)]
    expected = [reference(s, args)[0] for s in specs]

    def work(t):
        for _ in range(3):
            np.testing.assert_allclose(run(specs[t], args)[0], expected[t], rtol=1e-4, atol=1e-4)

    errors = in_threads(work)
    assert not errors, errors


@needs_cc
@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_corrupted_artifact_is_detected_and_rebuilt(damage, fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    spec = unique_spec()
    args = args_for(40, 500)
    expected = run(spec, args)[0]
    (so,) = sofiles(fresh_cache)
    meta = so.with_suffix(".json")
    # this process has the library mapped: damage a new inode (writing into a mapped file would
    # crash this process, which is why the cache itself only ever renames files into place)
    data = bytearray(so.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    if damage == "meta":
        meta.write_text("{not json")
    else:
        tmp = so.with_suffix(".damaged")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, so)
    kernels.forget_loaded()
    before = cache.BUILDS
    out = run(spec, args)[0]
    assert cache.BUILDS == before + 1  # rebuilt, never loaded
    np.testing.assert_array_equal(out, expected)
    key = json.loads(meta.read_text())["key"]
    assert cache.lookup(key) == so


@needs_cc
def test_clean_cache_removes_only_tagged_directories(fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    spec = unique_spec()
    run(spec, args_for(10, 10))
    other = fresh_cache / "not-ours"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    removed = polykeops.clean_cache()
    assert removed == [str(fresh_cache / "cpu")]
    assert sofiles(fresh_cache) == [] and (other / "keep.txt").exists()
    before = cache.BUILDS
    run(spec, args_for(10, 10))  # rebuilt on demand
    assert cache.BUILDS == before + 1


# -- fork --------------------------------------------------------------------------------


def _child(spec, args, conn):
    try:
        conn.send(run(spec, args)[0])
    except Exception as exc:  # pragma: no cover - sent to the parent
        conn.send(repr(exc))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["off", "sync", "auto"])
def test_fork_after_first_use(mode, monkeypatch):
    if mode != "off" and not HAS_CC:
        pytest.skip("no C compiler")
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    monkeypatch.setenv("POLYKEOPS_NUM_THREADS", "2")
    spec = unique_spec()
    n = int(JIT_WORK_THRESHOLD**0.5) + 1 if mode == "auto" else 300
    args = args_for(n, n)
    expected = run(spec, args)[0]  # first use: threads ran; in auto mode a build is now pending
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (the JIT worker)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(spec, args, child))
        proc.start()
    assert parent.poll(120), "the forked child did not answer (deadlock?)"
    got = parent.recv()
    proc.join(30)
    assert not isinstance(got, str), got
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    CpuBackend().wait_for_builds(120)


# -- no compiler, compiler errors, unknown ops ---------------------------------------------------


@needs_generic
def test_without_a_compiler_the_generic_engine_answers(monkeypatch, capsys):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    backend = CpuBackend()
    ok, why = backend.availability()
    assert ok and "no C compiler" in why and "generic engine" in why
    report = polykeops.check_health(verbose=True)
    assert "no C compiler" in report["backends"]["cpu"][1]
    assert "no C compiler" in capsys.readouterr().out
    spec = unique_spec()
    args = args_for(300, 300)
    for mode in ("auto", "sync"):
        monkeypatch.setenv("POLYKEOPS_JIT", mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = backend.evaluate(spec, args, nx=300, ny=300, batch_shape=())
        np.testing.assert_allclose(out[0], reference(spec, args)[0], rtol=1e-5, atol=1e-4)


def test_without_any_engine_the_cpu_backend_declines(monkeypatch):
    """No generic engine and POLYKEOPS_JIT=off: the CPU backend says it is unavailable (it never
    calls another backend itself), automatic selection uses another backend, and naming it
    is an error that says why."""
    from polykeops.backends import select_backend

    monkeypatch.setenv("POLYKEOPS_JIT", "off")
    monkeypatch.delenv("POLYKEOPS_BACKEND", raising=False)
    monkeypatch.setattr(generic, "available", lambda: (False, "not built"))
    monkeypatch.setattr(generic, "engine_for", lambda spec: None)
    ok, why = CpuBackend().availability()
    assert not ok and "generic engine is not built" in why
    spec = unique_spec()
    assert select_backend(None, spec, "numpy", "cpu", False).name == "reference"
    with pytest.raises(BackendError, match="'cpu' is not available.*generic engine is not built"):
        select_backend("cpu", spec, "numpy", "cpu", False)
    with pytest.raises(BackendError, match="no engine"):
        run(spec, args_for(10, 10))


@pytest.fixture
def broken_compiler(tmp_path, monkeypatch):
    cc = tmp_path / "brokencc"
    cc.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "brokencc 1.0"; exit 0; fi\n'
                  'echo "brokencc: error: this compiler always fails" >&2\nexit 1\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    return cc


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script compiler")
def test_compiler_error_shows_source_path_and_log(broken_compiler, fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    spec = unique_spec()
    with pytest.raises(compiler.CompileError) as info:
        run(spec, args_for(10, 10))
    text = str(info.value)
    assert "this compiler always fails" in text
    src = [w for w in text.split() if w.endswith(".c")]
    assert src and Path(src[0]).exists(), text


@needs_generic
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script compiler")
def test_auto_mode_survives_a_compiler_error(broken_compiler, fresh_cache, monkeypatch):
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    spec = unique_spec()
    n = int(JIT_WORK_THRESHOLD**0.5) + 1
    args = args_for(n, n)
    run(spec, args)
    assert CpuBackend().wait_for_builds(60)
    assert kernels.TABLE.failure(spec) is not None
    with pytest.warns(RuntimeWarning, match="generic engine"):
        out = run(spec, args)
    np.testing.assert_allclose(out[0][:50], reference(spec, [args[0][:50]] + args[1:])[0],
                               rtol=1e-5, atol=1e-4)


def test_unknown_op_is_declared_unsupported():
    from polykeops.backends import select_backend
    from polykeops.formula.ops import OPS, OpDef

    name = "TestOnlyCubeForCpu"
    OPS[name] = OpDef(name, 1, lambda d: d, lambda xp, a: a * a * a, None, public=False)
    try:  # (removed afterwards: other tests iterate over the op table)
        x, y = Var(0, 2, CAT_I), Var(1, 2, CAT_J)
        spec = ReductionSpec("Sum", (A.node(name, A.sub(x, y)),), (x, y))
        why = CpuBackend().capabilities.unsupported(spec, "numpy", "cpu", False)
        assert why and name in why
        assert select_backend(None, spec, "numpy", "cpu", False).name != "cpu"
        with pytest.raises(BackendError, match=name):
            select_backend("cpu", spec, "numpy", "cpu", False)
    finally:
        del OPS[name]
