"""Differentiable conjugate-gradient solves: ``a = (alpha I + K)^{-1} b``.

``K`` is any symmetric positive linear operator ``v -> K v`` built from
reductions of tensors ``T``.  Backward: ``u = (alpha I + K)^{-1} g``; then
``db = u``, ``dalpha = -<u, a>`` and, for each tensor of ``T``, the gradient of
``-<u, K a>`` (a reduction, differentiated by autograd).
"""

from __future__ import annotations

import torch

from ..common.solve import conjugate_gradient


def _shifted(apply_k, alpha):
    return lambda v: apply_k(v) + alpha * v


class _KernelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, b, alpha, *tensors):
        apply_k, tol, max_iter = config
        with torch.no_grad():
            a = conjugate_gradient(_shifted(apply_k, alpha), b, tol=tol, max_iter=max_iter,
                                   sqrt=torch.sqrt)
        ctx.config = config
        ctx.save_for_backward(a, alpha, *tensors)
        return a

    @staticmethod
    def backward(ctx, g):
        apply_k, tol, max_iter = ctx.config
        a, alpha, *tensors = ctx.saved_tensors
        with torch.no_grad():
            u = conjugate_gradient(_shifted(apply_k, alpha), g.contiguous(), tol=tol,
                                   max_iter=max_iter, sqrt=torch.sqrt)
        grad_alpha = -(u * a).sum() if ctx.needs_input_grad[2] else None
        grads = [None] * len(tensors)
        wanted = [i for i, t in enumerate(tensors) if ctx.needs_input_grad[3 + i]]
        if wanted:
            with torch.enable_grad():
                total = -(u.detach() * apply_k(a.detach())).sum()
                found = torch.autograd.grad(total, [tensors[i] for i in wanted], allow_unused=True)
            for i, gr in zip(wanted, found):
                grads[i] = gr
        return (None, u, grad_alpha, *grads)


def solve_operator(apply_k, tensors, b, alpha, tol, max_iter):
    """``(alpha I + K)^{-1} b``, differentiable in ``b``, ``alpha`` and every tensor of ``tensors``."""
    alpha_t = torch.as_tensor(alpha, dtype=b.dtype, device=b.device)
    unique = list({id(t): t for t in tensors}.values())  # a tensor used twice counts once
    tensors = [t for t in unique if t is not b]
    return _KernelSolve.apply((apply_k, tol, max_iter), b, alpha_t, *tensors)


def differentiable_solve(lazy, b, alpha, tol, max_iter, backend, options):
    from ..common.solve import kernel_operator

    tensors = [leaf.array for leaf in lazy.leaves.values() if isinstance(leaf.array, torch.Tensor)]
    return solve_operator(kernel_operator(lazy, 0, backend, **options), tensors, b, alpha, tol, max_iter)
