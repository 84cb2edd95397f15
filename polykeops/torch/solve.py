"""Differentiable conjugate-gradient solves: ``a = (alpha I + K)^{-1} b``.

Backward (K symmetric): ``u = (alpha I + K)^{-1} g``; then ``db = u``,
``dalpha = -<u, a>`` and, for every tensor the kernel depends on, the gradient
of ``-sum_i u_i (K a)_i`` (a reduction, differentiated by autograd).
"""

from __future__ import annotations

import torch

from ..common.solve import conjugate_gradient, kernel_operator


class _KernelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, b, alpha, *leaf_tensors):
        lazy, tol, max_iter, backend, options = config
        with torch.no_grad():
            a = conjugate_gradient(
                kernel_operator(lazy, alpha, backend, **options), b, tol=tol, max_iter=max_iter,
                sqrt=torch.sqrt,
            )
        ctx.config = config
        ctx.save_for_backward(a, alpha, *leaf_tensors)
        return a

    @staticmethod
    def backward(ctx, g):
        lazy, tol, max_iter, backend, options = ctx.config
        a, alpha, *leaf_tensors = ctx.saved_tensors
        with torch.no_grad():
            u = conjugate_gradient(
                kernel_operator(lazy, alpha, backend, **options), g.contiguous(), tol=tol,
                max_iter=max_iter, sqrt=torch.sqrt,
            )
        grad_alpha = -(u * a).sum() if ctx.needs_input_grad[2] else None
        grads = [None] * len(leaf_tensors)
        wanted = [i for i, t in enumerate(leaf_tensors) if ctx.needs_input_grad[3 + i]]
        if wanted:
            with torch.enable_grad():
                ka = kernel_operator(lazy, 0, backend, **options)(a.detach())
                total = -(u.detach() * ka).sum()
                found = torch.autograd.grad(
                    total, [leaf_tensors[i] for i in wanted], allow_unused=True
                )
            for i, gr in zip(wanted, found):
                grads[i] = gr
        return (None, u, grad_alpha, *grads)


def differentiable_solve(lazy, b, alpha, tol, max_iter, backend, options):
    leaf_tensors = [leaf.array for leaf in lazy.leaves.values() if isinstance(leaf.array, torch.Tensor)]
    alpha_t = torch.as_tensor(alpha, dtype=b.dtype, device=b.device)
    return _KernelSolve.apply((lazy, tol, max_iter, backend, options), b, alpha_t, *leaf_tensors)
