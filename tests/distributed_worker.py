"""One rank of the torch.distributed tests (tests/test_torch_distributed.py starts W of them).

``python distributed_worker.py RANK WORLD PORT OUT_DIR [CASE ...]``: joins a Gloo group of
WORLD processes, runs every case (or those named) and writes ``OUT_DIR/rank{RANK}.json``
``{case: "ok" | error text}``.  Each case builds the same global data on every rank (seeded),
gives each rank its shard, runs the distributed reduction (and its gradients), and compares
with polykeops in one process on the concatenated data: indices exactly, values to 1e-10
(float64).  Comparisons come after the case's collectives, so a failed check cannot leave the
other ranks waiting.
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

RTOL = 1e-10


def split_sizes(n, world, pattern):
    """Shard sizes of n rows: 'even' (tensor_split), 'uneven', 'empty' (one rank gets nothing)."""
    if pattern == "even":
        return [len(t) for t in torch.tensor_split(torch.arange(n), world)]
    if pattern == "uneven":
        w = [k + 1 for k in range(world)]  # 1 : 2 : 3 ...
    else:  # "empty": the middle rank (or the last of two) has no rows
        w = [1] * world
        w[world // 2] = 0
    total = sum(w)
    sizes = [n * x // total for x in w]
    sizes[-1 if pattern != "empty" or world // 2 != world - 1 else 0] += n - sum(sizes)
    return sizes


def shard_of(t, sizes, rank, dim=-2):
    return torch.split(t, sizes, dim=dim)[rank]


def close(got, want, what, exact=False):
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if exact or not want.is_floating_point():
        if not torch.equal(got, want):
            raise AssertionError(f"{what}: not equal:\n{got}\n{want}")
        return
    if not torch.allclose(got, want, rtol=RTOL, atol=RTOL, equal_nan=True):
        err = (got - want).abs().max().item()
        raise AssertionError(f"{what}: max abs error {err}")


class Ctx:
    def __init__(self, rank, world):
        self.rank, self.world = rank, world
        self.gen = torch.Generator().manual_seed(1234)
        self.checks = []  # (got, want, what, exact) compared after the collectives

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def check(self, got, want, what, exact=False):
        self.checks.append((got.detach(), want.detach(), what, exact))

    def leaf(self, t):
        return t.clone().requires_grad_(True)


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------


def _reduction_case(c, reduction, pattern_i="uneven", pattern_j="uneven", shard_i=True, shard_j=True,
                    m=11, n=13, batch=(), axis=1, second_order=False):
    """One reduction of a formula of x_i, y_j, b_j and a parameter s, forward and backward."""
    from polykeops.torch import LazyTensor, Pm
    from polykeops.torch.distributed import sharded

    def Vi(t):  # (*batch, M, D) -> an i-variable (sharded: as given)
        return LazyTensor(t, axis=0) if not isinstance(t, torch.Tensor) else LazyTensor(t.unsqueeze(-2))

    def Vj(t):
        return LazyTensor(t, axis=1) if not isinstance(t, torch.Tensor) else LazyTensor(t.unsqueeze(-3))

    W, r = c.world, c.rank
    x = c.randn(*batch, m, 3)
    y = c.randn(*batch, n, 3)
    b = c.randn(*((1,) * len(batch)), n, 2)  # broadcast batch dimension
    s = torch.tensor([0.7], dtype=torch.float64)
    si = split_sizes(m, W, pattern_i)
    sj = split_sizes(n, W, pattern_j)

    def formula(X, Y, B, S, lib):
        d2 = X.sqdist(Y)
        if reduction == "Sum":
            return (-d2 * S).exp() * B, {}
        if reduction in ("LogSumExp", "SumSoftMaxWeight"):
            return -d2 * S, ({"weight": B} if reduction == "SumSoftMaxWeight" else {})
        if reduction in ("Min_ArgMin", "Min", "ArgMin"):
            return d2 * S + (B * B).sum(), {}
        if reduction == "Max_ArgMax":
            return (X * Y).sum() * S, {}
        if reduction in ("KMin_ArgKMin", "KMin", "ArgKMin"):
            return d2 * S, {}
        raise ValueError(reduction)

    def run(X, Y, B, S, lib):
        f, kw = formula(X, Y, B, S, lib)
        dim = len(batch) + axis  # reduction dims count the batch dimensions
        if reduction == "Sum":
            return f.sum(dim=dim)
        if reduction == "LogSumExp":
            return f.logsumexp(dim=dim)
        if reduction == "SumSoftMaxWeight":
            return f.sumsoftmaxweight(kw["weight"], dim=dim)
        if reduction == "Min_ArgMin":
            return f.min_argmin(dim=dim)
        if reduction == "Min":
            return f.min(dim=dim)
        if reduction == "ArgMin":
            return f.argmin(dim=dim)
        if reduction == "Max_ArgMax":
            return f.max_argmax(dim=dim)
        if reduction == "KMin_ArgKMin":
            return f.Kmin_argKmin(3, dim=dim)
        if reduction == "KMin":
            return f.Kmin(3, dim=dim)
        if reduction == "ArgKMin":
            return f.argKmin(3, dim=dim)
        raise ValueError(reduction)

    # single process, whole data
    xw, yw, bw, sw = (c.leaf(t) for t in (x, y, b, s))
    ref = run(Vi(xw), Vj(yw), Vj(bw), Pm(sw), LazyTensor)
    # the sharded axis of the output: i for dim=1 (output rows), j for dim=0
    out_sizes = (si if shard_i else None) if axis == 1 else (sj if shard_j else None)
    # distributed
    xl = c.leaf(shard_of(x, si, r) if shard_i else x)
    yl = c.leaf(shard_of(y, sj, r) if shard_j else y)
    bl = c.leaf(shard_of(b, sj, r) if shard_j else b)
    sl = c.leaf(s)
    X = Vi(sharded(xl)) if shard_i else Vi(xl)
    Y = Vj(sharded(yl)) if shard_j else Vj(yl)
    B = Vj(sharded(bl)) if shard_j else Vj(bl)
    got = run(X, Y, B, Pm(sl), LazyTensor)
    refs = ref if isinstance(ref, tuple) else (ref,)
    gots = got if isinstance(got, tuple) else (got,)
    for k, (g, w) in enumerate(zip(gots, refs)):
        # outputs are (*batch, out_n, ...) (K-reductions: (..., out_n, K))
        axis = len(batch)
        want = w if out_sizes is None else torch.split(w, out_sizes, dim=axis)[r]
        c.check(g, want, f"output {k}", exact=not w.is_floating_point())
    values = [(g, w) for g, w in zip(gots, refs) if w.is_floating_point()]
    if not values:
        return
    cot = c.randn(*refs[0].shape) if values else None  # the same on every rank
    ax = len(batch)
    cot_local = cot if out_sizes is None else torch.split(cot, out_sizes, dim=ax)[r]
    loss_ref = (values[0][1] * cot).sum()
    loss = (values[0][0] * cot_local).sum()
    inputs_ref = [xw, yw, bw, sw]
    inputs = [xl, yl, bl, sl]
    if not second_order:
        gref = torch.autograd.grad(loss_ref, inputs_ref, allow_unused=True)
        gdist = torch.autograd.grad(loss, inputs, allow_unused=True)
    else:  # d/d(inputs) of |d loss / d x|^2 + <d loss / d y, v>
        g1 = torch.autograd.grad(loss_ref, [xw, yw], create_graph=True)
        v = c.randn(*y.shape)
        # d loss / d y for a y whole on every rank is the same on every rank: its term counts once
        vl = shard_of(v, sj, r) if shard_j else v
        obj_ref = (g1[0] ** 2).sum() + (g1[1] * v).sum()
        gref = torch.autograd.grad(obj_ref, inputs_ref, allow_unused=True)
        g1d = torch.autograd.grad(loss, [xl, yl], create_graph=True)
        for k, (gd, gw) in enumerate(zip(g1d, g1)):
            sizes = si if k == 0 and shard_i else sj if k == 1 and shard_j else None
            c.check(gd, gw if sizes is None else shard_of(gw, sizes, r), f"first-order grad {k}")
        obj = (g1d[0] ** 2).sum() + (g1d[1] * vl).sum()
        gdist = torch.autograd.grad(obj, inputs, allow_unused=True)
    names = ["x", "y", "b", "s"]
    shards = [si if shard_i else None, sj if shard_j else None, sj if shard_j else None, None]
    for name, gd, gw, sizes in zip(names, gdist, gref, shards):
        if gw is None:
            if gd is not None and gd.abs().max() > 0:
                raise AssertionError(f"grad {name}: expected none")
            continue
        if gd is None:
            gd = torch.zeros_like(gw if sizes is None else shard_of(gw, sizes, r))
        c.check(gd, gw if sizes is None else shard_of(gw, sizes, r), f"grad {name}")


def _k_at_v(c):
    """K @ v written with a sharded v, and a reduction over i (dim=0) of sharded data."""
    from polykeops.torch import Vi, Vj
    from polykeops.torch.distributed import sharded

    W, r = c.world, c.rank
    x, v = c.randn(9, 2), c.randn(9, 4)
    sizes = split_sizes(9, W, "empty")
    xl, vl = shard_of(x, sizes, r), shard_of(v, sizes, r)
    K = (-Vi(sharded(xl)).sqdist(Vj(sharded(xl)))).exp()
    got = (K * Vj(sharded(vl))).sum(1)
    want = (-Vi(x).sqdist(Vj(x))).exp() @ v
    c.check(got, shard_of(want, sizes, r), "K @ v")
    got0 = (K * Vi(sharded(vl))).sum(0)  # over i: the output is indexed by j (sharded)
    want0 = ((-Vi(x).sqdist(Vj(x))).exp() * Vi(v)).sum(0)
    c.check(got0, shard_of(want0, sizes, r), "sum over i")
    y = c.randn(7, 2)
    ysizes = split_sizes(7, W, "uneven")
    Kt = (-Vi(sharded(xl)).sqdist(Vj(sharded(shard_of(y, ysizes, r))))).exp().t()  # rows: y's shards
    c.check(Kt.sum(1), shard_of((-Vi(x).sqdist(Vj(y))).exp().t().sum(1), ysizes, r), "K.t() sum")


def _ties(c):
    """Equal values in several shards: argmin / argKmin pick the smallest global index."""
    from polykeops.torch import Vi, Vj
    from polykeops.torch.distributed import sharded

    W, r = c.world, c.rank
    x = c.randn(6, 1)
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    sizes = split_sizes(8, W, "uneven")
    yl = shard_of(y, sizes, r)
    f = lambda Y: (Vi(x) * 0 + Y).sum()  # noqa: E731 - the same value for every i, ties along j
    for name, red in (("argmin", lambda L: L.argmin(1)), ("argKmin", lambda L: L.argKmin(5, 1)),
                      ("argmax", lambda L: L.argmax(1))):
        c.check(red(f(Vj(sharded(yl)))), red(f(Vj(y))), f"ties {name}", exact=True)


def _errors(c):
    """Mixing sharded and whole variables of one axis is refused on every rank alike."""
    from polykeops.errors import ShapeError
    from polykeops.torch import Vi, Vj
    from polykeops.torch.distributed import sharded

    x = c.randn(4, 2)
    xs = sharded(x)
    try:
        (Vi(xs) - Vi(x) + Vj(x)).sum().sum(1)
    except ShapeError:
        pass
    else:
        raise AssertionError("mixing sharded and whole i-variables was accepted")
    try:
        Vj(sharded(x)).sum(1)  # no i-variable: the output has one row, as in one process
    except Exception as e:  # pragma: no cover - reported
        raise AssertionError(f"a reduction without i-variable failed: {e}") from e
    try:
        sharded(torch.zeros(3))
    except ShapeError:
        pass
    else:
        raise AssertionError("a 1-D tensor was accepted")


CASES = {}
for _red in ("Sum", "LogSumExp", "SumSoftMaxWeight", "Min_ArgMin", "Max_ArgMax", "KMin_ArgKMin", "Min",
             "ArgKMin"):
    CASES[f"{_red}"] = (lambda red: lambda c: _reduction_case(c, red))(_red)
CASES["Sum-empty-shards"] = lambda c: _reduction_case(c, "Sum", "empty", "empty")
CASES["KMin-empty-shards"] = lambda c: _reduction_case(c, "KMin_ArgKMin", "empty", "empty")
CASES["LogSumExp-batch"] = lambda c: _reduction_case(c, "LogSumExp", batch=(2,))
CASES["Min-batch"] = lambda c: _reduction_case(c, "Min_ArgMin", "even", "empty", batch=(2,))
CASES["Sum-over-i"] = lambda c: _reduction_case(c, "Sum", axis=0)
CASES["KMin-over-i"] = lambda c: _reduction_case(c, "KMin_ArgKMin", "uneven", "empty", axis=0)
CASES["Sum-i-whole"] = lambda c: _reduction_case(c, "Sum", shard_i=False)
CASES["Min-i-whole"] = lambda c: _reduction_case(c, "Min_ArgMin", shard_i=False)
CASES["KMin-i-whole-empty-shard"] = lambda c: _reduction_case(c, "KMin_ArgKMin", pattern_j="empty",
                                                               shard_i=False)
CASES["SoftMax-i-whole-empty-shard"] = lambda c: _reduction_case(c, "SumSoftMaxWeight", pattern_j="empty",
                                                                  shard_i=False, batch=(2,))
CASES["LogSumExp-j-whole"] = lambda c: _reduction_case(c, "LogSumExp", shard_j=False)
CASES["KMin-j-whole"] = lambda c: _reduction_case(c, "KMin_ArgKMin", shard_j=False)
CASES["Sum-second-order"] = lambda c: _reduction_case(c, "Sum", "uneven", "empty", second_order=True)
CASES["LogSumExp-second-order"] = lambda c: _reduction_case(c, "LogSumExp", second_order=True)
CASES["SumSoftMaxWeight-second-order"] = lambda c: _reduction_case(c, "SumSoftMaxWeight", second_order=True)
CASES["KMin-second-order"] = lambda c: _reduction_case(c, "KMin_ArgKMin", "empty", "uneven",
                                                        second_order=True)
CASES["Min-i-whole-second-order"] = lambda c: _reduction_case(c, "Min_ArgMin", shard_i=False,
                                                               second_order=True)
CASES["Min-j-whole-second-order"] = lambda c: _reduction_case(c, "Min_ArgMin", "empty", shard_j=False,
                                                               second_order=True)
CASES["LogSumExp-j-whole-second-order"] = lambda c: _reduction_case(c, "LogSumExp", shard_j=False,
                                                                     second_order=True)
CASES["K-at-v"] = _k_at_v
CASES["ties"] = _ties
CASES["errors"] = _errors


def main():
    faulthandler.enable()  # a crash (SIGABRT from a C++ library included) prints every thread's stack
    rank, world, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    names = sys.argv[5:] or list(CASES)
    timeout = datetime.timedelta(seconds=60)
    # rank 0 hosts the rendezvous store; it leaves last (see the end)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    import polykeops

    results = {"__file__": polykeops.__file__}
    for name in names:
        c = Ctx(rank, world)
        try:
            CASES[name](c)
            for got, want, what, exact in c.checks:
                close(got, want, f"{name}: {what}", exact)
            results[name] = "ok"
        except Exception:  # reported to the test, which fails with the text
            results[name] = traceback.format_exc()
        dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    # An orderly teardown: every rank is done with the group before any destroys it (a rank
    # closing its Gloo pairs while a peer still used them aborted the peer: "terminate called
    # without an active exception", once in 8 runs on a loaded machine), and the store's host
    # outlives every rank's use of the store.
    dist.barrier()
    dist.destroy_process_group()
    store.add("left", 1)
    if rank == 0:
        end = time.monotonic() + 30
        while store.add("left", 0) < world and time.monotonic() < end:
            time.sleep(0.01)


if __name__ == "__main__":
    main()
