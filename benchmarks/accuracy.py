"""Accuracy of the summation options against a float64 reference.

    python benchmarks/accuracy.py [--n 1000000] [--m 64] [--backend NAME] [--pykeops]

A Gaussian kernel sum a_i = sum_j exp(-|x_i - y_j|^2 / 2) b_j (D = 3, b_j > 0) over
N = 1e6 columns (b_j scaled so that every sum is about 1e3, inside float16's range), for
float32, float16 and bfloat16 (torch tensors: NumPy has no bfloat16) inputs with each
``sum_scheme`` and ``dtype_acc``; prints the median
and max relative error against the same sum computed in float64 (same backend, same
inputs rounded to the tested dtype), as a markdown table. With ``--pykeops``, the same
float32 sums by pykeops (when installed) are added as a second opinion.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from polykeops.numpy import LazyTensor


def gaussian_sum(x, y, b, **options):
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    return ((-((x_i - y_j) ** 2).sum(-1) / 2).exp() * b_j).sum(dim=1, **options)


def gaussian_sum_bf16(x, y, b, **options):
    """The same sum on bfloat16 torch tensors (returned as float64 NumPy)."""
    import torch

    from polykeops.torch import LazyTensor as TorchLazyTensor

    x, y, b = (torch.from_numpy(a).to(torch.bfloat16) for a in (x, y, b))
    x_i, y_j = TorchLazyTensor(x[:, None, :]), TorchLazyTensor(y[None, :, :])
    b_j = TorchLazyTensor(b[None, :, :])
    res = ((-((x_i - y_j) ** 2).sum(-1) / 2).exp() * b_j).sum(dim=1, **options)
    return res.double().numpy()


def _round_bf16(a):
    import torch

    return torch.from_numpy(a).to(torch.bfloat16).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--pykeops", action="store_true", help="add pykeops' errors (same inputs)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.m, 3))
    y = rng.standard_normal((args.n, 3))
    # weights scaled so that the sums stay near 1e3 whatever N: within float16's range (65504)
    b = rng.random((args.n, 1)) * (1e4 / args.n)
    print(f"Gaussian kernel sum, M = {args.m}, N = {args.n}, D = 3; relative error vs float64\n")
    print("| inputs | sum_scheme | dtype_acc | median rel. error | max rel. error | time (s) |")
    print("|---|---|---|---|---|---|")
    for dtype in ("float32", "float16", "bfloat16"):
        if dtype == "bfloat16":
            xs, ys, bs = (_round_bf16(a) for a in (x, y, b))
        else:
            xs, ys, bs = (a.astype(dtype) for a in (x, y, b))
        exact = gaussian_sum(*(a.astype(np.float64) for a in (xs, ys, bs)), backend=args.backend)
        for scheme in ("block_sum", "kahan_scheme", "direct_sum"):
            for acc in ("auto", "float64"):
                t0 = time.perf_counter()
                fn = gaussian_sum_bf16 if dtype == "bfloat16" else gaussian_sum
                res = fn(xs, ys, bs, sum_scheme=scheme, dtype_acc=acc, backend=args.backend)
                elapsed = time.perf_counter() - t0
                rel = np.abs(res.astype(np.float64) - exact) / np.abs(exact)
                print(
                    f"| {dtype} | {scheme} | {acc} | {np.median(rel):.2e} | {rel.max():.2e} | {elapsed:.2f} |"
                )
        if args.pykeops and dtype == "float32":
            for line in pykeops_rows(xs, ys, bs, exact):
                print(line)


def pykeops_rows(x, y, b, exact):
    """The same float32 sums by pykeops, one row per summation option."""
    try:
        from pykeops.numpy import LazyTensor as KeOpsLazyTensor
    except ImportError:
        return ["| pykeops not installed | | | | | |"]
    rows = []
    for scheme in ("block_sum", "kahan_scheme", "direct_sum"):
        for double in (False, True):
            x_i, y_j = KeOpsLazyTensor(x[:, None, :]), KeOpsLazyTensor(y[None, :, :])
            b_j = KeOpsLazyTensor(b[None, :, :])
            t0 = time.perf_counter()
            res = ((-((x_i - y_j) ** 2).sum(-1) / 2).exp() * b_j).sum(
                dim=1, sum_scheme=scheme, use_double_acc=double
            )
            elapsed = time.perf_counter() - t0
            rel = np.abs(res.astype(np.float64) - exact) / np.abs(exact)
            acc = "float64" if double else "auto"
            rows.append(
                f"| float32 (pykeops) | {scheme} | {acc} | {np.median(rel):.2e} | {rel.max():.2e} | "
                f"{elapsed:.2f} |"
            )
    return rows


if __name__ == "__main__":
    main()
