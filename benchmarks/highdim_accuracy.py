"""Accuracy of the high-dimensional blocks (inner products by blocks, squared distances by the
expansion |x|^2 + |y|^2 - 2 x.y) against the pair-by-pair evaluation, both in float32, against a
float64 reference.

    python benchmarks/highdim_accuracy.py [--m 200] [--n 20000]

Data: x (M x D) and y (N x D) drawn from N(mu, 1), with y[:M] = x + 1e-3 N(0, 1) (near duplicates:
where the expansion cancels); mu = 0, then mu = 10 (far from the origin: the blocks centre the
points).  For each, the nearest distance of Kmin_argKmin (K = 10; median relative error), the kNN
indices equal to the reference's, and a Gaussian K @ b (b: N x 2; median relative error).
"Blocks": the CPU backend (specialised kernels); "pair by pair": the reference backend (float32,
the difference form of each pair).  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os

import torch

os.environ.setdefault("POLYKEOPS_JIT", "sync")

from polykeops.torch import LazyTensor  # noqa: E402


def measure(x, y, b, backend):
    xi, yj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    d2 = ((xi - yj) ** 2).sum(-1)
    vals, idx = d2.Kmin_argKmin(10, dim=1, backend=backend)
    kb = (-d2 / (2 * x.shape[1])).exp() @ b if backend == "cpu" else \
        ((-d2 / (2 * x.shape[1])).exp() * LazyTensor(b[None, :, :])).sum(dim=1, backend=backend)
    return vals, idx, kb


def table(M: int, N: int) -> str:
    lines = [
        f"float32, M = {M:,}, N = {N:,}, y[:M] = x + 1e-3 noise (near duplicates); reference in float64;"
        " Kmin_argKmin K = 10 and a Gaussian K @ b (`python benchmarks/highdim_accuracy.py`)",
        "",
        "| data | D | nearest distance: median rel. error, blocks / pair by pair |"
        " kNN indices equal to the reference | `K @ b` median rel. error, blocks / pair by pair |",
        "|---|---|---|---|---|",
    ]
    for mu in (0.0, 10.0):
        for D in (64, 256):
            g = torch.Generator().manual_seed(D)
            x = torch.randn(M, D, generator=g) + mu
            y = torch.randn(N, D, generator=g) + mu
            y[:M] = x + 1e-3 * torch.randn(M, D, generator=g)
            b = torch.rand(N, 2, generator=g)
            d2 = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
            ref_v, ref_i = d2.topk(10, dim=1, largest=False)
            ref_kb = (-d2 / (2 * D)).exp() @ b.double()
            cols = []
            for backend in ("cpu", "reference"):
                vals, idx, kb = measure(x, y, b, backend)
                near = ((vals[:, 0].double() - ref_v[:, 0]).abs() / ref_v[:, 0]).median().item()
                same = (idx == ref_i).double().mean().item()
                kbe = ((kb.double() - ref_kb).abs() / ref_kb.abs()).median().item()
                cols.append((near, same, kbe))
            (n1, s1, k1), (n2, s2, k2) = cols
            lines.append(f"| N({mu:g}, 1) | {D} | {n1:.1e} / {n2:.1e} | {100 * s1:.2f}% / {100 * s2:.2f}% |"
                         f" {k1:.1e} / {k2:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=200)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(table(args.m, args.n))


if __name__ == "__main__":
    main()
