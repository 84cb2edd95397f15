"""Entropic optimal transport with log-domain Sinkhorn iterations on symbolic cost matrices.

Two point clouds, x_i (N points, weights a_i) and y_j (M points, weights b_j), each of total
mass 1, the cost C_ij = |x_i - y_j|^2 / 2 and a temperature eps. The entropic transport cost

    OT_eps(a, b) = min_{pi >= 0, pi 1 = a, pi^T 1 = b}  <pi, C> + eps KL(pi | a b^T)

has the dual potentials (f, g), the fixed point of the Sinkhorn iterations, written in the
log domain so that nothing overflows however small eps is:

    f_i = -eps log sum_j exp(log b_j + (g_j - C_ij) / eps)
    g_j = -eps log sum_i exp(log a_i + (f_i - C_ij) / eps)

and then pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) and OT_eps = <a, f> + <b, g>.
Each update is a ``logsumexp`` reduction of a symbolic (N, M) LazyTensor: over j
(``dim=1``) for f, over i (``dim=0``) for g, so the N x M matrices never exist.

The gradient with respect to the source points: by the envelope theorem, at the fixed point
d OT_eps / d x_i = sum_j pi_ij (x_i - y_j) = a_i x_i - sum_j pi_ij y_j. We get it with
torch autograd from one last, differentiable, f update with g held fixed:
OT_eps = <a, f(x)> + <b, g>, backpropagated through the ``logsumexp`` reduction.

The script checks itself: on a smaller problem, the potentials, the cost and the gradient
against the same iterations run with dense float64 torch matrices (``torch.logsumexp``) and
torch autograd; at full size, the gradient on a subset of the rows against the formula
a_i x_i - sum_j pi_ij y_j evaluated with dense float64 torch, and the marginals of the plan.
It raises AssertionError if they disagree.

    python examples/sinkhorn.py           # 20,000 source and 15,000 target points
    python examples/sinkhorn.py --small   # a quick run
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from polykeops.torch import Vi, Vj


def make_clouds(n, m, generator):
    """A noisy ring (source) and a two-blob mixture (target) in R^2."""
    t = 2 * math.pi * torch.rand(n, generator=generator)
    x = torch.stack([torch.cos(t), torch.sin(t)], 1) + 0.1 * torch.randn(n, 2, generator=generator)
    y = 0.3 * torch.randn(m, 2, generator=generator)
    y[: m // 2, 0] += 1.0
    y[m // 2 :, 0] -= 0.5
    return x, y


def eps_schedule(x, y, eps, scaling=0.5):
    """epsilon-scaling: temperatures from the squared diameter of the data down to eps.

    Sinkhorn converges in O(diameter^2 / eps) iterations from scratch; annealing eps, with each
    temperature starting from the previous potentials, needs far fewer in all.
    """
    lo = torch.minimum(x.min(0).values, y.min(0).values)
    hi = torch.maximum(x.max(0).values, y.max(0).values)
    e = float(((hi - lo) ** 2).sum())
    schedule = []
    while e > eps:
        schedule.append(e)
        e *= scaling
    return schedule


def sinkhorn_lazy(x, y, eps, n_iter, tol=1e-5, scaling=True):
    """Log-domain Sinkhorn with LazyTensors; returns (f, g, number of iterations at eps).

    With ``scaling``, one iteration at each temperature of :func:`eps_schedule` first.
    """
    n, m = len(x), len(y)
    log_a = torch.full((n, 1), -math.log(n), dtype=x.dtype)  # uniform weights, log domain
    log_b = torch.full((m, 1), -math.log(m), dtype=x.dtype)
    C_ij = Vi(x).sqdist(Vj(y)) / 2  # symbolic (N, M) cost matrix
    g = torch.zeros(m, 1, dtype=x.dtype)
    for e in eps_schedule(x, y, eps) if scaling else []:
        # eps is a Python float: a parameter of the formula, so no new kernel per temperature
        f = -e * (Vj(log_b + g / e) - C_ij / e).logsumexp(dim=1)
        g = -e * (Vi(log_a + f / e) - C_ij / e).logsumexp(dim=0)
    for it in range(1, n_iter + 1):
        # f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps): a reduction over j (dim=1)
        f = -eps * (Vj(log_b + g / eps) - C_ij / eps).logsumexp(dim=1)
        # g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps): a reduction over i (dim=0)
        g_new = -eps * (Vi(log_a + f / eps) - C_ij / eps).logsumexp(dim=0)
        change = (g_new - g).abs().max().item()
        g = g_new
        if change < tol:
            return f, g, it
    return f, g, n_iter


def ot_cost_lazy(x, y, g, eps):
    """OT_eps = <a, f(x)> + <b, g>, differentiable in x (f recomputed from the fixed g)."""
    n, m = len(x), len(y)
    log_b = torch.full((m, 1), -math.log(m), dtype=x.dtype)
    C_ij = Vi(x).sqdist(Vj(y)) / 2
    f = -eps * (Vj(log_b + g / eps) - C_ij / eps).logsumexp(dim=1)
    return f.sum() / n + g.sum() / m


def sinkhorn_dense(x, y, eps, n_iter):
    """The same iterations with dense float64 matrices; returns (f, g, OT_eps, d OT_eps / dx)."""
    x = x.double().requires_grad_()
    y = y.double()
    n, m = len(x), len(y)
    log_a = torch.full((n, 1), -math.log(n), dtype=x.dtype)
    log_b = torch.full((m, 1), -math.log(m), dtype=x.dtype)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2  # dense (N, M)
    Cd = C.detach()
    g = torch.zeros(m, 1, dtype=x.dtype)
    for _ in range(n_iter):
        f = -eps * torch.logsumexp(log_b.T + (g.T - Cd) / eps, dim=1, keepdim=True)
        g = -eps * torch.logsumexp(log_a + (f - Cd) / eps, dim=0).view(m, 1)
    f_x = -eps * torch.logsumexp(log_b.T + (g.T - C) / eps, dim=1, keepdim=True)  # f(x), g fixed
    cost = f_x.sum() / n + g.sum() / m
    (grad,) = torch.autograd.grad(cost, [x])
    return f, g, cost.detach(), grad


def plan_rows(x, y, f, g, eps, rows):
    """Rows of the transport plan pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), dense float64."""
    xs, y, f, g = x[rows].double(), y.double(), f[rows].double(), g.double()
    C = ((xs[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2
    return torch.exp((f + g.T - C) / eps) / (len(x) * len(y))


def check_small_problem(x, y, eps, n_ref, n_iter):
    """LazyTensor Sinkhorn against the dense float64 iterations on n_ref points of each cloud."""
    xs, ys = x[:n_ref].clone(), y[:n_ref].clone()
    f, g, _ = sinkhorn_lazy(xs, ys, eps, n_iter, tol=0.0, scaling=False)  # exactly n_iter iterations
    xg = xs.clone().requires_grad_()
    cost = ot_cost_lazy(xg, ys, g, eps)
    (grad,) = torch.autograd.grad(cost, [xg])
    f_d, g_d, cost_d, grad_d = sinkhorn_dense(xs, ys, eps, n_iter)
    # potentials are O(1) and float32 is ~1e-7 relative: after many iterations, ~1e-5 abs.
    err_f = (f.double() - f_d).abs().max().item()
    err_g = (g.double() - g_d).abs().max().item()
    err_cost = abs(cost.item() - cost_d.item())
    err_grad = ((grad.double() - grad_d).norm() / grad_d.norm()).item()
    assert err_f < 1e-4 and err_g < 1e-4, (
        f"Sinkhorn potentials differ from the dense ones: {err_f:.3g}, {err_g:.3g}"
    )
    assert err_cost < 1e-5, f"Sinkhorn cost differs from the dense one by {err_cost:.3g}"
    assert err_grad < 1e-4, f"Sinkhorn gradient differs from the dense autograd one (relative {err_grad:.3g})"
    return err_f, err_g, err_cost, err_grad


def main(n=20_000, m=15_000, eps=0.01, n_iter=500, n_ref=600, seed=0):
    g0 = torch.Generator().manual_seed(seed)
    x, y = make_clouds(n, m, g0)
    print(f"Sinkhorn: N = {n:,} source points, M = {m:,} target points in R^2, eps = {eps}")

    t0 = time.perf_counter()
    f, g, iters = sinkhorn_lazy(x, y, eps, n_iter)
    t1 = time.perf_counter()
    x_grad = x.clone().requires_grad_()
    cost = ot_cost_lazy(x_grad, y, g, eps)
    (grad,) = torch.autograd.grad(cost, [x_grad])
    t2 = time.perf_counter()
    assert iters < n_iter, f"Sinkhorn did not converge in {n_iter} iterations"

    # full size: the gradient and the marginals on some rows, from the plan in dense float64
    rows = torch.randperm(n, generator=g0)[:300]
    f_last = -eps * (Vj(g / eps - math.log(m)) - Vi(x).sqdist(Vj(y)) / (2 * eps)).logsumexp(dim=1)
    pi = plan_rows(x, y, f_last, g, eps, rows)  # (300, M)
    grad_ref = x[rows].double() / n - pi @ y.double()  # a_i x_i - sum_j pi_ij y_j
    err_grad = ((grad[rows].double() - grad_ref).norm() / grad_ref.norm()).item()
    assert err_grad < 1e-3, (
        f"Sinkhorn gradient: relative error {err_grad:.3g} against sum_j pi_ij (x_i - y_j)"
    )
    err_rows = (pi.sum(1) * n - 1).abs().max().item()
    assert err_rows < 1e-3, f"Sinkhorn plan: row marginals off by {err_rows:.3g} (relative)"
    transported = (x[rows].double() - n * (pi @ y.double())).norm(dim=1).mean().item()

    errors = check_small_problem(x, y, eps, n_ref, n_iter=50)

    n_anneal = len(eps_schedule(x, y, eps))
    print(
        f"  {n_anneal} annealing + {iters} iterations at eps (2 logsumexp reductions each): "
        f"{t1 - t0:6.2f} s ({1e3 * (t1 - t0) / (n_anneal + iters):.1f} ms / iteration)"
    )
    print(f"  OT_eps = {cost.item():.6f}, gradient w.r.t. x by autograd: {t2 - t1:6.3f} s")
    print(f"  mean displacement |x_i - T(x_i)| on checked rows: {transported:.4f}")
    print(
        f"  gradient vs dense a_i x_i - sum_j pi_ij y_j on 300 rows: relative error {err_grad:.1e}; "
        f"row marginals {err_rows:.1e}"
    )
    print(
        f"  vs dense float64 Sinkhorn on {n_ref} points: potentials {max(errors[:2]):.1e}, "
        f"cost {errors[2]:.1e}, gradient {errors[3]:.1e}"
    )
    return cost.item(), grad


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on 3,000 and 2,000 points")
    args = parser.parse_args()
    if args.small:
        main(n=3_000, m=2_000, n_ref=400)
    else:
        main()
