"""K-means clustering (Lloyd's algorithm) with symbolic distance matrices.

Given N points x_i in R^D and K centroids c_k, Lloyd's algorithm alternates two steps:

1. assignment:  cl_i = argmin_k |x_i - c_k|^2          (an N x K problem)
2. update:      c_k  = mean { x_i : cl_i = k }          (a scatter-add and a count)

Step 1 is where a dense implementation builds the N x K matrix of squared distances
(N = 300,000 and K = 100 in float32 are 120 MB per iteration). With LazyTensors the matrix
stays symbolic: ``LazyTensor(x[:, None, :])`` is an i-variable of shape (N, 1, D),
``LazyTensor(c[None, :, :])`` a j-variable of shape (1, K, D), ``((x_i - c_j) ** 2).sum(-1)``
the symbolic (N, K) matrix, and ``.argmin(dim=1)`` reduces it over j in one fused, tiled pass
that returns an (N, 1) tensor of indices. Step 2 is plain torch: ``scatter_add_`` sums the
points of each cluster and ``bincount`` counts them.

The script checks itself at every iteration against a dense torch computation on a subset
of the points (assignments, up to float32 near-ties) and for the whole centroid update
(a one-hot matrix product), and raises AssertionError if they disagree.

    python examples/kmeans.py            # 300,000 points, K = 100
    python examples/kmeans.py --small    # a quick run
"""

from __future__ import annotations

import argparse
import time

import torch

from polykeops.torch import LazyTensor


def make_blobs(n, d, n_blobs, generator):
    """n points in R^d drawn around n_blobs random centres (a mixture of Gaussians)."""
    centres = 4.0 * torch.randn(n_blobs, d, generator=generator)
    which = torch.randint(n_blobs, (n,), generator=generator)
    return centres[which] + 0.5 * torch.randn(n, d, generator=generator)


def kmeans_assign(x, c):
    """Index of the closest centroid of every point: an (N,) int64 tensor."""
    x_i = LazyTensor(x[:, None, :])  # (N, 1, D) i-variable
    c_j = LazyTensor(c[None, :, :])  # (1, K, D) j-variable
    D_ij = ((x_i - c_j) ** 2).sum(-1)  # symbolic (N, K) squared distances
    return D_ij.argmin(dim=1).long().view(-1)  # reduce over j -> (N, 1) indices


def kmeans_update(x, cl, k):
    """New centroids: mean of the points of each cluster (an empty cluster keeps the mean 0)."""
    n, d = x.shape
    c = torch.zeros(k, d, dtype=x.dtype)
    c.scatter_add_(0, cl[:, None].expand(n, d), x)  # c[cl_i] += x_i
    counts = torch.bincount(cl, minlength=k).type_as(x).view(k, 1)
    return c / counts.clamp(min=1), counts.view(-1)


def check_assignment(x, c, cl, n_check=2000):
    """Dense reference on the first n_check points: the chosen centroid must be a closest one."""
    xs = x[:n_check].double()
    d2 = ((xs[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)  # (n_check, K) dense
    best = d2.min(dim=1).values
    chosen = d2.gather(1, cl[:n_check, None]).view(-1)
    # float32 rounding may break a near-tie the other way: allow that, and nothing more
    tol = 1e-5 * (1.0 + best)
    bad = (chosen - best) > tol
    agree = (cl[:n_check] == d2.argmin(dim=1)).double().mean().item()
    assert not bad.any(), (
        f"k-means assignment: {int(bad.sum())} of {n_check} points are assigned to a centroid "
        f"that is not the closest (worst excess distance {float((chosen - best).max()):.3g})"
    )
    return agree


def check_update(x, cl, c_new, k):
    """Dense reference of the centroid update: one-hot (K, N) matrix times the points."""
    onehot = torch.zeros(k, x.shape[0], dtype=torch.float64)
    onehot[cl, torch.arange(x.shape[0])] = 1.0
    counts = onehot.sum(1, keepdim=True)
    c_ref = (onehot @ x.double()) / counts.clamp(min=1)
    err = (c_new.double() - c_ref).abs().max().item()
    assert err < 1e-4 * (1.0 + c_ref.abs().max().item()), f"k-means update: centroid error {err:.3g}"


def main(n=300_000, d=2, k=100, n_iter=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = make_blobs(n, d, n_blobs=k, generator=g)  # float32, CPU
    c = x[torch.randperm(n, generator=g)[:k]].clone()  # initial centroids: k random points
    print(f"k-means: N = {n:,} points in R^{d}, K = {k} clusters, {n_iter} Lloyd iterations")

    t_assign = t_update = 0.0
    agree = []
    for _ in range(n_iter):
        t0 = time.perf_counter()
        cl = kmeans_assign(x, c)
        t1 = time.perf_counter()
        c_new, counts = kmeans_update(x, cl, k)
        t2 = time.perf_counter()
        t_assign += t1 - t0
        t_update += t2 - t1

        agree.append(check_assignment(x, c, cl))
        check_update(x, cl, c_new, k)
        c = c_new

    # the objective of the final centroids, against a dense chunked evaluation in float64
    cl = kmeans_assign(x, c)
    inertia = ((x - c[cl]) ** 2).sum().item()
    t0 = time.perf_counter()
    best = torch.cat(
        [((xb[:, None, :] - c[None, :, :]) ** 2).sum(-1).min(dim=1).values for xb in x.split(50_000)]
    )
    t_dense = time.perf_counter() - t0
    best64 = torch.cat(
        [torch.cdist(xb.double(), c.double()).pow(2).min(dim=1).values for xb in x.split(50_000)]
    )
    inertia_ref = best64.sum().item()
    for name, value in [("float32 dense", best.double().sum().item()), ("LazyTensor argmin", inertia)]:
        assert abs(value - inertia_ref) <= 1e-4 * inertia_ref, (
            f"k-means inertia from the {name} assignment, {value}, differs from the float64 "
            f"dense reference {inertia_ref}"
        )

    print(f"  assignment (LazyTensor argmin): {1e3 * t_assign / n_iter:8.2f} ms / iteration")
    print(f"  (dense torch assignment, chunked: {1e3 * t_dense:8.2f} ms)")
    print(f"  update (scatter_add, bincount): {1e3 * t_update / n_iter:8.2f} ms / iteration")
    print(f"  mean squared distance to the centroid: {inertia / n:.4f} (dense reference agrees)")
    print(f"  cluster sizes: min {int(counts.min())}, max {int(counts.max())}")
    print(f"  argmin identical to the dense argmin on {100 * min(agree):.2f}% of the checked points")
    return c, cl


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on 20,000 points")
    args = parser.parse_args()
    if args.small:
        main(n=20_000, k=20, n_iter=5)
    else:
        main()
