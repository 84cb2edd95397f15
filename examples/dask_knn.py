"""A k-nearest-neighbour graph on a Dask cluster: ``argKmin`` over a symbolic distance matrix.

The points (a noisy swiss roll in R^3) are a chunked Dask array; ``Kmin_argKmin`` of the
symbolic matrix ``|x_i - x_j|^2`` returns two lazy Dask arrays (distances and indices of the
K nearest points of every point), chunked like the points.  Computing them runs one task per
pair of chunks on the workers (each returns the K best candidates of its block, with global
indices), merges the candidates along j as a tree, and never stores the N x N matrix.

The graph is checked against polykeops.numpy on one machine: every row with ``--small``, a
random subset of the rows otherwise (indices equal, except where two neighbours are at the
same float32 distance; distances to 1e-5).

    python examples/dask_knn.py --small                       # 20,000 points, LocalCluster(2 workers)
    python examples/dask_knn.py                               # 1,000,000 points
    python examples/dask_knn.py --scheduler tcp://host:8786   # a running cluster (dask-scheduler)
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def swiss_roll(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    h = 20 * rng.random(n)
    x = np.stack([t * np.cos(t), h, t * np.sin(t)], axis=1) + 0.05 * rng.standard_normal((n, 3))
    return x.astype("float32")


def check(x, rows, dist, idx, k):
    """The graph's rows ``rows`` against polykeops.numpy on one machine."""
    import polykeops.numpy as pkn

    want_d, want_i = pkn.Vi(x[rows]).sqdist(pkn.Vj(x)).Kmin_argKmin(k, dim=1)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5, atol=1e-6)
    differ = idx != want_i
    if differ.any():  # only at ties: both neighbours at the same distance (float64 check)
        x64 = x.astype("float64")
        r = np.broadcast_to(np.asarray(rows)[:, None], idx.shape)[differ]
        d_got = ((x64[r] - x64[idx[differ]]) ** 2).sum(-1)
        d_want = ((x64[r] - x64[want_i[differ]]) ** 2).sum(-1)
        np.testing.assert_allclose(d_got, d_want, rtol=1e-5, atol=1e-6)
    return int(differ.any(1).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10, help="neighbours per point (the point itself excluded)")
    parser.add_argument("--chunk", type=int, default=100_000, help="points per chunk")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--check-rows", type=int, default=1000, help="rows checked on one machine")
    parser.add_argument("--small", action="store_true", help="20,000 points, every row checked")
    args = parser.parse_args(argv)
    if args.small:
        args.n, args.chunk, args.check_rows = 20_000, 3_000, 20_000

    import dask.array as da
    import distributed

    from polykeops.dask import Vi, Vj

    if args.scheduler:
        client = distributed.Client(args.scheduler, timeout=60)
        cluster = None
    else:
        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        client = distributed.Client(cluster, timeout=60)
    try:
        x = swiss_roll(args.n)
        dx = da.from_array(x, chunks=(args.chunk, 3))
        k = args.k + 1  # the point itself comes first (distance 0)
        dist, idx = Vi(dx).sqdist(Vj(dx)).Kmin_argKmin(k, dim=1)
        nchunks = len(dx.chunks[0])
        print(f"{args.n:,} points in {nchunks} chunks: {nchunks * nchunks} block tasks on "
              f"{len(client.scheduler_info()['workers'])} worker(s); result chunks {idx.chunks[0][:3]}...")
        t0 = time.perf_counter()
        dist, idx = client.compute([dist, idx], sync=True)
        elapsed = time.perf_counter() - t0
        print(f"kNN graph (K = {args.k}): {elapsed:.2f} s, {args.n * args.n / elapsed:.3g} distances/s")
        self_first = (idx[:, 0] == np.arange(args.n)).mean()
        print(f"mean distance to the {args.k}-th neighbour: {np.sqrt(dist[:, -1]).mean():.4f}; "
              f"rows whose nearest point is the point itself: {self_first:.4f}")
        rng = np.random.default_rng(1)
        rows = np.arange(args.n) if args.check_rows >= args.n else np.sort(
            rng.choice(args.n, args.check_rows, replace=False))
        ties = check(x, rows, dist[rows], idx[rows], k)
        print(f"checked {len(rows):,} rows against polykeops.numpy on one machine: equal "
              f"({ties} row(s) with neighbours swapped at equal distances)")
        graph = idx[:, 1:]  # the kNN graph: edges i -> graph[i, q]
        assert graph.shape == (args.n, args.k) and graph.min() >= 0 and graph.max() < args.n
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
