"""Everything that needs a GPU, in one command: CUDA tests, conformance suite, GPU benchmarks.

    python benchmarks/gpu_check.py                 # all three parts
    python benchmarks/gpu_check.py --part bench    # only the benchmarks (or: tests, conformance)
    python benchmarks/gpu_check.py --quick         # smaller sizes, for a smoke run
    python benchmarks/gpu_check.py --part tensorcores   # only the tensor-core section (4.)

1. ``pytest tests/test_cuda_codegen.py tests/test_cuda_ranges.py tests/test_cuda_host.py
   tests/test_pytorch2_cuda.py``
   (the GPU tests run: a GPU is present);
2. ``pytest conformance --backend cuda`` when the conformance suite exists;
3. benchmarks of the CUDA backend against PyTorch dense (chunked over rows so that it
   fits in memory) and pykeops on the GPU when it can be imported, in the same run:
   Gaussian kernel sum D = 3 at N = 10k, 100k, 1M (float32 and float16), logsumexp,
   argKmin K = 10, the gradient of the Gaussian sum, ``K @ b`` with b of width 32,
   and D = 64 and D = 256, a block-sparse Gaussian sum (``ranges`` from a grid
   clustering of points in the unit cube; torch dense is masked by the kept
   blocks), and a NumPy-input Gaussian sum with ``backend="cuda"`` (host copies
   included in the time; torch dense on the GPU for comparison).  Each time is the
   median of at least 5 runs (CUDA events, after a warm-up call that also compiles),
   reported with the ratios and the error of polykeops against a float64 evaluation
   of the first rows;
4. tensor cores (``--part tensorcores``, also part of ``bench``): kNN (argKmin, K = 10) and
   Gaussian ``K @ b`` (b of width 1) at D = 64 and 256, in float16 (mma f16, FP32
   accumulation) and float32 with ``precision="tf32"``, against the SIMT kernels of the
   same data (float16 with tensor cores switched off; float32 IEEE) and torch (cuBLAS
   ``x @ y.T`` over chunks of rows, then ``torch.topk``; and ``torch.cdist`` for kNN),
   with the ratios, and the accuracy against float64 (fraction of kNN indices that differ,
   max relative error of the sums).  These kernels are verified on the CPU (NVRTC
   compilation, host emulation of every mma) but this section is their first timing.

Exit status: non-zero if a test part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tests(extra) -> int:
    tests = ["tests/test_cuda_codegen.py", "tests/test_cuda_ranges.py", "tests/test_cuda_host.py",
             "tests/test_pytorch2_cuda.py", "tests/test_cuda_tensor_cores.py"]
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-rs", *extra]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def run_conformance(extra) -> int:
    if not (ROOT / "conformance").is_dir():
        print("conformance/ not found: skipped", flush=True)
        return 0
    cmd = [sys.executable, "-m", "pytest", "conformance", "--backend", "cuda", "-q", *extra]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


# ---------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------


def _timer(torch, fn, repeats: int, budget_s: float):
    """Median milliseconds of ``fn`` over ``repeats`` runs (>= 5), after one warm-up call."""
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(5, repeats)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= 5 and sum(times) / 1000 > budget_s:
            break
    return statistics.median(times), first, out


def _workloads(torch, quick: bool):
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    mid = 20_000 if quick else 100_000
    w = []
    for n in sizes:
        for dtype in ("float32", "float16"):
            w.append(dict(name="gauss", n=n, d=3, dtype=dtype))
    w.append(dict(name="logsumexp", n=mid, d=3, dtype="float32"))
    w.append(dict(name="argKmin", n=mid, d=3, dtype="float32", k=10))
    w.append(dict(name="grad", n=mid, d=3, dtype="float32"))
    w.append(dict(name="K@b32", n=mid, d=3, dtype="float32"))
    w.append(dict(name="gauss", n=mid, d=64, dtype="float32"))
    w.append(dict(name="gauss", n=mid // 2, d=256, dtype="float32"))
    w.append(dict(name="gauss_ranges", n=mid * 4, d=3, dtype="float32"))
    w.append(dict(name="gauss_numpy", n=mid, d=3, dtype="float32"))
    return w


def _ranges_problem(torch, w, x, y):
    """Sort uniform points of the unit cube by grid cell; keep the cell pairs closer than
    0.2 (the kernel exp(-|x - y|^2 / 0.0025) is below 1e-6 further away)."""
    from polykeops.torch import cluster

    x, lx = cluster.sort_clusters(x, cluster.grid_cluster(x, 0.05))
    y, ly = cluster.sort_clusters(y, cluster.grid_cluster(y, 0.05))
    rx, cx, _ = cluster.cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster.cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < 0.2**2
    w["_ranges"] = cluster.from_matrix(rx, ry, keep)
    w["_mask"] = (keep, lx, ly)
    w["density"] = float(keep.float().mean())
    return x, y


def _data(torch, w):
    g = torch.Generator(device="cuda").manual_seed(0)
    n, d = w["n"], w["d"]
    dt = getattr(torch, w["dtype"])
    scale = d ** -0.5
    x = (torch.randn(n, d, device="cuda", generator=g) * scale).to(dt)
    y = (torch.randn(n, d, device="cuda", generator=g) * scale).to(dt)
    width = 32 if w["name"] == "K@b32" else 1
    b = torch.randn(n, width, device="cuda", generator=g).to(dt)
    if w["name"] == "gauss_ranges":  # points of the unit cube, sorted by cluster
        x, y = _ranges_problem(torch, w, (x / scale).sigmoid(), (y / scale).sigmoid())
    return x, y, b


def _lazy(LazyTensor, w, x, y, b, backend):
    xi, yj, bj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    D = ((xi - yj) ** 2).sum(-1)
    kw = {"backend": backend} if backend else {}
    name = w["name"]
    if name in ("gauss", "K@b32"):
        return lambda: ((-D).exp() * bj).sum(dim=1, **kw)
    if name == "gauss_ranges":
        if LazyTensor.__module__.startswith("pykeops"):
            K = (-D / 0.0025).exp() * bj
            K.ranges = w["_ranges"]
            return lambda: K.sum(dim=1, **kw)
        return lambda: ((-D / 0.0025).exp() * bj).sum(dim=1, ranges=w["_ranges"], **kw)
    if name == "gauss_numpy":  # host arrays in and out: the copies are part of the time
        import torch

        from polykeops.numpy import LazyTensor as NLazyTensor

        if not LazyTensor.__module__.startswith("polykeops"):
            raise ValueError("pykeops: not compared on NumPy inputs")
        xn, yn, bn = (t.cpu().numpy() for t in (x, y, b))
        Dn = ((NLazyTensor(xn[:, None, :]) - NLazyTensor(yn[None, :, :])) ** 2).sum(-1)
        bn_j = NLazyTensor(bn[None, :, :])
        return lambda: torch.from_numpy(((-Dn).exp() * bn_j).sum(dim=1, **kw))
    if name == "logsumexp":
        return lambda: (-D).logsumexp(dim=1, **kw)
    if name == "argKmin":
        return lambda: D.argKmin(w["k"], dim=1, **kw)
    if name == "grad":
        import torch

        xg = x.detach().clone().requires_grad_(True)
        xgi = LazyTensor(xg[:, None, :])
        Dg = ((xgi - yj) ** 2).sum(-1)

        def fn():
            a = ((-Dg).exp() * bj).sum(dim=1, **kw)
            return torch.autograd.grad(a.sum(), [xg])[0]

        return fn
    raise ValueError(name)


def _dense_chunked(torch, w, x, y, b, rows=None):
    """PyTorch dense baseline, over chunks of rows (an M x N matrix would not fit)."""
    n = y.shape[0]
    chunk = max(1, min(x.shape[0], (1 << 27) // max(n, 1)))
    name = w["name"]
    y2 = (y * y).sum(-1)

    def dist(xc):
        return ((xc * xc).sum(-1, keepdim=True) + y2[None, :] - 2 * xc @ y.T).clamp_min(0)

    def run():
        outs = []
        for s in range(0, x.shape[0] if rows is None else rows, chunk):
            xc = x[s : s + chunk]
            if name in ("gauss", "K@b32", "gauss_numpy"):
                outs.append(torch.exp(-dist(xc)) @ b)
            elif name == "gauss_ranges":
                keep, lx, ly = w["_mask"]
                mask = keep[lx[s : s + chunk]][:, ly]
                outs.append((torch.exp(-dist(xc) / 0.0025) * mask) @ b)
            elif name == "logsumexp":
                outs.append(torch.logsumexp(-dist(xc), dim=1, keepdim=True))
            elif name == "argKmin":
                outs.append(dist(xc).topk(w["k"], dim=1, largest=False).indices)
            elif name == "grad":
                xc = xc.detach().requires_grad_(True)
                a = torch.exp(-dist(xc)) @ b
                outs.append(torch.autograd.grad(a.sum(), [xc])[0])
        return torch.cat(outs)

    return run


def _error(torch, w, out, x, y, b, rows=64):
    """Max relative error of ``out`` on its first rows against float64 dense."""
    if w["name"] == "argKmin":
        ref = _dense_chunked(torch, w, x.double(), y.double(), b.double(), rows=rows)()[:rows]
        return float((out[:rows] != ref).float().mean())  # fraction of differing indices
    ref = _dense_chunked(torch, w, x.double()[:rows], y.double(), b.double())()
    got = out[:rows].double().to(ref.device)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def run_benchmarks(quick: bool, out_path: str | None) -> list[dict]:
    import torch

    import polykeops
    from polykeops.torch import LazyTensor

    polykeops.check_health()
    try:
        from pykeops.torch import LazyTensor as PkLazyTensor  # noqa: N813

        have_pykeops = True
    except Exception as exc:  # not installed, or no compiler / CUDA toolkit for it
        print(f"pykeops unavailable: {type(exc).__name__}: {exc}")
        have_pykeops = False
    dev = torch.cuda.get_device_name()
    print(f"\nGPU: {dev}; torch {torch.__version__}\n", flush=True)
    rows = []
    for w in _workloads(torch, quick):
        x, y, b = _data(torch, w)
        budget = 20.0 if w["n"] >= 1_000_000 else 5.0
        t_pk, first, out = _timer(torch, _lazy(LazyTensor, w, x, y, b, "cuda"), 5, budget)
        err = _error(torch, w, out, x, y, b)
        t_torch = _timer(torch, _dense_chunked(torch, w, x, y, b), 5, budget)[0]
        t_keops = None
        if have_pykeops:
            try:
                t_keops = _timer(torch, _lazy(PkLazyTensor, w, x, y, b, None), 5, budget)[0]
            except Exception as exc:
                print(f"pykeops failed on {w['name']} N = {w['n']}: {type(exc).__name__}: {exc}")
        row = dict(workload=w["name"], n=w["n"], d=w["d"], dtype=w["dtype"], polykeops_ms=t_pk,
                   first_call_s=first, torch_ms=t_torch, pykeops_ms=t_keops, error=err,
                   pairs_per_s=w["n"] * w["n"] / (t_pk / 1000))
        rows.append(row)
        _print_row(row, header=len(rows) == 1)
        del x, y, b, out
        torch.cuda.empty_cache()
    one_m = [r for r in rows if r["workload"] == "gauss" and r["n"] == 1_000_000 and r["dtype"] == "float32"]
    if one_m:
        t = one_m[0]["polykeops_ms"] / 1000
        print(f"\nTarget (H100): Gaussian sum N = 1M float32 <= 0.3 s: {t:.3f} s -> "
              f"{'met' if t <= 0.3 else 'NOT met'}")
    if out_path:
        Path(out_path).write_text(json.dumps(dict(gpu=dev, rows=rows), indent=2))
        print(f"results written to {out_path}")
    return rows


class _SimtOnly:
    """Within the block, the CUDA backend renders no tensor-core code (the SIMT kernels of
    the same specs, for comparison): sm_80 and newer are treated like older GPUs."""

    def __enter__(self):
        from polykeops.backends.cuda import build, mma

        self.mma, self.build, self.saved = mma, build, mma.MIN_ARCH
        mma.MIN_ARCH = 10**6
        self._clear()

    def __exit__(self, *exc):
        self.mma.MIN_ARCH = self.saved
        self._clear()

    def _clear(self):
        import polykeops.backends as registry

        self.build.kernel_source.cache_clear()
        registry.instance("cuda")._loaded.clear()


def run_tensor_cores(quick: bool) -> list[dict]:
    """Section 4 of the module docstring."""
    import contextlib

    import torch

    from polykeops.torch import LazyTensor

    n = 20_000 if quick else 100_000
    print(f"\nTensor cores, GPU: {torch.cuda.get_device_name()}, N = M = {n}\n", flush=True)
    print("| workload | D | data | path | ms | vs SIMT | vs torch | error |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for d in (64, 256):
        g = torch.Generator(device="cuda").manual_seed(d)
        x64 = torch.randn(n, d, device="cuda", generator=g, dtype=torch.float64) * d**-0.5
        y64 = torch.randn(n, d, device="cuda", generator=g, dtype=torch.float64) * d**-0.5
        b64 = torch.randn(n, 1, device="cuda", generator=g, dtype=torch.float64)
        for work in ("knn", "gauss"):
            for dtype, prec in (("float16", "ieee"), ("float32", "tf32")):
                dt = getattr(torch, dtype)
                x, y, b = (t.to(dt) for t in (x64, y64, b64))
                xi, yj, bj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
                D2 = ((xi - yj) ** 2).sum(-1)
                opts = {"backend": "cuda", "precision": prec}
                simt_opts = {"backend": "cuda"}

                def pk(o, D2=D2, bj=bj, work=work):
                    if work == "knn":
                        return lambda: D2.argKmin(10, dim=1, **o)
                    return lambda: ((-D2).exp() * bj).sum(dim=1, **o)

                t_tc, _, out = _timer(torch, pk(opts), 5, 5.0)
                simt = _SimtOnly() if dtype == "float16" else contextlib.nullcontext()
                with simt:
                    t_simt = _timer(torch, pk(simt_opts), 5, 5.0)[0]
                tw = dict(name="argKmin" if work == "knn" else "gauss", k=10)
                t_torch = _timer(torch, _dense_chunked(torch, tw, x, y, b), 5, 5.0)[0]
                if work == "knn":
                    def cdist_knn(x=x, y=y):
                        return torch.cat([torch.cdist(x[s:s + 4096], y).topk(10, dim=1, largest=False).indices
                                          for s in range(0, n, 4096)])

                    t_cdist = _timer(torch, cdist_knn, 5, 5.0)[0]
                    t_torch = min(t_torch, t_cdist)
                err = _error(torch, tw, out, x64, y64, b64) if work == "gauss" else _knn_error(
                    torch, out, x64, y64)
                label = "f16 mma" if dtype == "float16" else "tf32 mma"
                row = dict(workload=work, d=d, dtype=dtype, precision=prec, tc_ms=t_tc, simt_ms=t_simt,
                           torch_ms=t_torch, error=err)
                rows.append(row)
                print(f"| {work} | {d} | {dtype} | {label} | {t_tc:.2f} | {t_simt / t_tc:.2f}x | "
                      f"{t_torch / t_tc:.2f}x | {err:.1e} |", flush=True)
    return rows


def _knn_error(torch, idx, x, y, rows=64):
    """Fraction of the first rows' K nearest neighbours whose float64 distance is not among
    the K smallest (ties aside)."""
    d = torch.cdist(x[:rows], y)
    kth = d.topk(idx.shape[1], dim=1, largest=False).values[:, -1:]
    got = d.gather(1, idx[:rows].to(d.device))
    return float((got > kth * (1 + 1e-6)).float().mean())


def _print_row(r, header=False):
    if header:
        print("| workload | N | D | dtype | polykeops (ms) | first call (s) | torch dense (ms) | "
              "pykeops (ms) | vs torch | vs pykeops | pairs/s | error |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keops = f"{r['pykeops_ms']:.2f}" if r["pykeops_ms"] else "-"
    vs_keops = f"{r['pykeops_ms'] / r['polykeops_ms']:.2f}x" if r["pykeops_ms"] else "-"
    print(f"| {r['workload']} | {r['n']} | {r['d']} | {r['dtype']} | {r['polykeops_ms']:.2f} | "
          f"{r['first_call_s']:.2f} | {r['torch_ms']:.2f} | {keops} | "
          f"{r['torch_ms'] / r['polykeops_ms']:.2f}x | {vs_keops} | {r['pairs_per_s']:.3g} | "
          f"{r['error']:.1e} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "tests", "conformance", "bench", "tensorcores"),
                        default="all")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the benchmark rows to this file")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for the pytest parts")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    status = 0
    if args.part in ("all", "tests"):
        status |= run_tests(args.pytest_args)
    if args.part in ("all", "conformance"):
        status |= run_conformance(args.pytest_args)
    if args.part in ("all", "bench"):
        run_benchmarks(args.quick, args.json)
    if args.part in ("all", "bench", "tensorcores"):
        run_tensor_cores(args.quick)
    return status


if __name__ == "__main__":
    sys.exit(main())
