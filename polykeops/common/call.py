"""From user arrays to a :class:`~polykeops.backends.reduction_call.ReductionCall` and back.

:func:`run_spec` is the one way from the front end to the backends, for
LazyTensor reductions, ``Genred`` and ``KernelSolve``: it checks the arguments
against the spec (shapes, batch broadcasting, dtypes, devices, ranges), builds
the call (canonical spec, sizes, oriented ranges, the backend request parsed
once), hands it to the array library's glue (``tools.evaluate``: a plain
dispatch, or torch's autograd), and shapes the outputs as pykeops returns them.
"""

from __future__ import annotations

from ..backends.dispatch import dispatch
from ..backends.ranges import ranges_error
from ..backends.reduction_call import ReductionCall
from ..backends.request import BackendRequest
from ..errors import DeviceError, DTypeError, FormulaError, ShapeError
from ..formula.nodes import CAT_I, CAT_J, CAT_P, Node
from ..formula.spec import ReductionSpec


def signature_sizes(tools, spec: ReductionSpec, arrays, leaves=None):
    """``[(variable, n, batch, array)]`` for ``arrays`` matching ``spec.variables``.

    The last ``len(leaves)`` arrays belong to LazyTensor leaves (sizes known);
    the others are in Genred layout: ``(*batch, n, dim)`` for i- and
    j-variables, ``(*batch, dim)`` for parameters.
    """
    infos = []
    first_leaf = len(spec.variables) - (len(leaves) if leaves is not None else 0)
    for pos, (v, a) in enumerate(zip(spec.variables, arrays)):
        if pos >= first_leaf:
            leaf = leaves[pos - first_leaf]
            infos.append((v, None if leaf.is_scalar else leaf.n, leaf.batch, a))
            continue
        if isinstance(a, (float, tuple)):  # a Python scalar or list parameter of a LazyTensor
            infos.append((v, None, (), a))
            continue
        if not tools.is_array(a):
            raise ShapeError(
                f"argument {pos} ({describe_variable(v)}) must be a {tools.array_kind} array, "
                f"got {type(a).__name__}"
            )
        shape = tuple(tools.shape(a))
        if 0 in shape:
            raise ShapeError(f"argument {pos} ({describe_variable(v)}) is empty: shape {shape}")
        if v.cat == CAT_P:
            if len(shape) < 1:
                raise ShapeError(
                    f"argument {pos} ({describe_variable(v)}) must be at least 1-D, got a scalar"
                )
            n, batch, dim = None, shape[:-1], shape[-1]
        else:
            if len(shape) < 2:
                raise ShapeError(
                    f"argument {pos} ({describe_variable(v)}) must have shape (..., n, {v.dim}), got {shape}"
                )
            n, batch, dim = shape[-2], shape[:-2], shape[-1]
        if dim != v.dim:
            raise ShapeError(
                f"argument {pos} ({describe_variable(v)}) has vector dimension {dim} (shape {shape}), "
                f"expected {v.dim}"
            )
        infos.append((v, n, batch, a))
    return infos


def describe_variable(v: Node, complex_dim: bool = False) -> str:
    """``Vi(0,3)``-style name of a spec variable, for error messages."""
    dim = v.dim // 2 if complex_dim else v.dim
    return f"{ {CAT_I: 'Vi', CAT_J: 'Vj', CAT_P: 'Pm'}[v.cat]}({v.index}, {dim})".replace(" ", "")


def run_spec(tools, spec: ReductionSpec, arrays, backend=None, leaves=None, out=None, shape_hint=None,
             ranges=None, device_id=None):
    """Evaluate ``spec`` (any axis) on user arrays; returns arrays shaped as pykeops does.

    ``backend`` and ``device_id`` are pykeops' arguments (or ``backend`` is an
    already parsed :class:`~polykeops.backends.request.BackendRequest`).

    ``ranges`` is pykeops' block-sparse 6-tuple
    ``(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)``.

    ``shape_hint`` = ``(M, N, batch)`` of the LazyTensor, used where simplification
    removed every variable of an axis (``x_i * 0 + y_j`` still has M rows).
    """
    call, normalised = prepare_call(tools, spec, arrays, backend, leaves, shape_hint, ranges, device_id)
    if normalised:
        outputs = tools.evaluate(call, normalised)
    else:  # the formula simplified to a constant: no array says where to compute
        host_ranges = None if call.ranges is None else tuple(tools.to_numpy(r) for r in call.ranges)
        outputs = tuple(tools.from_numpy(o) for o in dispatch(call.on_host(host_ranges), []))
    return finish_outputs(tools, spec, outputs, out)


def prepare_call(tools, spec: ReductionSpec, arrays, backend=None, leaves=None, shape_hint=None,
                 ranges=None, device_id=None):
    """``(call, arguments)``: the :class:`ReductionCall` of ``spec`` on user arrays (sizes and
    batch shapes checked, ranges validated, backend request parsed) and the arguments a backend
    receives (one per variable of ``spec``: dtype, layout and batch dimensions normalised).
    The parameters are :func:`run_spec`'s."""
    infos = signature_sizes(tools, spec, arrays, leaves)
    hint_i, hint_j, hint_batch = shape_hint if shape_hint is not None else (None, None, ())
    sizes = {CAT_I: None, CAT_J: None}
    for v, n, _, _ in infos:
        if v.cat in sizes and n is not None:
            if sizes[v.cat] is not None and sizes[v.cat] != n:
                axis_name = "M (i)" if v.cat == CAT_I else "N (j)"
                raise ShapeError(
                    f"variables indexed by {axis_name[-2]} have different sizes {sizes[v.cat]} and {n} "
                    f"(argument {v.index}, {describe_variable(v)})"
                )
            sizes[v.cat] = n
    ni = sizes[CAT_I] if sizes[CAT_I] is not None else (hint_i or 1)
    nj = sizes[CAT_J] if sizes[CAT_J] is not None else (hint_j or 1)
    nbatch = max([len(b) for _, _, b, _ in infos] + [len(hint_batch)])
    batch = [1] * (nbatch - len(hint_batch)) + list(hint_batch)
    for v, _, b, _ in infos:
        padded = (1,) * (nbatch - len(b)) + tuple(b)
        for pos, (x, y) in enumerate(zip(batch, padded)):
            if x != y and 1 not in (x, y):
                raise ShapeError(
                    f"batch dimensions do not broadcast: argument {v.index} ({describe_variable(v)}) "
                    f"has batch shape {tuple(b)}, others {tuple(batch)}"
                )
            batch[pos] = max(x, y)
    batch = tuple(batch)
    red_n = nj if spec.axis == 1 else ni
    if spec.k is not None and spec.k > red_n:
        raise ShapeError(
            f"{spec.reduction}: K = {spec.k} is larger than the number of reduced elements {red_n}"
        )
    normalised = []
    for v, n, b, a in infos:
        padded = (1,) * (nbatch - len(b)) + tuple(b)
        if isinstance(a, (float, tuple)):
            normalised.append(tools.scalar_array(a, spec.dtype, like=_first_array(tools, arrays),
                                                 shape=padded + (v.dim,)))
        elif v.cat == CAT_P:
            normalised.append(tools.as_arg(a, padded + (v.dim,), spec.dtype))
        else:
            normalised.append(tools.as_arg(a, padded + (n, v.dim), spec.dtype))
    if ranges is not None:
        ranges = check_ranges(tools, ranges, ni, nj, batch)
    devices = sorted({tools.device_name(a) for a in normalised})
    if len(devices) > 1:
        raise DeviceError(f"the arguments of {spec} are on different devices: {devices}")
    call = ReductionCall.of(spec, ni, nj, ranges=ranges, batch_shape=batch,
                            request=BackendRequest.parse(backend, device_id), array_kind=tools.array_kind,
                            device=devices[0].split(":")[0] if devices else "cpu")
    return call, normalised


def _first_array(tools, arrays):
    for a in arrays:
        if tools.is_array(a):
            return a
    return None


def finish_outputs(tools, spec: ReductionSpec, outputs, out=None):
    """Reshape backend outputs as pykeops returns them (K-reductions get a K axis)."""
    res = []
    for o in outputs:
        if spec.k is not None:
            shape = tools.shape(o)
            d = shape[-1] // spec.k
            new = shape[:-1] + ((spec.k,) if d == 1 else (spec.k, d))
            o = tools.reshape(o, new)
        res.append(o)
    if out is not None:
        if len(res) != 1:
            raise FormulaError(
                f"out= is only supported for reductions with one output ({spec.reduction} has {len(res)})"
            )
        check_out(tools, out, res[0], spec)
        tools.copy_into(out, res[0])
        return out
    return res[0] if len(res) == 1 else tuple(res)


def check_out(tools, out, res, spec) -> None:
    """``out=`` must be an array of the result's kind, shape and dtype (no silent rounding)."""
    what = f"out= of the {spec.reduction} reduction"
    if not tools.is_array(out):
        raise ShapeError(f"{what} must be a {tools.array_kind} array, got {type(out).__name__}")
    want, got = tuple(tools.shape(res)), tuple(tools.shape(out))
    if want != got:
        raise ShapeError(f"{what} has shape {got}; the result has shape {want}")
    dt_out, dt_res = str(out.dtype).replace("torch.", ""), str(res.dtype).replace("torch.", "")
    if dt_out != dt_res:
        raise DTypeError(
            f"{what} has dtype {dt_out}; the result has dtype {dt_res}: pass an array of dtype "
            f"{dt_res} (polykeops never rounds into out= silently)"
        )
    if tools.device_name(out) != tools.device_name(res):
        raise DeviceError(f"{what} is on {tools.device_name(out)}; the result is on {tools.device_name(res)}")


def check_ranges(tools, ranges, ni: int, nj: int, batch: tuple) -> tuple:
    """Validate pykeops' block-sparse 6-tuple; returns it with int64 arrays."""
    names = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")
    if not isinstance(ranges, (tuple, list)) or len(ranges) != 6:
        raise ShapeError(
            "ranges must be the 6-tuple (ranges_i, slices_i, redranges_j, ranges_j, slices_j, "
            "redranges_i), as built by polykeops.torch.cluster.from_matrix"
        )
    out = []
    for name, r in zip(names, ranges):
        if not tools.is_array(r):
            raise ShapeError(
                f"ranges: {name} must be a {tools.array_kind} integer array, got {type(r).__name__}"
            )
        out.append(tools.as_int64(r, name))
    nb = len(batch)
    for k, (name, r) in enumerate(zip(names, out)):
        shape = tools.shape(r)
        core = 1 if k in (1, 4) else 2
        if len(shape) not in (core, core + nb) or (core == 2 and shape[-1] != 2):
            raise ShapeError(
                f"ranges: {name} has shape {shape}; expected {'(C,)' if core == 1 else '(C, 2)'}"
                f"{' with optional leading batch dimensions ' + str(batch) if nb else ''}"
            )
    for rx, sx, label in ((out[0], out[1], "i"), (out[3], out[4], "j")):
        if tools.shape(rx)[-2] != tools.shape(sx)[-1]:
            raise ShapeError(f"ranges: ranges_{label} and slices_{label} have different lengths")
    # the values, read once on the host from the user's arrays (under torch.func transforms the
    # results of torch ops on them are wrapped tensors without storage)
    problem = ranges_error(ranges, ni, nj)
    if problem is not None:
        raise ShapeError(f"ranges: {problem}")
    return tuple(out)

