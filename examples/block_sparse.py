"""Block-sparse Gaussian kernel sums on clustered point clouds (the ``ranges`` option).

The Gaussian kernel sum  a_i = sum_j exp(-|x_i - y_j|^2 / (2 sigma^2)) b_j  costs N * M
kernel evaluations, but when sigma is small compared to the extent of the data almost all of
them are negligible: beyond a distance R = 5 sigma the kernel is below exp(-12.5) = 3.7e-6.
A block-sparse reduction skips them wholesale:

1. ``grid_cluster(x, size)`` puts the points in cubic voxels of side ``size`` (one label per
   point), ``sort_clusters`` sorts the points (and anything attached to them, such as the
   weights b) by label, so that each cluster is a contiguous range of rows;
2. ``cluster_ranges_centroids`` gives the range [start, end) and the centroid of each cluster;
3. a boolean (C_x, C_y) matrix ``keep`` says which pairs of clusters interact: here those whose
   centroids are closer than R plus the radii of both clusters (the largest distance of a point
   to its centroid): by the triangle inequality every pair of points closer than R is in a
   kept block;
4. ``from_matrix(ranges_x, ranges_y, keep)`` turns it into pykeops' 6-tuple, and
   ``K_ij.sum(dim=1, ranges=ranges_ij)`` computes only the kept blocks (the same tuple serves
   autograd: the gradient reductions are block-sparse too).

Every pair that is dropped has |x_i - y_j| >= R, so |a_sparse_i - a_full_i| <= exp(-R^2 /
(2 sigma^2)) sum_j |b_j|: the script asserts this bound between the block-sparse and the full
reductions, and checks both against dense float64 torch on a subset of the rows (the
block-sparse result against the dense sum restricted to the kept cluster pairs, value and
gradient with respect to x), raising AssertionError if they disagree.

    python examples/block_sparse.py           # 200,000 x 200,000 points in R^3
    python examples/block_sparse.py --small   # a quick run
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from polykeops.torch import LazyTensor
from polykeops.torch.cluster import cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters


def surface_cloud(n, generator, bumps=0.05, noise=0.003):
    """n points near a bumpy sphere of radius 0.4 centred in the unit cube (a 'shape' in 3D)."""
    u = torch.randn(n, 3, generator=generator)
    u = u / u.norm(dim=1, keepdim=True)
    r = 0.4 + bumps * torch.sin(5 * u[:, :1]) * torch.cos(4 * u[:, 1:2])
    return 0.5 + r * u + noise * torch.randn(n, 3, generator=generator)


def gaussian_sum(x, y, b, sigma, ranges=None):
    """a_i = sum_j exp(-|x_i - y_j|^2 / (2 sigma^2)) b_j, block-sparse if ranges is given."""
    x_i = LazyTensor(x[:, None, :])
    y_j = LazyTensor(y[None, :, :])
    b_j = LazyTensor(b[None, :, :])
    K_ij = (-((x_i - y_j) ** 2).sum(-1) / (2 * sigma**2)).exp()
    return (K_ij * b_j).sum(dim=1, ranges=ranges)


def cluster_radii(x, lab, centroids):
    dist = (x - centroids[lab]).norm(dim=1)
    return torch.zeros(len(centroids)).scatter_reduce(0, lab, dist, "amax")


def block_sparse_ranges(x, y, b, voxel, cutoff):
    """Sort both clouds by voxel and build the ranges of the cluster pairs closer than cutoff."""
    n = len(x)
    x_lab = grid_cluster(x, voxel)
    y_lab = grid_cluster(y, voxel)
    # sort the points by cluster; carry the original indices of x (to undo the sort) and b
    (x, x_index), x_lab = sort_clusters((x, torch.arange(n)), x_lab)
    (y, b), y_lab = sort_clusters((y, b), y_lab)
    x_ranges, x_centroids, _ = cluster_ranges_centroids(x, x_lab)
    y_ranges, y_centroids, _ = cluster_ranges_centroids(y, y_lab)
    # radius of each cluster: the largest distance of one of its points to its centroid
    x_radius = cluster_radii(x, x_lab, x_centroids)
    y_radius = cluster_radii(y, y_lab, y_centroids)
    # two points closer than cutoff can only be in clusters whose centroids are closer than
    # cutoff + both radii (triangle inequality): keep those pairs of clusters, drop the rest
    keep = torch.cdist(x_centroids, y_centroids) < cutoff + x_radius[:, None] + y_radius[None, :]
    ranges_ij = from_matrix(x_ranges, y_ranges, keep)
    return x, x_lab, x_index, y, y_lab, b, keep, ranges_ij


def dense_rows(x_rows, y, b, sigma, mask=None, chunk=20):
    """The Gaussian sum and its gradient for some rows, dense float64 torch (optionally masked)."""
    a_out, g_out = [], []
    y, b = y.double(), b.double()
    for k0 in range(0, len(x_rows), chunk):
        xr = x_rows[k0 : k0 + chunk].double().requires_grad_()
        k = torch.exp(-((xr[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))
        if mask is not None:
            k = k * mask[k0 : k0 + chunk]
        a = k @ b
        (g,) = torch.autograd.grad(a.sum(), [xr])
        a_out.append(a.detach())
        g_out.append(g)
    return torch.cat(a_out), torch.cat(g_out)


def main(n=200_000, m=200_000, sigma=0.01, voxel=0.03, n_check=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = surface_cloud(n, g)
    y = surface_cloud(m, g)
    b = torch.rand(m, 1, generator=g)
    cutoff = 5 * sigma
    print(
        f"Block-sparse Gaussian sum: N = {n:,}, M = {m:,} points in R^3, sigma = {sigma}, "
        f"voxels of side {voxel}, truncation radius {cutoff}"
    )

    t0 = time.perf_counter()
    xs, x_lab, x_index, ys, y_lab, bs, keep, ranges_ij = block_sparse_ranges(x, y, b, voxel, cutoff)
    t_cluster = time.perf_counter() - t0
    xs_grad = xs.clone().requires_grad_()
    gaussian_sum(xs, ys, bs, sigma, ranges=ranges_ij)  # first call: selects/compiles the kernel
    t1 = time.perf_counter()
    a_sparse = gaussian_sum(xs_grad, ys, bs, sigma, ranges=ranges_ij)
    t2 = time.perf_counter()
    (g_sparse,) = torch.autograd.grad(a_sparse.sum(), [xs_grad])
    t3 = time.perf_counter()
    a_full = gaussian_sum(xs, ys, bs, sigma)
    t4 = time.perf_counter()

    # 1. sparse vs full: the dropped pairs are all farther apart than the cutoff
    bound = math.exp(-(cutoff**2) / (2 * sigma**2)) * bs.abs().sum().item()
    diff = (a_sparse.detach() - a_full).abs().max().item()
    rounding = 1e-5 * a_full.abs().max().item()  # float32 accumulation, either reduction
    assert diff <= bound + rounding, (
        f"block-sparse sum differs from the full sum by {diff:.3g}, more than the truncation "
        f"bound {bound:.3g} (+ rounding {rounding:.3g})"
    )

    # 2. both against dense float64 torch, on random rows: the block-sparse result must be the
    #    dense sum over the kept cluster pairs exactly (value and gradient), the full one the sum
    rows = torch.randperm(n, generator=g)[:n_check]
    mask = keep[x_lab[rows]][:, y_lab].double()  # (rows, M): is the pair (i, j) in a kept block
    a_masked, g_masked = dense_rows(xs[rows], ys, bs, sigma, mask)
    a_dense, _ = dense_rows(xs[rows], ys, bs, sigma)
    scale = a_dense.abs().max().item()
    err_sparse = (a_sparse[rows].detach().double() - a_masked).abs().max().item() / scale
    err_full = (a_full[rows].double() - a_dense).abs().max().item() / scale
    err_grad = ((g_sparse[rows].double() - g_masked).norm() / g_masked.norm()).item()
    assert err_sparse < 1e-5, f"block-sparse sum: relative error {err_sparse:.3g} against dense (masked)"
    assert err_full < 1e-5, f"full sum: relative error {err_full:.3g} against dense"
    assert err_grad < 1e-4, f"block-sparse gradient: relative error {err_grad:.3g} against dense (masked)"

    # the results in the original order of x
    a = torch.empty_like(a_full)
    a[x_index] = a_sparse.detach()
    check = gaussian_sum(x[:5], y, b, sigma)
    assert torch.allclose(a[:5], check, rtol=1e-4, atol=bound + rounding), "un-sorting the result failed"

    kept = keep.double() * torch.outer(torch.bincount(x_lab).double(), torch.bincount(y_lab).double())
    frac_pairs = kept.sum().item() / (n * m)
    print(
        f"  {keep.shape[0]} x {keep.shape[1]} clusters, {100 * keep.double().mean().item():.2f}% of "
        f"cluster pairs kept ({100 * frac_pairs:.2f}% of the point pairs)"
    )
    print(f"  clustering + ranges:        {1e3 * t_cluster:8.1f} ms")
    print(f"  block-sparse sum (2nd call):{1e3 * (t2 - t1):8.1f} ms")
    print(f"  block-sparse gradient:      {1e3 * (t3 - t2):8.1f} ms")
    print(
        f"  full sum:                   {1e3 * (t4 - t3):8.1f} ms   "
        f"({(t4 - t3) / (t2 - t1):.1f}x the block-sparse one)"
    )
    print(
        f"  max |sparse - full| = {diff:.2e} (bound {bound:.2e}); max |a| = {a_full.abs().max().item():.2f}"
    )
    print(
        f"  against dense float64 on {n_check} rows: sparse (masked) {err_sparse:.1e}, full {err_full:.1e}, "
        f"sparse gradient {err_grad:.1e}"
    )
    return a


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on 20,000 x 20,000 points")
    args = parser.parse_args()
    if args.small:
        main(n=20_000, m=20_000, sigma=0.02, voxel=0.06)
    else:
        main()
