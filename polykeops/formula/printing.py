"""Formulas as text, in the KeOps formula language (parsable back)."""

from __future__ import annotations

from fractions import Fraction

from .nodes import CATEGORY_NAMES, Node, walk

_INFIX = {"Add": "+", "Subtract": "-", "Mult": "*", "Divide": "/"}


def _const_text(value, dim: int) -> str:
    if isinstance(value, Fraction):
        text = f"IntCst({value.numerator})/IntCst({value.denominator})"
        if dim == 1:
            return f"({text})"
        return f"SumT({text},{dim})"
    if isinstance(value, int):
        text = f"IntCst({value})"
    else:
        text = f"Cst({value!r})"
    return text if dim == 1 else f"SumT({text},{dim})"


def to_string(node: Node, names: dict[Node, str] | None = None) -> str:
    """Text of ``node`` in KeOps syntax; ``names`` may map variables to aliases."""
    text: dict[Node, str] = {}
    for n in walk(node):
        if names and n in names:
            text[n] = names[n]
        elif n.op == "Var":
            i, d, c = n.params
            text[n] = f"Var({i},{d},{c})"
        elif n.op == "Leaf":
            uid, d, c = n.params
            text[n] = f"{CATEGORY_NAMES[c]}[{uid}]({d})"
        elif n.op == "Const":
            text[n] = _const_text(n.params[0], n.params[1])
        elif n.op == "Zero":
            text[n] = f"Zero({n.dim})"
        elif n.op in _INFIX:
            a, b = (text[x] for x in n.args)
            text[n] = f"({a}{_INFIX[n.op]}{b})"
        elif n.op == "Minus":
            text[n] = f"(-{text[n.args[0]]})"
        else:
            parts = [text[a] for a in n.args] + [str(p) for p in n.params]
            text[n] = f"{n.op}({','.join(parts)})"
    return text[node]
