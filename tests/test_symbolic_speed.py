"""The symbolic layer's speed and robustness: hash-consed nodes (equality is identity), gradients
of big formulas built fast, and formulas of 10,000 nested nodes evaluated and differentiated
without RecursionError on every engine."""

from __future__ import annotations

import pickle
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from polykeops.backends.cpu import generic
from polykeops.formula import algebra as A
from polykeops.formula import composite as C
from polykeops.formula.nodes import CAT_I, CAT_J, Const, Node, Var, walk
from polykeops.formula.reduction_grads import sum_like_gradient
from polykeops.formula.spec import ReductionSpec
from polykeops.torch import LazyTensor, Vi, Vj


def test_nodes_are_hash_consed():
    x, y = Var(0, 3, CAT_I), Var(1, 3, CAT_J)
    a = A.node("Exp", C.sqdist(x, y))
    b = A.node("Exp", C.sqdist(Var(0, 3, CAT_I), Var(1, 3, CAT_J)))
    assert a is b and a == b and hash(a) == hash(b)
    assert a != A.node("Exp", C.sqdist(y, x))
    # parameters are compared with their types
    assert Const(Fraction(1, 2)) is not Const(0.5)
    assert Const(Fraction(1, 2)) is Const(Fraction(2, 4))
    assert Node("Round", (x,), (2,)) is not Node("Round", (x,), (3,))
    # pickling gives back the very same node
    assert pickle.loads(pickle.dumps(a)) is a


def test_equality_of_big_dags_is_constant_time():
    """Two separately built copies of a DAG with 2**60 paths compare in no time."""

    def build():
        f = Var(0, 1, CAT_I)
        for _ in range(60):
            f = A.add(A.node("Sin", f), A.node("Cos", f))
        return f

    t0 = time.perf_counter()
    assert build() == build()
    assert time.perf_counter() - t0 < 1.0


def _tensordot_problem(m=4, n=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, 2, 3, 2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, 2, 4, 2, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y


def test_tensordot_gradient_is_fast_and_right():
    """pykeops' permuted keops_tensordot (dimensions 96 and 288): its gradients took ~50 s to
    build when node equality recursed; now well under a second, and equal to torch's."""
    x, y = _tensordot_problem()
    m, n = x.shape[0], y.shape[0]
    contfa, contfb, perm = (4, 0, 2), (1, 4, 2), (4, 3, 2, 0, 1)
    X = LazyTensor(x.reshape(m, 1, 96))
    Y = LazyTensor(y.reshape(1, n, 288))
    F = X.keops_tensordot(Y, x.shape[1:], y.shape[1:], contfa, contfb, perm)
    out = F.sum_reduction(dim=1, backend="reference")
    dense = torch.tensordot(x, y, dims=([c + 1 for c in contfa], [c + 1 for c in contfb]))
    # dense: (m, kept a..., n, kept b...) -> (m, n, kept...), summed over n, then permuted
    dense = dense.permute(0, 3, 1, 2, 4, 5, 6).sum(1)
    inv = np.argsort(perm)
    dense = dense.permute(0, *[int(k) + 1 for k in inv]).reshape(m, -1)
    torch.testing.assert_close(out, dense)
    e = torch.randn_like(out)
    t0 = time.perf_counter()
    gx, gy = torch.autograd.grad(out, (x, y), e)
    elapsed = time.perf_counter() - t0
    rx, ry = torch.autograd.grad(dense, (x, y), e)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)
    assert elapsed < 10.0  # was about 50 s; the benchmark measures it precisely


def test_gradient_of_a_1000_node_formula_builds_fast():
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    f = A.sub(x, y)
    for k in range(1000):
        f = A.node(("Sin", "Cos", "Tanh")[k % 3], f)
    assert len(list(walk(f))) > 1000
    spec = ReductionSpec(reduction="Sum", formulas=(f,), variables=(x, y), axis=1)
    t0 = time.perf_counter()
    sum_like_gradient(spec, 0)
    assert time.perf_counter() - t0 < 2.0  # ~0.05 s on an idle core; generous for shared CI


@pytest.fixture(params=["reference", "cpu-generic", "cpu-auto"])
def engine(request, monkeypatch):
    if request.param == "reference":
        return "reference"
    if not generic.available()[0]:
        pytest.skip("generic engine not built")
    monkeypatch.setenv("POLYKEOPS_JIT", "off" if request.param == "cpu-generic" else "auto")
    return "cpu"


def test_10000_nested_nodes(engine):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None].requires_grad_(True)
    y = torch.linspace(0, 2, 7, dtype=torch.float64)[:, None]
    F, f = Vi(x) - Vj(y), x - y.T
    for k in range(10_000):
        if k % 2:
            F, f = F.sin(), f.sin()
        else:
            F, f = F.cos(), f.cos()
    assert len(list(walk(F.formula))) > 10_000
    out = F.sum(dim=1, backend=engine)
    torch.testing.assert_close(out, f.sum(1, keepdim=True))
    (g,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad(f.sum(), x)
    torch.testing.assert_close(g, g2)
    assert len(F.formula_string()) > 10_000


# -- logsumexp gradients from the stable state (as pykeops) ----------------------------------


def _lse_problem(dtype, weighted):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g).to(dtype).requires_grad_(True)
    y = torch.randn(300, 3, generator=g).to(dtype)
    w = (torch.rand(300, 2, generator=g) + 0.5).to(dtype)
    F = -Vi(x).sqdist(Vj(y)) * 10  # |LSE| up to ~60: its float32 rounding is ~4e-6
    return x, F, (Vj(w) if weighted else None)


@pytest.mark.parametrize("backend, weighted, jit", [
    ("reference", False, "off"), ("reference", True, "off"), ("cpu", False, "off"), ("cpu", False, "sync"),
    ("cpu", True, "sync"),
])
def test_float32_logsumexp_gradient_accuracy(backend, weighted, jit, monkeypatch):
    """Max abs error of the float32 gradient vs float64: 7.0e-5 (3.5e-5 weighted) when the
    backward shifted by the rounded float32 output; pykeops reaches 5.9e-6 unweighted, the
    reference backend 5.5e-6 (1.5e-5 weighted), the generic CPU engine 1.8e-5 (its own exp and
    SqDist roundings dominate there).  The specialised kernels (``sync``) reached 4.6e-5 while
    they were compiled with floating-point contraction: the compiler fused the forward's and the
    gradient's ``F`` differently into their surroundings, so the gradient's weight
    ``exp(F - m - log s)`` was off by the rounding of ``F`` (about ``|F| * 6e-8``); now 9.1e-6
    (weighted: 6.4e-5 then, 2.6e-5 now)."""
    monkeypatch.setenv("POLYKEOPS_JIT", jit)
    bound = {("reference", False, "off"): 8e-6, ("reference", True, "off"): 2e-5, ("cpu", False, "off"): 3e-5,
             ("cpu", False, "sync"): 1.2e-5, ("cpu", True, "sync"): 3.5e-5}[backend, weighted, jit]
    res = {}
    for dtype in (torch.float32, torch.float64):
        x, F, w = _lse_problem(dtype, weighted)
        out = F.logsumexp(dim=1, weight=w, backend=backend)
        (g,) = torch.autograd.grad(out.sum(), x)
        res[dtype] = (out, g)
    assert (res[torch.float32][0].double() - res[torch.float64][0]).abs().max() < 1e-5
    err = (res[torch.float32][1].double() - res[torch.float64][1]).abs().max()
    assert err < bound, float(err)


@pytest.mark.parametrize("weighted", [False, True])
def test_logsumexp_second_order_from_the_stable_state(weighted):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(31, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    w = torch.rand(40, 2, generator=g, dtype=torch.float64) + 0.5
    F = -Vi(x).sqdist(Vj(y))
    out = F.logsumexp(dim=1, weight=Vj(w) if weighted else None, backend="reference")
    d = -((x[:, None] - y[None]) ** 2).sum(-1)
    if weighted:
        ref = torch.logsumexp(d[:, :, None] + torch.log(w)[None], dim=1)
    else:
        ref = torch.logsumexp(d, dim=1, keepdim=True)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((ref**2).sum(), x, create_graph=True)
    torch.testing.assert_close(g1, g2)
    (h1,) = torch.autograd.grad(g1.sin().sum(), x)
    (h2,) = torch.autograd.grad(g2.sin().sum(), x)
    torch.testing.assert_close(h1, h2)
