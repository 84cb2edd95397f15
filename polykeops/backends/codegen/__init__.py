"""C-family code generation shared by the compiled backends (CPU and CUDA).

:class:`CRenderer` turns formula nodes into C statements; dialects subclass it
and override a few class attributes (scalar types, math function names,
pragmas).  Elementwise ops are rendered by C rules, an open registry
(:func:`register_c_rule`, :data:`C_RULES`).  No C text lives in
:mod:`polykeops.formula`.
"""

from .c_renderer import C_RULES, CRenderer, CRule, RenderedFormula, UnsupportedOpError, register_c_rule

__all__ = ["C_RULES", "CRenderer", "CRule", "RenderedFormula", "UnsupportedOpError", "register_c_rule"]
