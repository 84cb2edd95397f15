"""Sharded reductions (polykeops.torch.distributed): W ranks against one process, and the ring's cost.

Run from the repository root::

    python benchmarks/distributed_bench.py                     # N = 40,000, 1 process vs 1 and 2 ranks
    python benchmarks/distributed_bench.py --n 100000 --ranks 1 2 4 --threads 4

Workload: the Gaussian sum ``a_i = sum_j exp(-|x_i - y_j|^2 / s^2) b_j`` in 3-D, float32, N points in x
and in y, forward alone and forward + backward (gradients with respect to x, y and s).  Every
configuration uses the same number of CPU threads in all (``--threads``): the single process gets
all of them, each of W ranks (Gloo, one process each, started here) gets ``threads / W``.  So the
ratio time(W ranks) / time(1 process) measures the overhead of the ring (partial states, shard
transfers, the combine) at equal compute; on a machine with as many cores as ranks times threads
the ranks would also share out the compute.  ``--ranks 1`` is the sharded code path on a group of one.

Also measured: the single-process rate (pairs per second) and the time of one ring step's transfer
(``isend``/``irecv`` of a shard, Gloo over loopback), from which the script prints the expected
scaling of N = 10M on 8 GPUs (see the README, "Multi-GPU and clusters").

Writes ``benchmarks/results/distributed_bench.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _data(n, d, rank, world):
    import torch

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, d, generator=g), torch.rand(n, d, generator=g)
    b = torch.rand(n, 1, generator=g)
    rows = torch.tensor_split(torch.arange(n), world)[rank]
    return x[rows], y[rows], b[rows]


def _timed(fn, runs):
    fn()  # warm-up: kernels built (POLYKEOPS_JIT=sync), buffers allocated
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def worker(rank, world, port, n, d, runs, out):
    """One rank (world > 0), or the single process without torch.distributed (world == 0)."""
    import torch
    import torch.distributed as dist

    from polykeops.torch import Pm, Vi, Vj

    single = world == 0
    if not single:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
        from polykeops.torch.distributed import sharded
    x, y, b = _data(n, d, 0 if single else rank, 1 if single else world)
    x.requires_grad_()
    y.requires_grad_()
    s = torch.tensor([0.25], requires_grad=True)
    wrap = (lambda t: t) if single else sharded
    X, Y, B = Vi(wrap(x)), Vj(wrap(y)), Vj(wrap(b))

    def forward():
        with torch.no_grad():
            res = ((-X.sqdist(Y) / (Pm(s) * Pm(s))).exp() * B).sum(1)
        if not single:
            dist.barrier()
        return res

    def both():
        res = ((-X.sqdist(Y) / (Pm(s) * Pm(s))).exp() * B).sum(1)
        torch.autograd.grad(res.sum(), [x, y, s])
        if not single:
            dist.barrier()

    if not single:
        dist.barrier()
    fwd = _timed(forward, runs)
    fb = _timed(both, runs)
    record = {"forward": fwd, "forward_backward": fb}
    if not single and world > 1:  # one ring step's transfer: a shard of y and b
        shard = torch.cat([y.detach(), b], 1).contiguous()
        recv = torch.empty_like(shard)

        def step():
            ops = [dist.P2POp(dist.isend, shard, (rank + 1) % world),
                   dist.P2POp(dist.irecv, recv, (rank - 1) % world)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        record["ring_step"] = _timed(step, runs)
        record["ring_step_bytes"] = shard.numel() * shard.element_size()
    if rank == 0:
        Path(out).write_text(json.dumps(record))
    if not single:
        dist.destroy_process_group()


def launch(world, n, d, runs, threads):
    """Run ``world`` ranks (0: the single process) with ``threads`` threads in all; rank 0's record."""
    import tempfile

    out = Path(tempfile.mkdtemp()) / "rank0.json"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               POLYKEOPS_JIT="sync", POLYKEOPS_NUM_THREADS=str(max(1, threads // max(world, 1))),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(r), str(world), str(port), str(n),
                               str(d), str(runs), str(out)], env=env) for r in range(max(world, 1))]
    for p in procs:
        if p.wait(timeout=3600) != 0:
            raise SystemExit(f"a worker of the {world}-rank run failed")
    return json.loads(out.read_text())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rank, world, port, n, d, runs = (int(a) for a in sys.argv[2:8])
        return worker(rank, world, port, n, d, runs, sys.argv[8])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3, help="timed runs per launch")
    parser.add_argument("--rounds", type=int, default=3,
                        help="launches of every configuration, interleaved (a shared machine's load varies)")
    opts = parser.parse_args()
    configs = [("1 process", 0)] + [(f"{w} rank(s)", w) for w in opts.ranks]
    records = {name: [] for name, _ in configs}
    for _ in range(opts.rounds):
        for name, w in configs:
            records[name].append(launch(w, opts.n, opts.d, opts.runs, opts.threads))
    rows = []
    for name, w in configs:
        recs = records[name]
        merged = {key: (min(r[key][0] for r in recs), statistics.median(r[key][1] for r in recs))
                  for key in recs[0] if key != "ring_step_bytes"}
        if "ring_step_bytes" in recs[0]:
            merged["ring_step_bytes"] = recs[0]["ring_step_bytes"]
        rows.append((name, w, merged))
    base = rows[0][2]
    lines = [f"N = {opts.n:,} (x and y), D = {opts.d}, float32, {opts.threads} CPU threads in all; "
             f"best (median) of {opts.rounds} interleaved launches x {opts.runs} runs; "
             "ratio = best time / best time of 1 process", "",
             "| configuration | forward s | ratio | forward+backward s | ratio |", "|---|---|---|---|---|"]
    for name, _, rec in rows:
        f, fb = rec["forward"], rec["forward_backward"]
        lines.append(f"| {name} | {f[0]:.3f} ({f[1]:.3f}) | {f[0] / base['forward'][0]:.2f} | "
                     f"{fb[0]:.3f} ({fb[1]:.3f}) | {fb[0] / base['forward_backward'][0]:.2f} |")
    rate = opts.n * opts.n / base["forward"][0]
    lines += ["", f"single-process rate: {rate:.3g} pairs/s (forward, {opts.threads} threads)"]
    ring = [rec for _, w, rec in rows if "ring_step" in rec]
    if ring:
        rec = ring[-1]
        bw = rec["ring_step_bytes"] / rec["ring_step"][0]
        lines.append(f"ring step transfer (Gloo, loopback): {rec['ring_step_bytes']:,} bytes in "
                     f"{rec['ring_step'][0] * 1e3:.2f} ms = {bw / 1e9:.2f} GB/s")
    # the 8-GPU estimate: N = 10M, W = 8, a shard of y and b (D + 1 float32 per point) per ring step
    big_n, world, per_point = 10_000_000, 8, 4 * (opts.d + 1)
    shard = big_n // world
    step_bytes = shard * per_point
    lines += ["", f"8 ranks x N = 10M: a ring step moves {step_bytes / 1e6:.0f} MB and computes "
              f"{shard * shard:.3g} pairs per rank;"]
    for label, r in (("this machine's measured rate", rate), ("a device at 1e11 pairs/s (assumed)", 1e11),
                     ("a device at 1e12 pairs/s (assumed)", 1e12)):
        compute = shard * shard / r
        for link, link_bw in (("25 GB/s (InfiniBand HDR)", 25e9), ("300 GB/s (NVLink)", 300e9)):
            comm = step_bytes / link_bw
            lines.append(f"- {label}: {compute:.3g} s of compute per step vs {comm * 1e3:.2f} ms of transfer "
                         f"over {link} (hidden by the overlap when smaller): expected speed-up "
                         f"{world * compute / max(compute, comm):.2f}x over 1 device")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    title = "# Sharded reductions: W ranks vs 1 process\n\n"
    (RESULTS / "distributed_bench.md").write_text(title + text + "\n")
    summary = {name: rec for name, _, rec in rows}
    (RESULTS / "distributed_bench.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
