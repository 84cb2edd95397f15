"""Command line: ``python -m polykeops demo | check | cache``.

* ``demo [--n N] [--backend NAME]``: a Gaussian kernel sum on N points in 3-D
  (NumPy API), checked against a dense computation on a subset of rows; prints
  the time and the pairs per second.
* ``check``: what :func:`polykeops.check_health` finds (backends and why any is off).
* ``cache [--clean]``: where the compiled-kernel cache is, what each backend's folder
  holds (artifacts, bytes, against ``POLYKEOPS_CACHE_SIZE``); ``--clean`` deletes it.
"""

from __future__ import annotations

import argparse
import sys
import time


def demo(n: int | None, backend: str | None) -> int:
    import numpy as np

    from polykeops.numpy import LazyTensor

    if n is None:
        probe = LazyTensor(np.zeros((1, 1, 3), dtype=np.float32))
        from polykeops.backends import describe_choice

        chosen = backend or describe_choice(probe)
        n = 20_000 if "reference" in chosen else 200_000
        print(f"backend: {chosen}; M = N = {n}")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.standard_normal((n, 3)).astype(np.float32)
    b = rng.standard_normal((n, 1)).astype(np.float32)
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    kernel = (-((x_i - y_j) ** 2).sum(-1)).exp()
    (kernel * b_j).sum(dim=1, backend=backend)  # warm-up (and JIT, if any)
    t0 = time.perf_counter()
    a = (kernel * b_j).sum(dim=1, backend=backend)
    elapsed = time.perf_counter() - t0
    rows = min(n, 200)
    dense = np.exp(-((x[:rows, None, :].astype(np.float64) - y[None].astype(np.float64)) ** 2).sum(-1)) @ b
    err = float(np.abs(a[:rows] - dense).max() / max(1e-30, np.abs(dense).max()))
    print(f"Gaussian kernel sum, M = N = {n}, D = 3, float32: {elapsed:.3f} s, "
          f"{n * n / elapsed:.3g} pairs/s; max relative error on {rows} rows vs dense float64: {err:.2e}")
    return 0 if err < 1e-4 else 1


def cache(clean: bool) -> int:
    import polykeops
    from polykeops import config
    from polykeops.backends.artifact_cache import ArtifactStore, cache_base

    base = cache_base()
    if clean:
        removed = polykeops.clean_cache()
        print(f"removed {len(removed)} folder(s) under {base}" + "".join(f"\n  {r}" for r in removed))
        return 0
    limit = config.cache_size()
    print(f"polykeops cache: {base} (POLYKEOPS_CACHE_DIR; at most {limit / 1e6:.0f} MB per folder, "
          f"POLYKEOPS_CACHE_SIZE)")
    folders = sorted(p for p in base.iterdir() if (p / "CACHEDIR.TAG").is_file()) if base.is_dir() else []
    if not folders:
        print("  empty")
    for folder in folders:
        entries = ArtifactStore(folder.name, "").entries()
        size = sum(e[1] for e in entries)
        print(f"  {folder.name:<10} {len(entries)} artifact{'s' if len(entries) != 1 else ''}, "
              f"{size / 1e6:.2f} MB")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polykeops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run a Gaussian kernel sum and check it")
    p_demo.add_argument("--n", type=int, default=None,
                        help="points (default 200k; 20k on the reference backend)")
    p_demo.add_argument("--backend", default=None)
    sub.add_parser("check", help="report available backends")
    p_cache = sub.add_parser("cache", help="show the compiled-kernel cache (or --clean it)")
    p_cache.add_argument("--clean", action="store_true", help="delete every polykeops cache folder")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.n, args.backend)
    if args.command == "cache":
        return cache(args.clean)
    from polykeops import check_health

    check_health(verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
