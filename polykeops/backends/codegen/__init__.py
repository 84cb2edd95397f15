"""C-family code generation shared by the compiled backends (CPU now, CUDA later).

:class:`CRenderer` turns formula nodes into C statements; dialects subclass it
and override a few class attributes (scalar types, math function names,
function qualifiers, pragmas).  No C text lives in :mod:`polykeops.formula`.
"""

from .c_renderer import CRenderer, RenderedFormula, UnsupportedOpError

__all__ = ["CRenderer", "RenderedFormula", "UnsupportedOpError"]
