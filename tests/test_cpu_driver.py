"""The Cython + OpenMP driver of the CPU engines: Ctrl-C, fork, instruction-set variants,
threads, and a kernel taking over a call running on the generic engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from polykeops.backends.cpu import CpuBackend, generic, kernels
from polykeops.backends.cpu.omp import driver
from polykeops.backends.reference import ReferenceBackend

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(driver() is None, reason="the CPU engine is not built")
HAS_CC = CpuBackend().compiler_status()[0]

LONG_CALL = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from polykeops.numpy import LazyTensor
    n = int(sys.argv[1])
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    b = rng.random((n, 1), dtype=np.float32)

    def gauss(m):
        X, Y = LazyTensor(x[:m, None]), LazyTensor(y[None, :m])
        return (-((X - Y) ** 2).sum(-1)).exp() @ b[:m]

    small = gauss(2000)  # warm (in sync mode: the kernel is built here)
    print("ready", flush=True)
    try:
        gauss(n)
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.time(), flush=True)
    again = gauss(2000)  # the process is still usable
    print("usable", bool(np.allclose(again, small)), flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["off", "sync"])
def test_ctrl_c_stops_a_long_reduction(mode, tmp_path):
    if mode == "sync" and not HAS_CC:
        pytest.skip("no C compiler")
    if mode == "off" and not generic.available()[0]:
        pytest.skip("generic engine not built")
    env = dict(os.environ, POLYKEOPS_JIT=mode, POLYKEOPS_NUM_THREADS="2",
               POLYKEOPS_CACHE_DIR=os.environ.get("POLYKEOPS_CACHE_DIR", str(tmp_path / "cache")),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # 300k x 300k pairs: tens of seconds on two cores, whichever engine
    proc = subprocess.Popen([sys.executable, "-c", LONG_CALL, "300000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        assert line and line[0] == "interrupted", (line, proc.stderr.read())
        latency = float(line[1]) - sent
        # the driver looks for signals every 30 ms; 0.2 s on an idle machine, margin for busy CI
        assert latency < 1.0, latency
        assert proc.stdout.readline().split() == ["usable", "True"]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _spec_and_args(nx, ny, seed=0):
    from polykeops.formula import ReductionSpec, Var
    from polykeops.formula import algebra as A
    from polykeops.formula.nodes import CAT_I, CAT_J

    x, y, b = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 2, CAT_J)
    k = A.node("Exp", A.neg(A.vsum(A.square(A.sub(x, y)))))
    spec = ReductionSpec("Sum", (A.mul(k, b),), (x, y, b))
    rng = np.random.default_rng(seed)
    args = [rng.random((nx, 3), dtype=np.float32), rng.random((ny, 3), dtype=np.float32),
            rng.standard_normal((ny, 2)).astype(np.float32)]
    return spec, args


def test_every_instruction_set_variant_agrees():
    """The portable, AVX2 and AVX-512 builds of the generic engine (those this CPU runs) give the
    reference's answer; the best one is chosen at run time."""
    found = generic.variants()
    if not found:
        pytest.skip("generic engine not built")
    assert generic._load() is next(iter(found.values()))
    spec, args = _spec_and_args(300, 1000)
    expected = ReferenceBackend().evaluate(spec, args, nx=300, ny=1000, batch_shape=())[0]
    from polykeops.backends.cpu.call import prepare

    for isa, mod in found.items():
        eng = generic.GenericEngine(spec, mod)
        prepared = prepare(spec, args, 300, 1000, (), 2, block_rows=eng.block_rows)
        eng.run(prepared)
        np.testing.assert_allclose(prepared.outputs[0], expected, rtol=1e-5, atol=1e-5, err_msg=isa)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_runs_on_one_thread():
    """After fork (the OpenMP pool of the parent does not exist in the child) the driver runs
    its parallel regions with one thread: right answers, no hang."""
    spec, args = _spec_and_args(2000, 3000)
    expected = CpuBackend().evaluate(spec, args, nx=2000, ny=3000, batch_shape=())[0]  # threads ran
    assert not driver().forked_child()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            got = CpuBackend().evaluate(spec, args, nx=2000, ny=3000, batch_shape=())[0]
            code = 0 if driver().forked_child() and np.allclose(got, expected, rtol=1e-5, atol=1e-5) else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the forked child hung")
    assert os.read(r, 1) == b"\x00"


def test_openmp_driver():
    assert driver().openmp()


@pytest.mark.skipif(not HAS_CC or not generic.available()[0], reason="needs cc and the generic engine")
def test_a_long_call_moves_to_its_kernel_when_it_is_ready(tmp_path, monkeypatch):
    """auto mode, a new formula, one long call: the kernel is built during the call and takes over
    the work items left (the rows computed by either engine are right)."""
    from fractions import Fraction

    import polykeops.backends.cpu as cpu
    from polykeops.formula import ReductionSpec, Var
    from polykeops.formula import algebra as A
    from polykeops.formula.nodes import CAT_I, CAT_J

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    monkeypatch.setenv("POLYKEOPS_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "SWITCH_PAIRS", 1e9)
    c = Fraction(int(np.random.SeedSequence().entropy % 10**9) + 1, 10**9)  # a formula never built
    x, y, b = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 1, CAT_J)
    k = A.node("Exp", A.neg(A.mul(A.const(c), A.vsum(A.square(A.sub(x, y))))))
    spec = ReductionSpec("Sum", (A.mul(k, b),), (x, y, b))
    n = 90_000  # 8e9 pairs: several seconds on the generic engine, a kernel builds in about 2 s
    rng = np.random.default_rng(1)
    args = [rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32),
            rng.standard_normal((n, 1)).astype(np.float32)]
    before = kernels.TABLE.switched_items
    got = CpuBackend().evaluate(spec, args, nx=n, ny=n, batch_shape=())[0]
    assert kernels.TABLE.switched_items > before  # work items ran on the kernel
    assert kernels.TABLE.get_loaded(spec) is not None
    rows = np.r_[0:50, n - 50:n]  # the first rows ran on the generic engine, the last on the kernel
    ref = ReferenceBackend().evaluate(spec, [args[0][rows]] + args[1:], nx=len(rows), ny=n, batch_shape=())[0]
    np.testing.assert_allclose(got[rows], ref, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not HAS_CC, reason="needs Cython and a C compiler")
def test_cached_template_translation_is_cythons_translation_of_the_module(tmp_path, monkeypatch):
    """A kernel's C module is the cached translation of the module template with the kernel's C
    in place: the same text as Cython's translation of the rendered module."""
    from polykeops.backends.cpu import compiler
    from polykeops.backends.cpu.kernel_module import MODULE, c_of, module_source
    from polykeops.backends.cpu.kernel_source import KernelWriter

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path / "cache"))
    spec, _ = _spec_and_args(1, 1)
    c_source = KernelWriter(spec).source() + '/* a backslash: "\\n" */\n'
    pyx_text = module_source(c_source)
    assert c_of(pyx_text) == c_source
    work = tmp_path / "work"
    work.mkdir()
    pyx = work / f"{MODULE}.pyx"
    pyx.write_text(pyx_text)
    direct = work / "direct.c"
    compiler.cythonize(pyx, direct, work / "log")
    cached = work / "cached.c"
    compiler.translate_kernel(pyx, cached, work / "log")
    assert cached.read_text() == direct.read_text()
