"""Reduction states of the CUDA kernels: output slices of wide states.

The state code itself (register form: init / update / combine / finalize, and
the partial states of the 2D scheme) is rendered by the shared family renderers
of :mod:`polykeops.backends.codegen.states`.  This module decides how a wide
state is split into *output slices* ``(c0, w)``: components ``[c0, c0 + w)`` of
the formula ``Reduction.component_formula``, few enough for one thread's
registers, each computed by its own kernel.
"""

from __future__ import annotations

from ..codegen.states import State, StateTypes, state_class

__all__ = ["STATE_REGISTERS", "State", "StateTypes", "slices", "sliced_formulas", "state_class"]

#: registers a slice's state may use (per thread) before the output is split into slices
STATE_REGISTERS = 64


def sliced_formulas(spec, c0: int, w: int) -> list:
    """The formulas a slice's kernel computes: the sliced formula and the others whole."""
    from .render import slice_formula

    forms = list(spec.formulas)
    cf = spec.red.component_formula
    if cf is not None:
        forms[cf] = slice_formula(forms[cf], c0, w)
    return forms


def slices(spec) -> list[tuple[int, int]]:
    """The output slices ``(c0, w)``: wide states are split so that one slice fits in registers."""
    dim, per = state_class(spec).slice_plan(spec)
    width = max(1, STATE_REGISTERS // per)
    n = -(-dim // width)
    base, extra = divmod(dim, n)
    out, c0 = [], 0
    for s in range(n):
        w = base + (1 if s < extra else 0)
        out.append((c0, w))
        c0 += w
    return out
