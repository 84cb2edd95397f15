"""Block-sparse reductions (``ranges``): speed-up over the full reduction, polykeops and pykeops.

Run from the repository root (after ``pip install -e .``)::

    python benchmarks/ranges_bench.py                    # N = 20k and 100k, 1% of the blocks
    python benchmarks/ranges_bench.py --sizes 20000 --runs 9 --keep 0.01

Workload: the Gaussian sum ``a_i = sum_j exp(-|x_i - y_j|^2 / s^2) b_j`` in 3-D (float32), x and y
uniform in the unit cube.  Both point clouds are clustered on a grid (``grid_cluster``, voxels of
side ``--voxel``), sorted by cluster (``sort_clusters``), their cluster ranges and centroids
computed (``cluster_ranges_centroids``), and the ``--keep`` fraction of the cluster pairs with the
closest centroids is kept (``from_matrix``): the pykeops 6-tuple ``ranges``.

For each implementation, the same run times, in turns, the block-sparse reduction (over all rows)
and the full reduction; the ratio full / sparse is what block-sparsity buys (the ideal is about
1 / (fraction of pairs kept)).  When the full reduction over all rows would take longer than
``--seconds``, it is timed on its first rows only (all N columns; its cost is linear in the rows),
marked ``*``.  polykeops runs its specialised kernel (``POLYKEOPS_JIT=sync``, built before timing);
pykeops (when installed) gets the same ranges, from its own ``from_matrix``.

Writes ``benchmarks/results/ranges_bench.md`` and ``ranges_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))
os.environ["POLYKEOPS_JIT"] = "sync"

from baselines import import_pykeops_torch  # noqa: E402

import polykeops  # noqa: E402
from polykeops.torch import LazyTensor as PkLazy  # noqa: E402
from polykeops.torch import cluster  # noqa: E402

_keops = import_pykeops_torch()
KeopsLazy = _keops.LazyTensor if _keops is not None else None
keops_from_matrix = _keops.cluster.from_matrix if _keops is not None else None


def problem(n, voxel, keep_fraction, seed=0):
    """Sorted points, weights, the polykeops ranges, the fraction of pairs kept, and the clusters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    y = torch.rand(n, 3, generator=g)
    b = torch.randn(n, 1, generator=g)
    lx, ly = cluster.grid_cluster(x, voxel), cluster.grid_cluster(y, voxel)
    x, lx = cluster.sort_clusters(x, lx)
    (y, b), ly = cluster.sort_clusters((y, b), ly)
    rx, cx, _ = cluster.cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster.cluster_ranges_centroids(y, ly)
    d = ((cx[:, None, :] - cy[None, :, :]) ** 2).sum(-1)
    k = max(1, int(round(keep_fraction * d.numel())))
    keep = d <= d.flatten().kthvalue(k).values
    sizes_x = (rx[:, 1] - rx[:, 0]).double()
    sizes_y = (ry[:, 1] - ry[:, 0]).double()
    pairs = float((sizes_x[:, None] * sizes_y[None, :])[keep].sum()) / (n * n)
    ranges = cluster.from_matrix(rx, ry, keep)
    return dict(
        x=x,
        y=y,
        b=b,
        ranges=ranges,
        rx=rx,
        ry=ry,
        keep=keep,
        pairs=pairs,
        blocks=float(keep.double().mean()),
        clusters=(rx.shape[0], ry.shape[0]),
    )


def reduction(LT, x, y, b, scale, **kw):
    xi, yj, bj = LT(x[:, None, :]), LT(y[None, :, :]), LT(b[None, :, :])
    K = (-((xi - yj) ** 2).sum(-1) * scale).exp() * bj
    return lambda: K.sum(dim=1, **kw)


def implementations(p, scale):
    """name -> (sparse(), make_full(m))"""
    out = {}
    x, y, b = p["x"], p["y"], p["b"]
    out["polykeops"] = (
        reduction(PkLazy, x, y, b, scale, backend="cpu", ranges=p["ranges"]),
        lambda m: reduction(PkLazy, x[:m], y, b, scale, backend="cpu"),
    )
    if KeopsLazy is not None:
        kr = keops_from_matrix(p["rx"].int(), p["ry"].int(), p["keep"])
        out["pykeops"] = (
            reduction(KeopsLazy, x, y, b, scale, ranges=kr),
            lambda m: reduction(KeopsLazy, x[:m], y, b, scale),
        )
    return out


def calibrate(make, n, seconds):
    m = min(n, max(64, int(2e7 // n)))
    fn = make(m)
    fn()
    if m < n:
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        m = min(n, max(m, int(m * seconds / max(t, 1e-9))))
        fn = make(m)
        fn()
    return fn, m


def check(p, scale):
    """The block-sparse result against a dense float64 computation on a few rows."""
    fn = reduction(PkLazy, p["x"], p["y"], p["b"], scale, backend="cpu", ranges=p["ranges"])
    got = fn()[:, 0].double()
    rx, ry, keep = p["rx"], p["ry"], p["keep"]
    rows = torch.linspace(0, p["x"].shape[0] - 1, 50).long()
    err = 0.0
    for i in rows.tolist():
        c = int(torch.searchsorted(rx[:, 1], torch.tensor(i), right=True))
        mask = torch.zeros(p["y"].shape[0], dtype=torch.bool)
        for l_ in torch.nonzero(keep[c]).flatten().tolist():
            mask[ry[l_, 0] : ry[l_, 1]] = True
        d2 = ((p["x"][i].double() - p["y"].double()) ** 2).sum(-1)
        ref = float((torch.exp(-d2 * scale) * p["b"][:, 0].double() * mask).sum())
        err = max(err, abs(float(got[i]) - ref) / max(1.0, abs(ref)))
    return err


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated N (= M)")
    parser.add_argument("--keep", type=float, default=0.01, help="fraction of the cluster pairs kept")
    parser.add_argument("--voxel", type=float, default=0.1, help="side of the grid voxels")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="target duration of a full run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    threads = int(os.environ.get("POLYKEOPS_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    scale = 1.0 / args.voxel**2  # kernel width of the order of a voxel
    load = os.getloadavg()[0]
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        p = problem(n, args.voxel, args.keep)
        err = check(p, scale)
        fns = {}
        for name, (sparse, make_full) in implementations(p, scale).items():
            sparse()  # warm-up (and builds)
            full, m = calibrate(make_full, n, args.seconds)
            fns[name] = (sparse, full, m)
        times = {name: ([], []) for name in fns}
        for _ in range(args.runs):
            for name, (sparse, full, _m) in fns.items():
                time.sleep(0.2)  # idle OpenMP threads of the previous implementation stop spinning
                sparse()  # (untimed: caches and clock back after the pause)
                t0 = time.perf_counter()
                sparse()
                times[name][0].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                full()
                times[name][1].append(time.perf_counter() - t0)
        row = dict(
            N=n, clusters=p["clusters"], blocks=p["blocks"], pairs=p["pairs"], max_rel_err=err, impls={}
        )
        for name, (_s, _f, m) in fns.items():
            ts, tf = float(np.median(times[name][0])), float(np.median(times[name][1])) * n / m
            row["impls"][name] = dict(sparse_s=ts, full_s=tf, full_rows=m, ratio=tf / ts)
            print(
                f"N={n:>7} {name:9s} sparse {ts * 1e3:9.2f} ms   full {tf:8.3f} s{'*' if m < n else ' '}"
                f"   full / sparse {tf / ts:6.1f}x   (pairs kept {100 * p['pairs']:.2f}%)",
                flush=True,
            )
        rows.append(row)
    md = render(rows, args, threads, load)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ranges_bench.md").write_text(md)
        (RESULTS / "ranges_bench.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def render(rows, args, threads, load):
    names = [n for n in ("polykeops", "pykeops") if any(n in r["impls"] for r in rows)]
    lines = [
        f"Block-sparse Gaussian sum (D = 3, float32), {threads} threads, polykeops {polykeops.__version__}"
        f" (JIT sync); grid voxels of side {args.voxel}, {100 * args.keep:g}% of the cluster pairs kept; "
        f"median of {args.runs} runs, implementations taking turns; load average {load:.1f} at the start.",
        "",
        "| N | clusters | pairs kept | "
        + " | ".join(f"{n} sparse (ms) | {n} full (s) | {n} full / sparse" for n in names)
        + (" | sparse: polykeops / pykeops |" if len(names) == 2 else ""),
        "|" + "---|" * (3 + 3 * len(names) + (1 if len(names) == 2 else 0)),
    ]
    for r in rows:
        cells = [f"{r['N']:,}", f"{r['clusters'][0]} x {r['clusters'][1]}", f"{100 * r['pairs']:.2f}%"]
        for n in names:
            im = r["impls"].get(n)
            if im is None:
                cells += ["-"] * 3
                continue
            star = "*" if im["full_rows"] < r["N"] else ""
            cells += [f"{im['sparse_s'] * 1e3:.2f}", f"{im['full_s']:.3g}{star}", f"{im['ratio']:.1f}x"]
        line = "| " + " | ".join(cells) + " |"
        if len(names) == 2:
            line += f" {r['impls']['pykeops']['sparse_s'] / r['impls']['polykeops']['sparse_s']:.1f}x |"
        lines.append(line)
    lines += [
        "",
        "`*`: the full reduction timed on its first rows (all N columns), scaled to N rows.",
        "Largest relative error of the block-sparse result against float64 on 50 rows: "
        + ", ".join(f"N={r['N']:,}: {r['max_rel_err']:.1e}" for r in rows)
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
