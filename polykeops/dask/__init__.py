"""The Dask front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred`` on Dask arrays.

The same API as :mod:`polykeops.numpy`; a reduction returns a **lazy** Dask array whose chunks
along the output axis are the chunks of the input's i-variables (see
:mod:`polykeops.dask.plan`: one task per (i-chunk, j-chunk) returning the reduction's partial
state, a tree combine along j, one finalize per i-chunk)::

    import dask.array as da
    from polykeops.dask import Vi, Vj

    x = da.random.random((1_000_000, 3), chunks=(100_000, 3))
    D = ((Vi(x) - Vj(x)) ** 2).sum(-1)
    idx = D.argKmin(10, dim=1)          # a lazy (1_000_000, 10) int64 Dask array
    idx.compute()                       # the local scheduler, or a distributed Client's workers

Each task evaluates its pair of chunks with the backend the call names (``backend="cuda"``
on GPU workers; the default picks the worker's best backend for its chunks).  NumPy arrays
are accepted where Dask arrays are (one chunk).  :func:`grad` gives the symbolic gradient
of a reduction as a Dask array.  Tune the tree with
``dask.config.set({"polykeops.split_every": k})`` (default 8).

Importing this module imports Dask (``pip install "polykeops[dask]"``); ``import polykeops``
does not.
"""

from __future__ import annotations

import math

from ..common.call import prepare_call
from ..common.complex_lazy_tensor import ComplexSupportMixin
from ..common.frontend import FRONT_END_NAMES, GENERIC_HELPER_NAMES, front_end, generic_helpers
from ..common.lazy_tensor import GenericLazyTensor
from ..common.reduce import _number, _options
from ..errors import FormulaError, NotDifferentiableError, ShapeError
from ..formula.nodes import CAT_P
from ..formula.reduction_grads import lse_spec, sum_like_gradient
from .plan import as_dask, reduce_chunks
from .tools import DaskTools


class LazyTensor(ComplexSupportMixin, GenericLazyTensor):
    """Symbolic wrapper for Dask arrays (see :class:`polykeops.torch.LazyTensor`); reductions
    return lazy Dask arrays."""

    _tools = DaskTools()


ComplexLazyTensor, Vi, Vj, Pm, from_dense, Genred, KernelSolve = front_end(LazyTensor)
generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = generic_helpers(Genred)

_GRADIENT_REDUCTIONS = {  # method name -> (reduction, reduction with a weight)
    "sum": ("Sum", None),
    "logsumexp": ("LogSumExp", "LogSumExpWeight"),
    "lse": ("LogSumExp", "LogSumExpWeight"),
    "sumsoftmaxweight": (None, "SumSoftMaxWeight"),
}


def grad(lazy, wrt, gradin, reduction: str = "sum", dim=None, weight=None, **options):
    """The gradient of ``<gradin, lazy.<reduction>(dim, weight)>`` with respect to ``wrt``: a lazy
    Dask array shaped like ``wrt``.

    ``wrt`` is one of the arrays ``lazy`` was built from (the Dask or NumPy array itself, or the
    LazyTensor ``Vi(x)``/``Vj(x)``/``Pm(p)`` wrapping it); ``gradin`` has the shape of the
    reduction's result.  ``reduction`` is ``"sum"``, ``"logsumexp"`` (``"lse"``) or
    ``"sumsoftmaxweight"`` (needs ``weight``), with the reduction's own options (``backend=``,
    ``ranges=``...).  The gradient is the symbolic one the torch front end's autograd uses
    (:mod:`polykeops.formula.reduction_grads`), itself a reduction planned over the chunks: an
    i-variable's gradient follows the i-chunks, a j-variable's the j-chunks.
    """
    key = reduction.lower()
    if key not in _GRADIENT_REDUCTIONS:
        raise NotDifferentiableError(
            f"grad: reduction {reduction!r} is not one of {sorted(_GRADIENT_REDUCTIONS)} (the selections "
            "min, max, Kmin and the index reductions have no gradient on Dask arrays here)"
        )
    plain, weighted = _GRADIENT_REDUCTIONS[key]
    name = weighted if weight is not None else plain
    if name is None:
        raise FormulaError(f"grad: {reduction} needs {'a weight' if weight is None else 'no weight'}")
    if isinstance(wrt, GenericLazyTensor):
        leaves = list(wrt.leaves.values())
        if wrt.formula.op != "Leaf" or len(leaves) != 1:
            raise FormulaError("grad: wrt must be an array or a LazyTensor made of one array")
        wrt = leaves[0].array
    opts = _options(options)
    red_axis = lazy._reduction_axis(dim, None, f"grad of {reduction}")
    if red_axis is None:
        raise FormulaError("grad: dim must be the axis of a reduction (i or j)")
    lt = lazy
    if weight is not None:
        weight = lazy._lift(weight)
        lt = lazy._new(lazy.formula, weight)
    formulas = [lazy.formula] + ([weight.formula] if weight is not None else [])
    spec, leaves = _number(lt, formulas, name, red_axis, None, opts)
    if lt.placeholders:
        raise FormulaError("grad: the LazyTensor has placeholder variables; build it from arrays")
    found = [pos for pos, leaf in enumerate(leaves) if leaf.array is wrt]
    if not found:
        raise FormulaError("grad: wrt is not one of the arrays the reduced formula depends on")
    p = found[0]
    tools = LazyTensor._tools
    call, args = prepare_call(tools, spec, [leaf.array for leaf in leaves], opts["backend"], leaves,
                              (lt.ni, lt.nj, lt.batch), opts["ranges"], opts["device_id"])
    plan = sum_like_gradient(call.spec, p)
    batch = call.batch_shape
    out_dim = call.spec.outputs()[0].dim
    g = as_dask(gradin)
    want = batch + (call.nx, out_dim)
    if g.size != math.prod(want):
        raise ShapeError(f"grad: gradin has shape {tuple(g.shape)}; the reduction's result has {want}")
    if str(g.dtype) != spec.dtype:
        raise ShapeError(f"grad: gradin has dtype {g.dtype}, the reduction {spec.dtype}")
    extras = []
    for extra in plan.extras:
        if extra == "G":
            extras.append(g.reshape(want))
        elif extra == "OUT":
            extras.append(reduce_chunks(call, args)[0])
        else:  # "LSE"
            extras.append(reduce_chunks(call.with_spec(lse_spec(call.spec)), args)[0])
    res = reduce_chunks(call.gradient(plan.spec), list(args) + extras)[0]
    if plan.sum_rows:
        res = res.sum(-2)
    leaf = leaves[p]
    core = 1 if leaf.cat == CAT_P else 2
    given = (1,) * (len(batch) - len(leaf.batch)) + tuple(leaf.batch)
    summed = tuple(ax for ax, (b, n) in enumerate(zip(given, batch)) if b == 1 and n != 1)
    if summed:
        res = res.sum(axis=summed, keepdims=True)
    assert res.ndim == len(batch) + core
    return res.reshape(tuple(wrt.shape))


__all__ = ["LazyTensor", *FRONT_END_NAMES, *GENERIC_HELPER_NAMES, "grad", "reduce_chunks"]
