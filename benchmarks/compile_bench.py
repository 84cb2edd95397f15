"""Per-call time of a LazyTensor reduction, torch.compile(fullgraph=True) vs eager.

    python benchmarks/compile_bench.py [--repeats 15] [--out benchmarks/results/compile_bench.md]

A Gaussian kernel sum a_i = sum_j exp(-|x_i - y_j|^2) b_j (D = 3, float32, CPU backend)
at M = N = 100 (the per-call overhead dominates) and M = N = 10,000 (the reduction
dominates), without and with a gradient w.r.t. x; the compiled function (inductor,
fullgraph) and the eager one are called in turn in the same run (median of ``--repeats``
calls each, 20 times more at 100 x 100, after warm-up), and the ratio of the medians is
printed and written as markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from polykeops.torch import LazyTensor


def gaussian_sum(x, y, b):
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    return ((-((x_i - y_j) ** 2).sum(-1)).exp() * b_j).sum(1)


def step(fn, x, y, b, grad: bool):
    if not grad:
        return fn(x, y, b)
    out = fn(x, y, b)
    return torch.autograd.grad(out.sum(), x)[0]


def median_times(fns, args, grad, repeats) -> list[float]:
    """The median time of each function, the functions called in turn (same noise for all)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            step(fn, *args, grad)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_bench.md"))
    args = parser.parse_args()
    compiled = torch.compile(gaussian_sum, fullgraph=True, dynamic=False)
    rows = ["| M = N | gradient | eager (ms) | compiled (ms) | compiled / eager |", "|---|---|---|---|---|"]
    for n in (100, 10_000):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, generator=gen, requires_grad=True)
        y, b = torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen)
        for grad in (False, True):
            for _ in range(3):  # warm-up: compilation, kernels built (in the background) and loaded
                step(compiled, x, y, b, grad)
                step(gaussian_sum, x, y, b, grad)
            time.sleep(2.0)
            step(compiled, x, y, b, grad)
            step(gaussian_sum, x, y, b, grad)
            reps = args.repeats * 20 if n <= 1000 else args.repeats
            eager, comp = median_times((gaussian_sum, compiled), (x, y, b), grad, reps)
            rows.append(f"| {n} | {'yes' if grad else 'no'} | {eager * 1e3:.3f} | {comp * 1e3:.3f} | "
                        f"{comp / eager:.2f} |")
            print(rows[-1], flush=True)
    text = ("`python benchmarks/compile_bench.py` (CPU backend, float32, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads)\n\n" + "\n".join(rows) + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
