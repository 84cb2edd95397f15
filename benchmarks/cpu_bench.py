"""CPU benchmarks of polykeops against pykeops, PyTorch and a hand-written C kernel.

Run from the repository root (after ``pip install -e .``, which builds the generic engine)::

    python benchmarks/cpu_bench.py            # ~10 minutes on 2 cores
    python benchmarks/cpu_bench.py --quick    # fewer sizes and 3 runs, for a smoke test
    python benchmarks/cpu_bench.py --full     # also the real M = N = 1M run and its peak memory
    python benchmarks/cpu_bench.py --highdim  # D = 3 to 256: kNN vs FAISS, K @ b vs torch GEMM
                                              # (benchmarks/highdim.py; with --quick: smaller sizes)

It writes ``benchmarks/results/cpu_bench.md`` (a markdown table), ``cpu_bench.png``
(a plot; needs matplotlib) and ``cpu_bench.json``.

Implementations, side by side:

* ``polykeops``: the specialised kernel of each formula (``POLYKEOPS_JIT=sync``,
  built before timing);
* ``polykeops generic``: the generic engine only (``POLYKEOPS_JIT=off``);
* ``pykeops``: pykeops' CPU backend, when it is installed (``pip install
  pykeops``; it compiles each formula with g++ on first use);
* ``torch dense``: PyTorch on dense blocks of rows (``cdist``, ``exp``, matmul);
* ``hand-written C``: ``benchmarks/handwritten_gauss.c`` (OpenMP, ``omp simd``,
  ``-ffast-math`` vector ``expf``), for the Gaussian sum only: the ceiling.

Throughput is reported in pairs (i, j) per second: the median of ``--runs`` runs
(default 5) after one warm-up; the implementations of a workload take turns, run after
run, so that other activity on the machine slows them alike.  When a run over all M
rows would take longer than ``--seconds`` (default 1 s), the implementation is timed on
its first rows only (all N columns): the cost is linear in the rows, and the table marks
it with ``*``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))

from baselines import import_pykeops_torch  # noqa: E402

import polykeops  # noqa: E402
from polykeops.torch import LazyTensor as PkLazy  # noqa: E402

_keops = import_pykeops_torch()
KeopsLazy = _keops.LazyTensor if _keops is not None else None


# ---------------------------------------------------------------------------
# workloads: each returns a callable computing the reduction on rows x[:m]
# ---------------------------------------------------------------------------


def lazy_workload(kind, LT, x, y, b, backend_kw):
    """The LazyTensor code (identical for polykeops and pykeops)."""
    xi, yj = LT(x[:, None, :]), LT(y[None, :, :])
    d2 = ((xi - yj) ** 2).sum(-1)
    if kind == "gauss":
        bj = LT(b[None, :, :])
        return lambda: ((-d2).exp() * bj).sum(dim=1, **backend_kw)
    if kind == "lse":
        return lambda: (-d2).logsumexp(dim=1, **backend_kw)
    if kind == "knn":
        return lambda: d2.argKmin(10, dim=1, **backend_kw)
    if kind == "kb":
        return lambda: (-d2).exp() @ b
    if kind == "grad":
        xr = x.clone().requires_grad_(True)
        bj = LT(b[None, :, :])

        def run():
            xi2 = LT(xr[:, None, :])
            a = ((-((xi2 - yj) ** 2).sum(-1)).exp() * bj).sum(dim=1, **backend_kw)
            return torch.autograd.grad(a.sum(), [xr])[0]

        return run
    raise ValueError(kind)


def torch_workload(kind, x, y, b):
    """Dense PyTorch on blocks of rows (at most ~64 MB per block)."""
    rows = max(1, (1 << 24) // max(1, y.shape[0]))

    def blocks(fn):
        return torch.cat([fn(x[s : s + rows]) for s in range(0, x.shape[0], rows)])

    if kind == "gauss" or kind == "kb":
        return lambda: blocks(lambda xs: torch.exp(-(torch.cdist(xs, y) ** 2)) @ b)
    if kind == "lse":
        return lambda: blocks(lambda xs: torch.logsumexp(-(torch.cdist(xs, y) ** 2), dim=1, keepdim=True))
    if kind == "knn":
        return lambda: blocks(lambda xs: torch.topk(torch.cdist(xs, y) ** 2, 10, dim=1, largest=False)[1])
    if kind == "grad":

        def run():
            outs = []
            for s in range(0, x.shape[0], rows):
                xs = x[s : s + rows].clone().requires_grad_(True)
                a = torch.exp(-((xs[:, None, :] - y[None]) ** 2).sum(-1)) @ b
                outs.append(torch.autograd.grad(a.sum(), [xs])[0])
            return torch.cat(outs)

        return run
    raise ValueError(kind)


_HANDWRITTEN = {}


#: the hand-written kernel gets the 512-bit vectors that polykeops' kernels use on AVX-512 CPUs
#: (GCC's tuning otherwise keeps loops on 256-bit vectors there): the same compiler, the same width
WIDE_VECTORS = (["-mprefer-vector-width=512"]
                if os.path.exists("/proc/cpuinfo") and " avx512f " in open("/proc/cpuinfo").read() else [])


def handwritten_lib():
    if "lib" in _HANDWRITTEN:
        return _HANDWRITTEN["lib"]
    cc = shutil.which("gcc") or shutil.which("cc")
    lib = None
    if cc:
        out = Path(tempfile.mkdtemp(prefix="pk-bench-")) / "handwritten_gauss.so"
        cmd = [
            cc,
            "-O3",
            "-march=native",
            *WIDE_VECTORS,
            "-ffast-math",
            "-fopenmp",
            "-shared",
            "-fPIC",
            str(HERE / "handwritten_gauss.c"),
            "-o",
            str(out),
            "-lm",
        ]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            lib = ctypes.CDLL(str(out))
            lib.gauss_sum.restype = ctypes.c_int
            lib.gauss_sum.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    _HANDWRITTEN["lib"] = lib
    return lib


def handwritten_workload(x, y, b, threads):
    lib = handwritten_lib()
    if lib is None:
        return None
    out = torch.empty(x.shape[0], 1)

    def run():
        lib.gauss_sum(
            x.shape[0], y.shape[0], x.data_ptr(), y.data_ptr(), b.data_ptr(), out.data_ptr(), threads
        )
        return out

    return run


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def set_jit(mode):
    os.environ["POLYKEOPS_JIT"] = mode


def calibrate(make, M, N, seconds):
    """(callable, rows): make(m) with m <= M rows chosen so that one run takes about `seconds`."""
    m = min(M, max(64, int(2e7 // max(N, 1))))
    fn = make(m)
    fn()  # warm-up (and, for pykeops, compilation)
    if m < M:
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        m = min(M, max(m, int(m * seconds / max(t, 1e-9))))
        fn = make(m)
        fn()
    return fn, m


def measure_all(fns: dict, N, runs):
    """name -> (pairs/s, rows, median seconds); the implementations take turns, run after run,
    so that a busy machine slows them all alike."""
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, (fn, _m) in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, (_fn, m) in fns.items():
        t = float(np.median(times[name]))
        out[name] = (m * N / t, m, t)
    return out


def impls(kind, D, threads):
    """name -> make(x, y, b) -> callable (or None when unavailable for this workload)."""
    out = {}

    def pk(mode):
        def make(x, y, b):
            fn = lazy_workload(kind, PkLazy, x, y, b, {"backend": "cpu"})

            def run():
                set_jit(mode)  # read at call time: the implementations take turns
                return fn()

            return run

        return make

    out["polykeops"] = pk("sync")
    out["polykeops generic"] = pk("off")
    if KeopsLazy is not None:
        out["pykeops"] = lambda x, y, b: lazy_workload(kind, KeopsLazy, x, y, b, {})
    out["torch dense"] = lambda x, y, b: torch_workload(kind, x, y, b)
    if kind == "gauss" and D == 3:
        out["hand-written C"] = lambda x, y, b: (
            handwritten_workload(x, y, b, threads) if x.dtype == torch.float32 else None
        )
    return out


def workloads(args):
    big = [10_000, 100_000, 1_000_000] if not args.quick else [10_000, 100_000]
    wl = [dict(kind="gauss", D=3, N=n, dtype="float32", label=f"Gaussian sum, D=3, N={_k(n)}") for n in big]
    wl += [
        dict(kind="gauss", D=3, N=n, dtype="float64", label=f"Gaussian sum, D=3, N={_k(n)}, float64")
        for n in big
    ]
    wl.append(
        dict(kind="lse", D=3, N=100_000, dtype="float32", label="logsumexp_j(-sqdist(x_i, y_j)), D=3, N=100k")
    )
    wl.append(dict(kind="knn", D=3, N=100_000, dtype="float32", label="argKmin K=10, D=3, N=100k"))
    wl.append(dict(kind="knn", D=64, N=100_000, dtype="float32", label="argKmin K=10, D=64, N=100k"))
    wl.append(dict(kind="grad", D=3, N=100_000, dtype="float32", label="grad_x of Gaussian sum, D=3, N=100k"))
    wl.append(dict(kind="kb", D=16, N=100_000, dtype="float32", E=1, label="K @ b, D=16, b: N x 1, N=100k"))
    wl.append(dict(kind="kb", D=16, N=100_000, dtype="float32", E=32, label="K @ b, D=16, b: N x 32, N=100k"))
    return wl


def _k(n):
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def data(w, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, w["dtype"])
    D, N = w["D"], w["N"]
    scale = 1.0 / math.sqrt(D)  # distances of order 1 whatever D
    x = torch.rand(M, D, generator=g, dtype=dt) * scale
    y = torch.rand(N, D, generator=g, dtype=dt) * scale
    b = torch.randn(N, w.get("E", 1), generator=g, dtype=dt)
    return x, y, b


# ---------------------------------------------------------------------------
# cold start and memory (fresh subprocesses)
# ---------------------------------------------------------------------------

COLD = textwrap.dedent(
    """
    import sys, time, json, random
    t0 = time.perf_counter()
    import numpy as np
    from polykeops.numpy import LazyTensor
    t1 = time.perf_counter()
    n = 10_000
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    b = rng.standard_normal((n, 1)).astype(np.float32)
    c = random.Random().randint(2, 10**9)  # an exact constant never seen before: a new formula
    xi, yj, bj = LazyTensor(x[:, None]), LazyTensor(y[None]), LazyTensor(b[None])
    t2 = time.perf_counter()
    a = ((-(((xi - yj) ** 2).sum(-1)) / c).exp() * bj).sum(dim=1)
    t3 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "first_call": t3 - t2}))
    """
)

COLD_KEOPS = textwrap.dedent(
    """
    import time, json, random, io, contextlib
    import numpy as np
    with contextlib.redirect_stdout(io.StringIO()):
        from pykeops.numpy import LazyTensor
    n = 10_000
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    b = rng.standard_normal((n, 1)).astype(np.float32)
    c = random.Random().randint(2, 10**9)  # (a float would be a parameter: no new formula)
    xi, yj, bj = LazyTensor(x[:, None]), LazyTensor(y[None]), LazyTensor(b[None])
    t2 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        a = ((-(((xi - yj) ** 2).sum(-1)) / c).exp() * bj).sum(dim=1)
    print(json.dumps({"first_call": time.perf_counter() - t2}))
    """
)

MEMORY = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from polykeops.numpy import LazyTensor

    def status(key):  # kB -> MB, from /proc/self/status (VmHWM: peak resident memory)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    m, n = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    x, y = rng.random((m, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    b = rng.standard_normal((n, 1)).astype(np.float32)
    xi, yj, bj = LazyTensor(x[:, None]), LazyTensor(y[None]), LazyTensor(b[None])
    ((-((xi[:10] - yj) ** 2).sum(-1)).exp() * bj).sum(dim=1)  # build or load the kernel first
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak to the current size
        fh.write("5")
    t = time.perf_counter()
    a = ((-((xi - yj) ** 2).sum(-1)).exp() * bj).sum(dim=1)
    t = time.perf_counter() - t
    print(json.dumps({"peak_mb": status("VmHWM"), "before_mb": before, "seconds": t,
                      "inputs_mb": (x.nbytes + y.nbytes + b.nbytes + a.nbytes) / 2**20}))
    """
)


def _python(code, env_extra, args=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    res = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=3600
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def cold_start(runs):
    # the package's bytecode compiled first, as `pip install` does (without it, with
    # PYTHONDONTWRITEBYTECODE set, every run would time the compilation of the modules it imports)
    import compileall

    compileall.compile_dir(str(ROOT / "polykeops"), quiet=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        auto = [
            _python(COLD, {"POLYKEOPS_CACHE_DIR": f"{tmp}/a{r}", "POLYKEOPS_JIT": "auto"})
            for r in range(runs)
        ]
        sync = [
            _python(COLD, {"POLYKEOPS_CACHE_DIR": f"{tmp}/s{r}", "POLYKEOPS_JIT": "sync"})
            for r in range(max(3, runs // 2))
        ]
    med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
    rows.append(
        ("polykeops, first call of a new formula (JIT auto: generic engine)", med(auto, "first_call"))
    )
    rows.append(
        ("polykeops, first call with a specialised build (JIT sync, empty cache)", med(sync, "first_call"))
    )
    rows.append(("polykeops, `import polykeops.numpy`", med(auto, "import")))
    if KeopsLazy is not None:
        try:
            k = _python(COLD_KEOPS, {})
            rows.append(("pykeops, first call of a new formula (compiles with g++)", k["first_call"]))
        except Exception as exc:  # pragma: no cover
            print("pykeops cold start failed:", exc)
    return rows


# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="target duration of one timed run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="also time M = N = 1M in full and its memory")
    parser.add_argument("--only", default="", help="comma-separated workload kinds (gauss,lse,knn,grad,kb)")
    parser.add_argument("--highdim", action="store_true",
                        help="only the high-dimensional comparisons against FAISS and torch GEMMs")
    args = parser.parse_args(argv)
    if args.highdim and os.environ.get("OMP_WAIT_POLICY") is None:
        # FAISS's best setting on a small machine: read by the OpenMP runtime when it loads
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if args.quick:
        args.runs = min(args.runs, 3)
    threads = int(os.environ.get("POLYKEOPS_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    RESULTS.mkdir(exist_ok=True)
    machine = _machine(threads)
    print(machine, flush=True)
    if args.highdim:
        import highdim

        set_jit("sync")
        print(highdim.run(PkLazy, args.runs, args.quick, threads, RESULTS, machine))
        return

    results = []
    for w in workloads(args):
        if args.only and w["kind"] not in args.only.split(","):
            continue
        M = w["N"]
        x_all, y, b = data(w, M)
        row = {"label": w["label"], "kind": w["kind"], "M": M, "N": w["N"], "impls": {}}
        fns = {}
        for name, make in impls(w["kind"], w["D"], threads).items():
            if make(x_all[:2], y, b) is None:
                continue
            try:
                fns[name] = calibrate(
                    lambda m, make=make, x=x_all, y=y, b=b: make(x[:m], y, b), M, w["N"], args.seconds
                )
            except Exception as exc:
                print(f"  {name}: failed: {type(exc).__name__}: {exc}", flush=True)
        for name, (pps, m, t) in measure_all(fns, w["N"], args.runs).items():
            row["impls"][name] = {"pairs_per_s": pps, "rows": m, "seconds": t}
            print(
                f"{w['label']:45s} {name:18s} {pps:10.3g} pairs/s  ({m} x {w['N']} in {t:.3f} s)", flush=True
            )
        results.append(row)

    cold = cold_start(args.runs) if not args.only else []
    for label, t in cold:
        print(f"{label}: {t:.3f} s", flush=True)
    memory = None
    if not args.only:
        m = 1_000_000 if args.full else 20_000
        memory = _python(MEMORY, {"POLYKEOPS_JIT": "sync"}, (m, 1_000_000))
        memory["M"], memory["N"] = m, 1_000_000
        print("memory:", memory, flush=True)

    md = render_markdown(results, cold, memory, machine, args)
    (RESULTS / "cpu_bench.md").write_text(md)
    (RESULTS / "cpu_bench.json").write_text(
        json.dumps({"machine": machine, "results": results, "cold": cold, "memory": memory}, indent=1)
    )
    plot(results)
    print(md)


def _machine(threads):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from polykeops.backends.cpu import generic

    return (
        f"{cpu}, {threads} threads; polykeops {polykeops.__version__} "
        f"({generic.available()[1]}), torch {torch.__version__}"
        + (", pykeops installed" if KeopsLazy is not None else ", pykeops not installed")
    )


def render_markdown(results, cold, memory, machine, args):
    names = ["polykeops", "polykeops generic", "pykeops", "torch dense", "hand-written C"]
    present = [n for n in names if any(n in r["impls"] for r in results)]
    lines = [
        f"Machine: {machine}. Median of {args.runs} runs (implementations taking turns); "
        "pairs (i, j) per second.",
        "",
    ]
    head = "| workload | " + " | ".join(present) + " | polykeops / pykeops | polykeops / torch |"
    if "hand-written C" in present:
        head += " polykeops / hand-written C |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        im = r["impls"]
        cells = []
        for n in present:
            if n in im:
                star = "*" if im[n]["rows"] < r["M"] else ""
                cells.append(f"{im[n]['pairs_per_s']:.3g}{star}")
            else:
                cells.append("-")
        ours = im.get("polykeops", {}).get("pairs_per_s")

        def ratio(other, ours=ours, im=im):
            o = im.get(other, {}).get("pairs_per_s")
            return f"{ours / o:.1f}x" if ours and o else "-"

        line = f"| {r['label']} | " + " | ".join(cells) + f" | {ratio('pykeops')} | {ratio('torch dense')} |"
        if "hand-written C" in present:
            line += f" {ratio('hand-written C')} |"
        lines.append(line)
    lines += ["", "`*`: timed on the first rows only (all N columns), the cost being linear in the rows.", ""]
    if cold:
        lines += [
            "| cold start (M = N = 10k, Gaussian sum, fresh process and cache) | seconds |",
            "|---|---|",
        ]
        lines += [f"| {label} | {t:.3f} |" for label, t in cold]
        lines.append("")
    if memory:
        lines.append(
            f"Memory (Gaussian sum, M = {memory['M']:,}, N = {memory['N']:,}, float32, fresh process): "
            f"peak resident size {memory['peak_mb']:.0f} MB during the call, {memory['before_mb']:.0f} MB "
            f"before it (inputs and output: {memory['inputs_mb']:.0f} MB): the call adds "
            f"{memory['peak_mb'] - memory['before_mb']:.0f} MB (per-thread tile buffers and the output), "
            f"no M x N buffer ({memory['M'] * memory['N'] * 4 / 2**30:,.0f} GB in float32); "
            f"{memory['seconds']:.1f} s."
        )
    return "\n".join(lines) + "\n"


def plot(results):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    names = ["polykeops", "polykeops generic", "pykeops", "torch dense", "hand-written C"]
    present = [n for n in names if any(n in r["impls"] for r in results)]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / max(1, len(present))
    for q, n in enumerate(present):
        vals = [r["impls"].get(n, {}).get("pairs_per_s", 0) for r in results]
        ax.bar(np.arange(len(results)) + q * width, vals, width, label=n)
    ax.set_yscale("log")
    ax.set_ylabel("pairs (i, j) per second")
    ax.set_xticks(np.arange(len(results)) + width * (len(present) - 1) / 2)
    ax.set_xticklabels([r["label"] for r in results], rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("polykeops CPU engine (higher is better)")
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu_bench.png", dpi=110)
    print(f"plot: {RESULTS / 'cpu_bench.png'}")


if __name__ == "__main__":
    main()
