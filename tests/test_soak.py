"""The slow tier: a soak of the CPU backend (``python -m pytest tests/test_soak.py --run-slow``,
10 minutes by default, ``--soak-seconds`` to change it).

A process calls reductions for the whole duration: a pool of 24 formulas (sums, logsumexp,
argKmin, gradients; NumPy and torch; several threads) in JIT auto mode, with a disk cache capped
small enough that kernels are evicted and rebuilt all along, and an in-process table of 8
kernels (libraries unmapped and mapped again all along).  After a warm-up its resident
memory, open file descriptors and threads must stay flat.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops.backends.cpu import kernels


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _one_round(rng, k: int):
    x = rng.standard_normal((500, 3))
    y = rng.standard_normal((700, 3))
    scale = 1 + (k % 8)  # 8 constants x 3 kinds of reduction = 24 formulas
    kind = k % 3
    if kind == 0:
        got = (-(pknp.Vi(x) - pknp.Vj(y)).sqnorm2() * scale).exp().sum(1)
        want = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * scale).sum(1, keepdims=True)
        assert np.allclose(got, want, rtol=1e-10)
    elif kind == 1:
        xt = torch.from_numpy(x).requires_grad_()
        v = (-(pkt.Vi(xt) - pkt.Vj(torch.from_numpy(y))).sqnorm2() * scale).logsumexp(1)
        (g,) = torch.autograd.grad(v.sum(), xt)
        d2 = ((xt[:, None] - torch.from_numpy(y)[None]) ** 2).sum(-1)
        (gw,) = torch.autograd.grad(torch.logsumexp(-d2 * scale, 1).sum(), xt)
        assert torch.allclose(g, gw, rtol=1e-8, atol=1e-10)
    else:
        idx = ((pknp.Vi(x) - pknp.Vj(y)).sqnorm2() * scale).argKmin(3, dim=1)
        want = np.argsort(((x[:, None] - y[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :3]
        assert (idx == want).mean() > 0.99  # ties of equal distances may order differently


@pytest.mark.slow
def test_soak_memory_descriptors_and_threads_stay_flat(request, tmp_path, monkeypatch):
    seconds = request.config.getoption("--soak-seconds")
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("POLYKEOPS_CACHE_SIZE", "300kB")  # a few kernels: evictions all along
    monkeypatch.setenv("POLYKEOPS_JIT", "auto")
    monkeypatch.setenv("POLYKEOPS_MAX_KERNELS", "8")  # kernels unloaded and mapped again all along
    errors, stop = [], threading.Event()

    def worker(seed):
        rng, k = np.random.default_rng(seed), seed
        while not stop.is_set():
            try:
                _one_round(rng, k)
            except Exception as exc:  # reported below
                errors.append(repr(exc))
                return
            k += 1

    def run_workers(duration: float, sample=None) -> None:
        """Run the workers for ``duration`` seconds (calling ``sample`` every 10 s), then stop
        them and wait for the background builds they started."""
        stop.clear()
        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(3)]
        for t in threads:
            t.start()
        end = time.monotonic() + duration
        while time.monotonic() < end and not errors:
            time.sleep(min(10.0, max(0.1, end - time.monotonic())))
            if sample is not None:
                sample()
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert kernels.TABLE.wait_idle(600), "a background build did not finish in 10 minutes"

    def measure():
        return (_rss_mb(), _fds(), threading.active_count())

    # descriptors and threads are counted between rounds, when no call and no build is running
    # (an fd or a thread of a build in flight is not a leak); resident memory while the workers
    # run (its steady state includes their allocator arenas): its trend must be flat
    warm = min(60.0, seconds / 5)
    run_workers(warm)
    base = measure()
    samples = []
    run_workers(seconds - warm, lambda: samples.append(measure()))
    assert not errors, errors[:3]
    assert len(samples) >= 4
    quarter = max(1, len(samples) // 4)
    first = sorted(s[0] for s in samples[:quarter])[quarter // 2]
    last = sorted(s[0] for s in samples[-quarter:])[quarter // 2]
    assert last - first < 64, (f"resident memory grew from {first:.0f} MB to {last:.0f} MB (medians of the "
                               f"first and last quarters; every sample: {[round(s[0]) for s in samples]})")
    _, fds, nthreads = measure()
    assert fds - base[1] <= 0, f"file descriptors grew from {base[1]} to {fds}"
    assert nthreads - base[2] <= 1, f"threads grew from {base[2]} to {nthreads}"  # (+ the JIT worker, once)
