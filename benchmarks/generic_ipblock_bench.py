"""The generic CPU engine's inner-product blocks: before / after / specialised kernels.

Times exact kNN (K = 10, ArgKMin of squared distances) and a Gaussian ``K @ b`` (b of width 4)
at several dimensions D, with

* ``generic``: the generic engine of this checkout (``POLYKEOPS_JIT=off``);
* ``generic before``: the generic engine of another checkout given with ``--base`` (e.g. a
  worktree of the commit this work started from, with its extensions built:
  ``git worktree add ../base <commit> && cd ../base && python setup.py build_ext --inplace``);
* ``specialised``: this checkout's specialised kernels (``POLYKEOPS_JIT=sync``: compiled during
  the warm-up, in a temporary cache).

Each implementation runs in its own process (a checkout per process); the implementations take
turns, round after round (``--runs`` rounds), each round one timed call per workload after a
warm-up call, so that other activity on the machine slows them alike.  Reported: the median
time of each, and the ratios.  Run from the repository root::

    python benchmarks/generic_ipblock_bench.py --base ../base            # M = 2000, N = 50000
    python benchmarks/generic_ipblock_bench.py --quick                   # smaller, no baseline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("knn", "gauss")


def worker(args) -> None:
    sys.path.insert(0, args.tree)
    import torch

    from polykeops.torch import LazyTensor

    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    out = {}
    for D in args.dims:
        x = torch.randn(args.M, D, generator=g)
        y = torch.randn(args.N, D, generator=g)
        b = torch.randn(args.N, 4, generator=g)
        xi, yj, bj = LazyTensor(x[:, None, :]), LazyTensor(y[None]), LazyTensor(b[None])
        for name in WORKLOADS:
            def fn(name=name, xi=xi, yj=yj, bj=bj, D=D):
                if name == "knn":
                    return ((xi - yj) ** 2).sum(-1).argKmin(10, dim=1, backend="cpu")
                return ((-((xi - yj) ** 2).sum(-1) / D).exp() * bj).sum(dim=1, backend="cpu")

            fn()  # warm-up (and, with POLYKEOPS_JIT=sync, the kernel's build)
            t = time.perf_counter()
            fn()
            out[f"{name} D={D}"] = time.perf_counter() - t
    print("RESULT " + json.dumps(out))


def run_worker(tree, jit, args, cache) -> dict:
    env = dict(os.environ, POLYKEOPS_JIT=jit, POLYKEOPS_CACHE_DIR=cache, PYTHONPATH=tree)
    if args.threads:
        env["POLYKEOPS_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--worker", "--tree", tree, "--M", str(args.M), "--N", str(args.N),
           "--dims", ",".join(map(str, args.dims)), "--threads", str(args.threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise SystemExit(f"worker failed ({tree}, JIT {jit}):\n{res.stdout}\n{res.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="a checkout of the commit to compare with (its extensions built)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--M", type=int, default=2000)
    ap.add_argument("--N", type=int, default=50000)
    ap.add_argument("--dims", default="3,8,16,64,256")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all)")
    ap.add_argument("--no-specialised", action="store_true")
    ap.add_argument("--quick", action="store_true", help="M = 500, N = 20000, 3 runs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.dims = [int(d) for d in str(args.dims).split(",")]
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.M, args.N, args.runs = 500, 20000, 3
    impls = {"generic": (str(ROOT), "off")}
    if args.base:
        impls["generic before"] = (str(Path(args.base).resolve()), "off")
    if not args.no_specialised:
        impls["specialised"] = (str(ROOT), "sync")
    times: dict = {name: {} for name in impls}
    with tempfile.TemporaryDirectory() as cache:
        for r in range(args.runs):
            for name, (tree, jit) in impls.items():
                for key, t in run_worker(tree, jit, args, cache).items():
                    times[name].setdefault(key, []).append(t)
            print(f"round {r + 1}/{args.runs} done", file=sys.stderr)
    med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in times.items()}
    names = list(impls)
    print(f"M = {args.M}, N = {args.N}, float32, threads: {args.threads or 'all'}, "
          f"median of {args.runs} runs (ms)\n")
    head = "| workload | " + " | ".join(names)
    if "generic before" in med:
        head += " | before / after"
    if "specialised" in med:
        head += " | generic / specialised"
    print(head + " |")
    print("|" + "---|" * (head.count("|")))
    for key in med["generic"]:
        row = [f"{med[n][key] * 1e3:.1f}" for n in names]
        if "generic before" in med:
            row.append(f"{med['generic before'][key] / med['generic'][key]:.2f}x")
        if "specialised" in med:
            row.append(f"{med['generic'][key] / med['specialised'][key]:.2f}")
        print(f"| {key} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
