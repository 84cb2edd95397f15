"""PyTorch 2: torch.compile (fullgraph, dynamic sizes, gradients), torch.export, the custom
operator, bfloat16 and autocast."""

from __future__ import annotations

import pytest
import torch

from polykeops.formula.serial import spec_from_text, spec_to_text
from polykeops.torch import LazyTensor


def kernel_loss(x, y, b):
    """A Gaussian kernel loss built from LazyTensors (what a training step would compute)."""
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    K = (-((x_i - y_j) ** 2).sum(-1)).exp()
    return ((K * b_j).sum(1) ** 2).sum() + K.matvec(b).sum()  # (K @ b: see the README)


@pytest.fixture(scope="module")
def compiled():
    """``kernel_loss`` compiled once (inductor, fullgraph) with a counter of Dynamo compilations."""
    from torch._inductor.compile_fx import compile_fx

    torch._dynamo.reset()
    count = []

    def backend(gm, example_inputs):
        count.append(1)
        return compile_fx(gm, example_inputs)

    return torch.compile(kernel_loss, backend=backend, fullgraph=True), count


def test_compiled_training_step_matches_eager_without_recompiling(compiled):
    fn, count = compiled
    gen = torch.Generator().manual_seed(0)
    for m, n in [(40, 30), (57, 33), (64, 71), (90, 25), (33, 80), (120, 99)]:
        x = torch.randn(m, 3, generator=gen, requires_grad=True)
        y = torch.randn(n, 3, generator=gen, requires_grad=True)
        b = torch.randn(n, 2, generator=gen)
        got = fn(x, y, b)
        gx, gy = torch.autograd.grad(got, [x, y])
        want = kernel_loss(x, y, b)
        ex, ey = torch.autograd.grad(want, [x, y])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        torch.testing.assert_close(gx, ex, rtol=1e-6, atol=1e-6 * float(ex.abs().max()))
        torch.testing.assert_close(gy, ey, rtol=1e-6, atol=1e-6 * float(ey.abs().max()))
    assert len(count) <= 2, f"{len(count)} compilations for 6 sizes (the first, then one dynamic)"


def test_genred_built_outside_a_fullgraph_region():
    from polykeops.torch import Genred

    g = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], reduction_op="Sum", axis=1)

    def loss(x, y, b):
        return (g(x, y, b) ** 2).sum()

    fn = torch.compile(loss, backend="aot_eager", fullgraph=True)
    x = torch.randn(40, 3, requires_grad=True)
    y, b = torch.randn(30, 3), torch.randn(30, 2)
    got, want = fn(x, y, b), loss(x, y, b)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_export_of_a_module_that_reduces():
    class KernelMatvec(torch.nn.Module):
        def forward(self, x, y, b):
            K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
            return K @ b

    x, y, b = torch.randn(20, 3), torch.randn(15, 3), torch.randn(15, 2)
    m = torch.export.Dim("M")
    ep = torch.export.export(KernelMatvec(), (x, y, b), dynamic_shapes=({0: m}, None, None))
    assert "polykeops.reduce" in ep.graph_module.code
    x2 = torch.randn(31, 3)
    torch.testing.assert_close(ep.module()(x2, y, b), KernelMatvec()(x2, y, b))
    import io

    buf = io.BytesIO()  # no Python object in the graph: the program saves and loads
    torch.export.save(ep, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.export.load(buf).module()(x2, y, b), KernelMatvec()(x2, y, b))


def test_custom_op_signature_is_plain_and_the_spec_text_round_trips():
    schema = str(torch.ops.polykeops.reduce.default._schema)
    assert schema.startswith("polykeops::reduce(str spec, SymInt nx, SymInt ny, SymInt[] batch, str backend")
    x = torch.randn(6, 3)
    lt = (LazyTensor(x[:, None, :]) - LazyTensor(x[None, :, :]) * 0.5).norm2().exp()
    from polykeops.common.reduce import _number, _options

    spec, _ = _number(lt, [lt.formula], "KMin", 1, 2, _options({}))
    assert spec_from_text(spec_to_text(spec)) == spec


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bfloat16_sum_within_bfloat16_rounding(backend):
    gen = torch.Generator().manual_seed(1)
    x, y, b = (torch.randn(n, d, generator=gen).bfloat16() for n, d in ((300, 3), (200, 3), (200, 2)))
    K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
    got = (K * LazyTensor(b[None, :, :])).sum(1, backend=backend)
    assert got.dtype == torch.bfloat16
    x64, y64, b64 = x.double(), y.double(), b.double()
    want = torch.exp(-torch.cdist(x64, y64) ** 2) @ b64
    # one rounding of the float32-accumulated result to bfloat16 (half an ulp: 2**-9 relative)
    err = (got.double() - want).abs()
    assert bool((err <= 2.0**-8 * want.abs() + 1e-5).all()), float(err.max())


def test_autocast_cpu_policy():
    x, y = torch.randn(30, 3), torch.randn(20, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (-LazyTensor(x.bfloat16()[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp().sum(1)
        xb, yb = x.bfloat16(), y.bfloat16()
        low = (-LazyTensor(xb[:, None, :]).sqdist(LazyTensor(yb[None, :, :]))).exp().sum(1)
    assert mixed.dtype == torch.float32  # mixed inputs meet in float32
    assert low.dtype == torch.bfloat16  # all low precision: kept (accumulated in float32)
    with pytest.raises(Exception, match="convert one of them first"):
        LazyTensor(x.bfloat16()[:, None, :]) - LazyTensor(y[None, :, :])  # outside autocast: an error


def _op_call(x, y):
    """A Gaussian kernel sum as a (call, arguments) pair of the custom operator's path."""
    from polykeops.common.call import prepare_call
    from polykeops.common.reduce import _number, _options

    K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
    spec, leaves = _number(K, [K.formula], "Sum", 1, None, _options({}))
    return K, prepare_call(K._tools, spec, [leaf.array for leaf in leaves], leaves=leaves)


def test_custom_op_passes_opcheck_and_differentiates_twice():
    from polykeops.torch.custom_op import op_apply

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(20, 3, dtype=torch.float64, generator=gen)
    K, (call, args) = _op_call(x, y)
    (out,) = op_apply(call, args)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g**2).sum(), x)
    ref = K.sum(1)  # the eager path (GenredFunction)
    (ge,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    (he,) = torch.autograd.grad((ge**2).sum(), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, ge)
    torch.testing.assert_close(h, he)
    a = [args[0].detach().requires_grad_(), args[1]]
    op_args = (spec_to_text(call.spec), call.nx, call.ny, [], "auto", -1, a)
    torch.library.opcheck(torch.ops.polykeops.reduce.default, op_args)


def autocast_with_ranges(device: str) -> None:
    """A block-sparse Gaussian sum under ``torch.autocast`` (bfloat16) on ``device``: a bfloat16
    activation meets float32 data in float32; values and gradients as without autocast."""
    from polykeops.torch.cluster import from_matrix

    gen = torch.Generator().manual_seed(3)
    m, n = 60, 50
    x, y, b = (torch.randn(r, d, generator=gen).to(device) for r, d in ((m, 3), (n, 3), (n, 2)))
    rx = torch.tensor([[0, 20], [20, m]], device=device)
    ry = torch.tensor([[0, 30], [30, n]], device=device)
    keep = torch.tensor([[True, False], [True, True]], device=device)
    ranges = from_matrix(rx, ry, keep)
    x.requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        h = torch.nn.functional.linear(x, torch.eye(3, device=device))  # bfloat16 under autocast
        assert h.dtype == torch.bfloat16
        out = gaussian_sum(h, y, b, ranges=ranges)
    assert out.dtype == torch.float32
    (g,) = torch.autograd.grad(out.sum(), x)
    xr = x.detach().bfloat16().float().requires_grad_(True)
    want = gaussian_sum(xr, y, b, ranges=ranges)
    (gw,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(out.detach(), want.detach())
    # (the gradient flows back through the bfloat16 linear layer: rounded to bfloat16)
    torch.testing.assert_close(g, gw, rtol=2.0**-7, atol=2.0**-7 * float(gw.abs().max()))
    mask = torch.zeros(m, n, dtype=torch.bool, device=device)
    mask[:20, :30] = True
    mask[20:, :] = True
    dense = (torch.exp(-torch.cdist(xr.detach().double(), y.double()) ** 2) * mask) @ b.double()
    torch.testing.assert_close(want.detach().double(), dense, rtol=1e-5, atol=1e-5)


def gaussian_sum(x, y, b, **options):
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    return ((-((x_i - y_j) ** 2).sum(-1)).exp() * b_j).sum(1, **options)


def test_cpu_autocast_with_ranges():
    autocast_with_ranges("cpu")
