"""High-dimensional features: polykeops against the BLAS-based incumbents (used by cpu_bench.py).

* exact kNN (K = 10, squared Euclidean distances) against FAISS ``IndexFlatL2`` (``pip install
  faiss-cpu``: a GEMM of the queries against the base, then a selection);
* the Gaussian kernel product ``exp(-|x_i - y_j|^2) @ b`` (b of width 4) against torch
  computing the same chunk by chunk with GEMMs (``|x|^2 + |y|^2 - 2 x @ y.T``, ``exp``, ``@ b``).

The implementations of a workload take turns, run after run; medians.  Writes
``results/cpu_highdim.md``, ``.json`` and ``.png`` (with matplotlib).  FAISS's OpenMP threads
must not spin against other threads on a small machine: run with ``OMP_WAIT_POLICY=PASSIVE``
(cpu_bench.py sets it), which is FAISS's best setting here (about 2x faster on 2 cores).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

K = 10


def workloads(quick: bool):
    small = [("knn", D, 2000, 50_000) for D in (3, 8, 16, 64, 128, 256)]
    small += [("kb", D, 1000, 50_000) for D in (64, 256)]
    if quick:
        return small
    big = [("knn", D, 5000, 100_000) for D in (3, 16, 64, 128, 256)]
    big += [("kb", D, 5000, 100_000) for D in (64, 256)]
    return big + small


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def implementations(kind, x, y, b, LazyTensor):
    """name -> callable, for one workload: "polykeops" and the baseline."""
    xi, yj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    d2 = ((xi - yj) ** 2).sum(-1)
    out = {}
    if kind == "knn":
        out["polykeops"] = lambda: d2.argKmin(K, dim=1, backend="cpu")
        faiss = _faiss()
        if faiss is not None:
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(y.numpy())
            xn = x.numpy()
            out["FAISS IndexFlatL2"] = lambda: index.search(xn, K)
        return out
    out["polykeops"] = lambda: (-d2).exp() @ b
    yn = (y * y).sum(1)
    rows = max(1, (1 << 24) // y.shape[0])

    def gemm():
        parts = []
        for s in range(0, x.shape[0], rows):
            xs = x[s : s + rows]
            d = (xs * xs).sum(1)[:, None] + yn[None] - 2 * (xs @ y.T)
            parts.append(torch.exp(-d) @ b)
        return torch.cat(parts)

    out["torch GEMM (chunked)"] = gemm
    return out


def fma_peak(threads: int) -> tuple[float, str]:
    """FMA peak in multiply-adds per second (float32), and how it was found: measured by
    ``fma_peak.c`` (chains of vector FMAs on every thread, best of 3) when a C compiler is
    there, else from the clock /proc/cpuinfo reports (no turbo, no AVX-512 down-clocking)."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc:
        out = Path(tempfile.mkdtemp(prefix="pk-bench-")) / "fma_peak.so"
        wide = ["-mprefer-vector-width=512"] if " avx512f " in flags else []
        cmd = [cc, "-O2", "-march=native", *wide, "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC",
               str(Path(__file__).parent / "fma_peak.c"), "-o", str(out)]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            lib = ctypes.CDLL(str(out))
            lib.fma_peak.restype = ctypes.c_double
            lib.fma_peak.argtypes = [ctypes.c_int, ctypes.c_int64]
            peak = max(lib.fma_peak(threads, 20_000_000) for _ in range(3))
            return peak, (f"{peak:.3g} float32 multiply-adds/s on {threads} threads, measured "
                          "(benchmarks/fma_peak.c: independent chains of vector FMAs)")
    mhz = 0.0
    for line in flags.splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":")[1])
            break
    lanes = 16 if "avx512f" in flags else 8
    peak = threads * 2 * lanes * mhz * 1e6
    return peak, (f"{threads} cores x 2 FMA units x {lanes} float32 lanes x {mhz / 1000:.2f} GHz "
                  f"(the clock /proc/cpuinfo reports; no turbo, no AVX-512 down-clocking assumed)")


def run(LazyTensor, runs: int, quick: bool, threads: int, results_dir, label_machine: str) -> str:
    rows = []
    peak, assumption = fma_peak(threads)
    for kind, D, M, N in workloads(quick):
        g = torch.Generator().manual_seed(D)
        x = torch.randn(M, D, generator=g) / D**0.5
        y = torch.randn(N, D, generator=g) / D**0.5
        b = torch.randn(N, 4, generator=g)
        fns = implementations(kind, x, y, b, LazyTensor)
        for fn in fns.values():
            fn()  # warm-up (and the kernel's compilation)
        times = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(t)) for name, t in times.items()}
        base = [n for n in med if n != "polykeops"]
        ratio = med[base[0]] / med["polykeops"] if base else float("nan")
        frac = M * N * D / med["polykeops"] / peak if peak else float("nan")
        row = dict(kind=kind, D=D, M=M, N=N, seconds=med, baseline=base[0] if base else None, ratio=ratio,
                   fma_fraction=frac)
        rows.append(row)
        name = "kNN K=10" if kind == "knn" else "Gaussian K@b (b: N x 4)"
        timings = "  ".join(f"{n}: {t:.3f} s" for n, t in med.items())
        print(f"{name:24s} D={D:<4d} M={M:<6d} N={N:<7d} {timings}  ratio {ratio:.2f}x"
              f"  FMA peak {100 * frac:.0f}%", flush=True)
    md = render(rows, runs, label_machine, assumption)
    results_dir.mkdir(exist_ok=True)
    (results_dir / "cpu_highdim.md").write_text(md)
    summary = {"machine": label_machine, "rows": rows}
    (results_dir / "cpu_highdim.json").write_text(json.dumps(summary, indent=1))
    plot(rows, results_dir)
    return md


def render(rows, runs, machine, assumption) -> str:
    lines = [
        f"Machine: {machine}. Float32, median of {runs} runs (implementations taking turns), "
        "OMP_WAIT_POLICY=PASSIVE. Ratio: baseline time / polykeops time (> 1: polykeops faster). "
        f"FMA peak: {assumption}; the fraction counts the D multiply-adds of each pair's inner product only.",
        "",
        "| workload | D | M | N | polykeops (s) | baseline | baseline (s) | ratio | fraction of FMA peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "kNN K=10" if r["kind"] == "knn" else "Gaussian `K @ b`"
        bs = r["seconds"].get(r["baseline"], float("nan")) if r["baseline"] else float("nan")
        lines.append(
            f"| {name} | {r['D']} | {r['M']:,} | {r['N']:,} | {r['seconds']['polykeops']:.3f} | "
            f"{r['baseline'] or '-'} | {bs:.3f} | {r['ratio']:.2f}x | {100 * r['fma_fraction']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, results_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(11, 5))
    labels = [f"{'kNN' if r['kind'] == 'knn' else 'K@b'} D={r['D']}\n{r['M'] // 1000}k x {r['N'] // 1000}k"
              for r in rows]
    bars = ax.bar(range(len(rows)), [r["ratio"] for r in rows],
                  color=["tab:blue" if r["kind"] == "knn" else "tab:orange" for r in rows])
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, r["ratio"] * 1.04, f"{r['ratio']:.2f}x", ha="center",
                fontsize=7)
    ax.axhline(1, color="k", lw=0.8)
    ax.axhline(1.5, color="tab:blue", lw=0.8, ls="--", label="kNN target (1.5x FAISS, D >= 16)")
    ax.axhline(2, color="tab:orange", lw=0.8, ls="--", label="K @ b target (2x GEMM, D = 256)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("speed-up over the baseline")
    ax.set_title("polykeops vs FAISS IndexFlatL2 (kNN) and chunked torch GEMM (K @ b), float32")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(results_dir / "cpu_highdim.png", dpi=110)
