"""PyTorch 2 on a GPU: bfloat16 on the CUDA backend, CUDA autocast with block-sparse ranges (the
case pykeops crashes on) and CUDA graphs (``mode="reduce-overhead"``).  Skipped without a GPU
(``python benchmarks/gpu_check.py --part tests`` runs them where one is present)."""

from __future__ import annotations

import pytest
import torch
from test_pytorch2 import autocast_with_ranges

from polykeops.torch import LazyTensor

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("polykeops.backends.cuda", fromlist=["x"])
    .CudaBackend().availability()[0],
    reason="needs a GPU and the CUDA backend",
)


def gaussian_sum(x, y, b, **options):
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    return ((-((x_i - y_j) ** 2).sum(-1)).exp() * b_j).sum(1, **options)


def _data(m=500, n=400, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(r, d, generator=gen).to("cuda", dtype) for r, d in ((m, 3), (n, 3), (n, 2))]


def test_bfloat16_on_the_cuda_backend_matches_the_reference_backend():
    x, y, b = _data(dtype=torch.bfloat16)
    got = gaussian_sum(x, y, b, backend="cuda")
    want = gaussian_sum(x.cpu(), y.cpu(), b.cpu(), backend="reference")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=2.0**-7, atol=1e-3)


def test_cuda_autocast_with_ranges():
    autocast_with_ranges("cuda")


def test_reduce_overhead_captures_and_replays_a_reduction():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(gaussian_sum, mode="reduce-overhead", fullgraph=True)
    x, y, b = _data()
    for _ in range(3):  # warm-up runs, then capture, then replays
        out = fn(x, y, b)
    torch.testing.assert_close(out, gaussian_sum(x, y, b))
    x2 = torch.randn_like(x)
    torch.testing.assert_close(fn(x2, y, b).clone(), gaussian_sum(x2, y, b))
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
