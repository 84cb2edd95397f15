"""Gaussian process / kernel ridge regression with a symbolic kernel matrix and a CG solve.

With a Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) of bandwidth sigma, training
points x_j with values y_j and a noise level (ridge) alpha, the posterior mean of a Gaussian
process (equivalently, the kernel ridge regressor) at a point t is

    f(t) = sum_j k(t, x_j) a_j,    where   (K + alpha I) a = y,   K_ij = k(x_i, x_j).

The N x N matrix K is never stored: ``K = (-Pm(gamma) * Vi(x).sqdist(Vj(x))).exp()`` is a
symbolic LazyTensor (gamma = 1 / (2 sigma^2) is a parameter, a 1-element torch tensor), and
``K.solve(y, alpha=alpha)`` runs the conjugate gradient method on ``alpha I + K``, every
iteration being one fused ``K @ p`` reduction. Predictions are ``K_test @ a``, with
``K_test`` the symbolic (N_test, N) kernel matrix.

The solve is differentiable: torch autograd runs a second conjugate gradient solve for the
adjoint system, so the validation error can be differentiated with respect to the bandwidth
sigma *through* the solve: d/dsigma mean((K_val(sigma) @ a(sigma) - y_val)^2) — the gradient
one would follow to tune sigma.

The script checks itself: at full size, the residual |(K + alpha I) a - y| / |y| computed with
a dense float64 torch matrix-vector product (in row chunks); on a subset of the data, the
coefficients, predictions, validation error and its gradient with respect to sigma against a
dense float64 ``torch.linalg.solve``. It raises AssertionError if they disagree.

    python examples/gaussian_process.py           # 10,000 training points
    python examples/gaussian_process.py --small   # a quick run
"""

from __future__ import annotations

import argparse
import time

import torch

from polykeops.torch import Pm, Vi, Vj


def target(x):
    """The function to learn, on the unit square."""
    return torch.sin(6.0 * x[:, :1]) * torch.cos(4.0 * x[:, 1:2]) + 0.5 * x[:, :1]


def make_data(n, n_val, noise, generator):
    x = torch.rand(n, 2, generator=generator)
    y = target(x) + noise * torch.randn(n, 1, generator=generator)
    x_val = torch.rand(n_val, 2, generator=generator)
    return x, y, x_val, target(x_val)


def gp_lazy(x, y, x_val, y_val, sigma, alpha):
    """Coefficients, validation predictions and validation error, with LazyTensors."""
    gamma = (0.5 / sigma**2).view(1)  # differentiable function of sigma
    K = (-Pm(gamma) * Vi(x).sqdist(Vj(x))).exp()  # symbolic (N, N) kernel matrix
    a = K.solve(y, alpha=alpha)  # conjugate gradient on alpha I + K
    K_val = (-Pm(gamma) * Vi(x_val).sqdist(Vj(x))).exp()  # symbolic (N_val, N)
    pred = K_val @ a  # (N_val, 1)
    return a, pred, ((pred - y_val) ** 2).mean()


def gp_dense(x, y, x_val, y_val, sigma, alpha):
    """The same computation with dense float64 torch matrices (the reference)."""
    x, y, x_val, y_val = x.double(), y.double(), x_val.double(), y_val.double()
    gamma = 0.5 / sigma**2
    K = torch.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    a = torch.linalg.solve(K + alpha * torch.eye(len(x), dtype=x.dtype), y)
    K_val = torch.exp(-gamma * ((x_val[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    pred = K_val @ a
    return a, pred, ((pred - y_val) ** 2).mean()


def dense_residual(x, y, a, sigma, alpha, chunk=500):
    """|(K + alpha I) a - y| / |y| with K applied densely in float64, chunk rows at a time."""
    x, y, a = x.double(), y.double(), a.double()
    gamma = 0.5 / float(sigma) ** 2
    r = (
        torch.cat(
            [torch.exp(-gamma * ((xc[:, None, :] - x[None, :, :]) ** 2).sum(-1)) @ a for xc in x.split(chunk)]
        )
        + alpha * a
        - y
    )
    return (r.norm() / y.norm()).item()


def relative_error(u, v):
    u, v = u.detach().double(), v.detach().double()
    return ((u - v).norm() / v.norm()).item()


def check_subset(x, y, x_val, y_val, sigma0, alpha, n_ref):
    """LazyTensor solve + gradient against the dense float64 reference, on n_ref points."""
    xs, ys, xv, yv = x[:n_ref], y[:n_ref], x_val[:n_ref], y_val[:n_ref]
    sigma = torch.tensor(sigma0, requires_grad=True)
    a, pred, loss = gp_lazy(xs, ys, xv, yv, sigma, alpha)
    (g,) = torch.autograd.grad(loss, [sigma])
    sigma_d = torch.tensor(sigma0, dtype=torch.float64, requires_grad=True)
    a_d, pred_d, loss_d = gp_dense(xs, ys, xv, yv, sigma_d, alpha)
    (g_d,) = torch.autograd.grad(loss_d, [sigma_d])
    # float32 data and CG to a relative residual of 1e-6: agreement to ~1e-3 or better
    errors = {
        "coefficients a": relative_error(a, a_d),
        "predictions": relative_error(pred, pred_d),
        "validation error": relative_error(loss, loss_d),
        "d(validation error)/d(sigma)": relative_error(g, g_d),
    }
    for name, err in errors.items():
        assert err < 2e-3, f"Gaussian process, {name}: relative error {err:.3g} against the dense solve"
    return errors


def main(n=10_000, n_val=2_000, sigma=0.1, alpha=0.1, noise=0.3, n_ref=1_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y, x_val, y_val = make_data(n, n_val, noise, g)
    print(
        f"Gaussian process regression: N = {n:,} training points in R^2, {n_val:,} validation "
        f"points, sigma = {sigma}, alpha = {alpha}"
    )

    sigma_t = torch.tensor(sigma, requires_grad=True)
    t0 = time.perf_counter()
    a, pred, loss = gp_lazy(x, y, x_val, y_val, sigma_t, alpha)
    t1 = time.perf_counter()
    (grad_sigma,) = torch.autograd.grad(loss, [sigma_t])
    t2 = time.perf_counter()

    residual = dense_residual(x, y, a.detach(), sigma, alpha)
    assert residual < 1e-4, f"Gaussian process: the CG solution has a dense residual of {residual:.3g}"
    baseline = ((y_val - y.mean()) ** 2).mean().item()  # predicting the mean
    assert loss.item() < 0.1 * baseline, (
        f"Gaussian process: validation error {loss.item():.4g} is not far below the constant "
        f"predictor's {baseline:.4g}"
    )
    errors = check_subset(x, y, x_val, y_val, sigma, alpha, n_ref)

    print(f"  solve (CG) + predictions:   {t1 - t0:7.2f} s")
    print(f"  d/dsigma through the solve: {t2 - t1:7.2f} s")
    print(
        f"  validation MSE {loss.item():.5f} (constant predictor: {baseline:.5f}, "
        f"noise variance of the training values: {noise**2:.3f})"
    )
    print(f"  d(validation MSE)/d(sigma) = {grad_sigma.item():.5f}")
    print(f"  dense float64 residual |(K + alpha I) a - y| / |y| = {residual:.2e}")
    print(
        f"  against a dense float64 solve on {n_ref:,} points: "
        + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    )
    return loss.item(), grad_sigma.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on 1,500 training points")
    args = parser.parse_args()
    if args.small:
        main(n=1_500, n_val=500, n_ref=500)
    else:
        main()
