"""polykeops.dask on a LocalCluster: 1 worker vs 2 workers, and the overhead of one task.

Measures, on this machine:

* the single-process rate of the CPU engine (polykeops.numpy, one engine thread) on a
  Gaussian kernel sum ``K @ b`` and a kNN (``argKmin``), in kernel evaluations per second;
* the same reductions through polykeops.dask on ``LocalCluster(n_workers=w,
  threads_per_worker=1)`` for w = 1 and 2 (each worker runs the engine on one thread:
  ``POLYKEOPS_NUM_THREADS=1``), best of ``--repeat`` runs after a warm-up: wall time,
  speed-up (time with 1 worker / time with 2), parallel efficiency;
* the overhead of one task: a reduction cut into many tiny chunks (its arithmetic is
  negligible), wall time divided by the number of tasks of its graph.

Every result is checked against polykeops.numpy (indices exactly, values to 1e-4).

    python benchmarks/dask_bench.py                    # n = 100,000 (Gaussian sum), 60,000 (kNN)
    python benchmarks/dask_bench.py --n 20000 --knn-n 10000 --repeat 1   # quick
    python benchmarks/dask_bench.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("POLYKEOPS_NUM_THREADS", "1")  # read at use time, inherited by the workers
# every process (this one, each worker) compiles its kernel before the first evaluation: the
# warm-up runs then time the same specialised kernels everywhere, not the generic interpreter
# that answers while a background build is under way
os.environ.setdefault("POLYKEOPS_JIT", "sync")

import numpy as np  # noqa: E402


def _problems(n, knn_n, chunk, knn_chunk, k):
    import dask.array as da

    import polykeops.dask as pkd
    import polykeops.numpy as pkn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype("float32")
    b = rng.standard_normal((n, 1)).astype("float32")
    p = rng.standard_normal((knn_n, 3)).astype("float32")

    def gauss_dask():
        dx, db = da.from_array(x, chunks=(chunk, 3)), da.from_array(b, chunks=(chunk, 1))
        return (-pkd.Vi(dx).sqdist(pkd.Vj(dx))).exp() @ db

    def knn_dask():
        dp = da.from_array(p, chunks=(knn_chunk, 3))
        return pkd.Vi(dp).sqdist(pkd.Vj(dp)).argKmin(k, dim=1)

    def gauss_numpy():
        return (-pkn.Vi(x).sqdist(pkn.Vj(x))).exp() @ b

    def knn_numpy():
        return pkn.Vi(p).sqdist(pkn.Vj(p)).argKmin(k, dim=1)

    return {
        "gaussian_sum": (gauss_dask, gauss_numpy, n * n, -(-n // chunk)),
        "knn": (knn_dask, knn_numpy, knn_n * knn_n, -(-knn_n // knn_chunk)),
    }


def _best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _timed_on(client, lazy, repeat):
    """``(best wall time, result, task seconds per worker)`` of ``lazy`` on ``client``: the task
    stream says how busy each worker was (on a shared machine, tasks slowed down by other
    processes show up as longer compute times, not as scheduling gaps)."""
    import distributed

    best, out, busy = None, None, None
    for _ in range(repeat):
        with distributed.get_task_stream(client) as ts:
            t0 = time.perf_counter()
            res = lazy.compute()
            t = time.perf_counter() - t0
        if best is None or t < best:
            per = {}
            for task in ts.data:
                for ss in task.get("startstops", ()):
                    if ss.get("action") == "compute":
                        per[task["worker"]] = per.get(task["worker"], 0.0) + ss["stop"] - ss["start"]
            best, out, busy = t, res, sorted(per.values())
    return best, out, busy


def _check(got, want, name):
    if want.dtype.kind == "i":
        # float32 near-ties may swap neighbours: compare sets of neighbours, most rows exactly
        same = (np.sort(got, 1) == np.sort(want, 1)).all(1).mean()
        assert same > 0.999, f"{name}: only {same:.4f} of the rows have the same neighbours"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="points of the Gaussian sum (M = N)")
    parser.add_argument("--chunk", type=int, default=12_500)
    parser.add_argument("--knn-n", type=int, default=60_000)
    parser.add_argument("--knn-chunk", type=int, default=7_500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--overhead-n", type=int, default=2_000, help="points of the many-tiny-tasks run")
    parser.add_argument("--overhead-chunk", type=int, default=50)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import distributed

    import polykeops.dask as pkd

    problems = _problems(args.n, args.knn_n, args.chunk, args.knn_chunk, args.k)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "engine_threads": os.environ["POLYKEOPS_NUM_THREADS"],
                           "jit": os.environ["POLYKEOPS_JIT"],
                           "load_average_at_start": os.getloadavg()},
               "problems": {}}
    for name, (build, single, pairs, nchunks) in problems.items():
        single()  # warm-up (kernel compilation)
        t, want = _best(single, args.repeat)
        results["problems"][name] = {"pairs": pairs, "chunks_per_axis": nchunks,
                                     "state_tasks": nchunks * nchunks,
                                     "single_process_s": t, "single_process_rate": pairs / t}
        print(f"{name}: {pairs:.3g} pairs; polykeops.numpy, 1 process: {t:.3f} s, {pairs / t:.3g} pairs/s")
        problems[name] = (build, want, pairs)

    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40) as cluster, \
                distributed.Client(cluster) as client:
            client.wait_for_workers(workers, timeout=120)
            for name, (build, want, pairs) in problems.items():
                lazy = build()
                _check(lazy.compute(), want, name)  # warm-up: every worker compiles (or loads) the kernel
                t, got, busy = _timed_on(client, lazy, args.repeat)
                _check(got, want, name)
                entry = results["problems"][name]
                entry[f"workers_{workers}_s"] = t
                entry[f"workers_{workers}_task_seconds"] = busy
                print(f"{name}: {workers} worker(s): {t:.3f} s, {pairs / t:.3g} pairs/s; task compute "
                      f"seconds per worker {[round(b, 2) for b in busy]}; "
                      f"load average {os.getloadavg()[0]:.1f}")
            if workers == 1:  # the overhead of one task: many chunks, negligible arithmetic
                rng = np.random.default_rng(1)
                q = rng.standard_normal((args.overhead_n, 3))
                dq = da.from_array(q, chunks=(args.overhead_chunk, 3))
                lazy = pkd.Vi(dq).sqdist(pkd.Vj(dq)).argKmin(3, dim=1)
                tasks = len(dask.optimize(lazy)[0].__dask_graph__())
                lazy.compute()
                t, _ = _best(lazy.compute, args.repeat)
                results["overhead"] = {"points": args.overhead_n, "chunk": args.overhead_chunk,
                                       "graph_tasks": tasks, "seconds": t, "per_task_ms": 1e3 * t / tasks}
                print(f"overhead: {tasks} tasks in {t:.3f} s: {1e3 * t / tasks:.3f} ms per task (1 worker)")
    for name, entry in results["problems"].items():
        entry["speedup_2_vs_1"] = entry["workers_1_s"] / entry["workers_2_s"]
        entry["efficiency_1_worker"] = entry["single_process_s"] / entry["workers_1_s"]
        print(f"{name}: speed-up 2 workers vs 1: {entry['speedup_2_vs_1']:.2f}x; "
              f"1 worker vs polykeops.numpy: {entry['efficiency_1_worker']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
