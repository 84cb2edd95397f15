"""Kernel sums, soft minima and k-nearest neighbours over a point cloud split across processes.

One process per GPU (or per CPU group), as ``torchrun`` starts them: each rank holds a shard
of the source points x and of the target points y (``torch.tensor_split`` order: rank r holds
rows ``offset_r .. offset_r + n_r`` of the global cloud).  ``polykeops.torch.distributed.sharded``
marks a tensor as such a shard; LazyTensors built on shards reduce over *every* rank's points:

* ``a_i = sum_j exp(-|x_i - y_j|^2 / 2 s^2) b_j`` (a Gaussian kernel sum, over all of y),
* ``m_i = -eps log sum_j exp(-|x_i - y_j|^2 / eps)`` (a soft minimum, logsumexp),
* the K nearest y_j of each x_i (``argKmin``: global indices into the concatenated y),

each rank getting the rows of its own x_i.  The y-shards travel around a ring of ranks while
each rank reduces its rows (no rank ever holds another's whole data or any M x N block), and
``loss.backward()`` gives each rank the gradient with respect to its own shards (and the sum
over ranks for the bandwidth s, a parameter).

    torchrun --nproc-per-node 2 examples/multi_gpu.py            # CPUs (Gloo) or GPUs (NCCL)
    torchrun --nproc-per-node 8 examples/multi_gpu.py --points 10000000
    python examples/multi_gpu.py --small                          # one process, a group of one

With ``--check`` (implied by ``--small``) every rank also gathers the whole cloud and compares
its shard of each result with polykeops in one process (values to float32 tolerance,
neighbours exactly up to near-ties), raising AssertionError on disagreement.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist

from polykeops.torch import LazyTensor, Pm, Vi, Vj
from polykeops.torch.distributed import sharded


def init() -> torch.device:
    """Join the job's process group (torchrun's environment), or make a group of one."""
    if "RANK" not in os.environ:  # plain `python examples/multi_gpu.py`
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if gpu else "gloo", timeout=datetime.timedelta(minutes=10))
    return torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")


def shard_rows(n: int, world: int, rank: int) -> tuple[int, int]:
    """(offset, count) of this rank's rows: torch.tensor_split order."""
    sizes = [len(t) for t in torch.tensor_split(torch.arange(n), world)]
    return sum(sizes[:rank]), sizes[rank]


def make_shard(n: int, d: int, seed: int, rank: int, world: int, device) -> torch.Tensor:
    """This rank's rows of a global cloud of n points (noisy spiral), generated locally."""
    offset, count = shard_rows(n, world, rank)
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    t = torch.linspace(0, 1, n + 1)[offset:offset + count]
    base = torch.stack([torch.cos(12 * t) * t, torch.sin(12 * t) * t] + [t] * (d - 2), dim=1)
    return (base + 0.05 * torch.randn(count, d, generator=g)).to(device)


def gather_all(t: torch.Tensor) -> torch.Tensor:
    """The concatenation of every rank's t (for the check only: small clouds)."""
    sizes = [torch.zeros((), dtype=torch.int64, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(t.shape[0], device=t.device))
    top = max(int(s) for s in sizes)  # Gloo gathers equal sizes: pad, then trim
    padded = torch.cat([t, t.new_zeros((top - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=200_000, help="points in x and in y (global)")
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--k", type=int, default=8, help="neighbours")
    parser.add_argument("--small", action="store_true", help="a quick run (n = 2,000), checked")
    parser.add_argument("--check", action="store_true", help="compare with one process (small n only)")
    opts = parser.parse_args()
    n = 2_000 if opts.small else opts.points
    check = opts.check or opts.small
    device = init()
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **kw: None)
    say(f"{world} rank(s), {dist.get_backend()} on {device}; n = {n:,} points in x and in y, D = {opts.d}")

    x = make_shard(n, opts.d, 0, rank, world, device).requires_grad_()
    y = make_shard(n, opts.d, 1, rank, world, device).requires_grad_()
    b = torch.ones(y.shape[0], 1, device=device)
    s = torch.tensor([0.1], device=device, requires_grad=True)
    eps = 0.01

    X, Y, B = Vi(sharded(x)), Vj(sharded(y)), Vj(sharded(b))
    dist.barrier()
    start = time.perf_counter()
    d2 = X.sqdist(Y)
    a = ((-d2 / (2 * Pm(s) * Pm(s))).exp() * B).sum(1)  # (n_r, 1): this rank's rows
    m = -eps * (-d2 / eps).logsumexp(1)  # (n_r, 1)
    knn = d2.argKmin(opts.k, dim=1)  # (n_r, K): global indices into y
    dist.barrier()
    t_fwd = time.perf_counter() - start
    # every rank's loss; backward sums the data-parallel objective over the ranks
    loss = a.log().sum() + m.sum()
    start = time.perf_counter()
    loss.backward()
    dist.barrier()
    t_bwd = time.perf_counter() - start
    say(f"forward (kernel sum + logsumexp + {opts.k}-NN): {t_fwd:.3f} s, backward: {t_bwd:.3f} s")
    say(f"rank 0 holds {x.shape[0]:,} rows of x; its first neighbours: {knn[0].tolist()}")

    if check:
        xs, ys = gather_all(x.detach()), gather_all(y.detach())
        xw, yw = xs.clone().requires_grad_(), ys.clone().requires_grad_()
        sw = s.detach().clone().requires_grad_()
        d2w = LazyTensor(xw[:, None, :]).sqdist(LazyTensor(yw[None, :, :]))
        aw = ((-d2w / (2 * Pm(sw) * Pm(sw))).exp()).sum(1)
        mw = -eps * (-d2w / eps).logsumexp(1)
        knnw = d2w.argKmin(opts.k, dim=1)
        offset, count = shard_rows(n, world, rank)
        rows = slice(offset, offset + count)
        # the sum over ranks of the local losses is the loss on the whole cloud
        (aw.log().sum() + mw.sum()).backward()
        torch.testing.assert_close(a, aw[rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m, mw[rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.grad, xw.grad[rows], rtol=1e-3, atol=1e-3)
        yoff, ycount = shard_rows(n, world, rank)
        torch.testing.assert_close(y.grad, yw.grad[yoff:yoff + ycount], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(s.grad, sw.grad, rtol=1e-3, atol=1e-3)
        same = (knn == knnw[rows]).float().mean().item()  # float32 near-ties may swap neighbours
        assert same > 0.99, f"only {same:.2%} of the neighbours agree with one process"
        say(f"check against one process on the whole cloud: ok ({same:.2%} of the neighbours identical)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
