"""The formula layer: an array-library-free IR for symbolic reductions.

* :mod:`.nodes`       -- immutable formula nodes (``Var``, ``Const``, ``Zero``...);
* :mod:`.optable`     -- the op table's record (:class:`OpDef`) and registry (no rules);
* :mod:`.ops`         -- the rules of the built-in ops (dimension, derivative, reference);
* :mod:`.algebra`     -- smart constructors with local simplification;
* :mod:`.composite`   -- KeOps sugar (SqDist, Norm2, WeightedSqNorm...);
* :mod:`.derivative`  -- ``grad`` (adjoint) and ``diff`` (directional derivative);
* :mod:`.simplify`    -- the simplification pass;
* :mod:`.reductions`  -- Sum, LogSumExp, Min, ArgKMin... (init/tile/combine/finalize);
* :mod:`.spec`        -- :class:`ReductionSpec`, what backends evaluate;
* :mod:`.reduction_grads` -- gradients of reductions as reductions;
* :mod:`.parser`      -- the KeOps formula-string language;
* :mod:`.evaluate`    -- dense evaluation through the op table.

Nothing here imports NumPy, torch or any backend.
"""

from .derivative import diff, grad
from .nodes import CAT_I, CAT_J, CAT_P, Const, Leaf, Node, Var, Zero, variables
from .ops import OPS, OpDef, public_ops, register_op
from .reductions import REDUCTIONS, get_reduction
from .simplify import simplify
from .spec import ReductionSpec

__all__ = [
    "CAT_I",
    "CAT_J",
    "CAT_P",
    "Const",
    "Leaf",
    "Node",
    "OPS",
    "OpDef",
    "REDUCTIONS",
    "ReductionSpec",
    "Var",
    "Zero",
    "diff",
    "get_reduction",
    "grad",
    "public_ops",
    "register_op",
    "simplify",
    "variables",
]
