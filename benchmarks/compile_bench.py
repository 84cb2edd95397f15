"""Per-call time of a LazyTensor reduction, torch.compile(fullgraph=True) vs eager.

    python benchmarks/compile_bench.py [--repeats 15] [--out benchmarks/results/compile_bench.md]

A Gaussian kernel sum a_i = sum_j exp(-|x_i - y_j|^2) b_j (D = 3, float32, CPU backend)
at M = N = 100 (the per-call overhead dominates) and M = N = 10,000 (the reduction
dominates), without and with a gradient w.r.t. x; the compiled function (inductor,
fullgraph) and the eager one are timed alternately in the same run (median of
``--repeats`` calls after warm-up), and their ratio is printed and written as markdown.
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


def median_time(fn, args, grad, repeats) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(fn, *args, grad)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
            for _ in range(3):  # warm-up: compilation, kernels built and loaded
                step(compiled, x, y, b, grad)
                step(gaussian_sum, x, y, b, grad)
            reps = args.repeats if n <= 1000 else max(3, args.repeats // 3)
            eager = statistics.median(median_time(gaussian_sum, (x, y, b), grad, reps) for _ in range(3))
            comp = statistics.median(median_time(compiled, (x, y, b), grad, reps) for _ in range(3))
            rows.append(f"| {n} | {'yes' if grad else 'no'} | {eager * 1e3:.3f} | {comp * 1e3:.3f} | "
                        f"{comp / eager:.2f} |")
            print(rows[-1], flush=True)
    text = ("`python benchmarks/compile_bench.py` (CPU backend, float32, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads)\n\n" + "\n".join(rows) + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
