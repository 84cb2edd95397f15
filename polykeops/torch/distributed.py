"""Reductions over variables sharded across ``torch.distributed`` ranks, with autograd.

``sharded(t, group=None)`` marks ``t`` (shape ``(*batch, n, D)``: rows are points) as this
rank's shard of an i- or j-variable whose global value is the concatenation of every rank's
shard in rank order (``torch.tensor_split`` order; shards may differ in length, some may be
empty).  ``Vi(sharded(x))``, ``Vj(sharded(y))`` and ``LazyTensor(sharded(x), axis=0 or 1)``
build LazyTensors as usual; their reductions run on every rank of the group together
(every rank must call them, in the same order, as with any collective):

* a reduction over a sharded axis combines every rank's shard: the j-shards go around a
  ring (``batch_isend_irecv``, the next shard travels while the current one is reduced),
  each rank reduces its own rows against the shard it holds into the reduction's *partial
  state* (:mod:`polykeops.backends.partial_states`), and the states are combined in global
  j order with the reduction's own rule, then finalized.  No rank holds more than its rows,
  two j-shards and one state per row: memory stays linear.  When only j is sharded (the
  rows are whole on every rank), each rank reduces every row against its own j-shard and
  the W states are all-gathered and combined in rank order;
* an output indexed by a sharded axis comes back as this rank's shard (rows); an output
  indexed by an axis that is not sharded is the whole output, the same on every rank;
* argmin / argKmin indices are global (positions in the concatenated variable).

Autograd (:class:`ShardedReduction`): the gradient with respect to this rank's shard is the
corresponding slice of the single-process gradient of the global objective: the sum over the
ranks of each rank's terms on its own rows (sharded outputs, the data-parallel objective),
plus, once, the terms of tensors every rank holds alike (outputs indexed by an axis that is
not sharded, gradients of parameters: every rank computes the same value from them).  It
reuses the symbolic gradient reductions of :mod:`polykeops.formula.reduction_grads`,
evaluated by the same distributed reduction:

* i-variable shard: its rows reduced over all j (ring over j);
* j-variable shard: a reduction over i whose output is indexed by j: the i-side data (the
  rows, the cotangent, the forward output) goes around the ring, each rank accumulating its
  own j-shard's gradient (the ring form of a reduce-scatter);
* parameters and variables that are not sharded while the other axis is: summed over the
  ranks (``all_reduce(SUM)``, itself differentiable);
* Min/Max/KMin values: the gradient at the selected pairs; the selected j rows are fetched
  from their owners around the ring and the j gradients sent back to them the same way.

Every gradient is built from differentiable distributed operations, so higher orders work
(``create_graph=True``): tested to second order for Sum, LogSumExp, SumSoftMaxWeight and
the values of Min and KMin.  Every rank must run the same backward passes (they are
collectives): a rank with no rows still takes part.
Not supported: block-sparse ``ranges``, placeholders, ``torch.func`` transforms (vmap, jvp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from ..backends import partial_states
from ..backends.dispatch import dispatch, dispatch_states
from ..backends.reduction_call import ReductionCall
from ..backends.request import BackendRequest
from ..backends.split_j import combine_tree
from ..common import leaves as L
from ..common.call import describe_variable, finish_outputs
from ..errors import DeviceError, FormulaError, ShapeError
from ..formula.nodes import CAT_I, CAT_J, CAT_P, Var, substitute
from ..formula.reduction_grads import lse_spec, selection_gradient, sum_like_gradient
from ..formula.reductions import INDEX
from .autograd import _tracks_indices, _unbroadcast
from .autograd import apply as _apply_local
from .custom_op import WITH_INDICES

# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------


class Sharded:
    """This rank's shard of a variable split across the ranks of ``group`` (see :func:`sharded`).

    ``tensor``: the local rows ``(*batch, n, D)``; ``sizes``: every rank's number of rows,
    in rank order (the global variable has ``sum(sizes)`` rows)."""

    def __init__(self, tensor, group, sizes):
        self.tensor = tensor
        self.layout = ShardLayout(group, tuple(sizes))

    @property
    def sizes(self) -> tuple:
        return self.layout.sizes

    @property
    def group(self):
        return self.layout.group

    @property
    def offset(self) -> int:
        """Global index of this shard's first row."""
        return sum(self.sizes[: dist.get_rank(self.group)])

    def _polykeops_leaf(self, axis):
        """The LazyTensor leaf of this shard (the hook of ``LazyTensor(sharded(t), axis)``)."""
        if axis not in (0, 1):
            raise ShapeError(
                "a sharded tensor is an i- or a j-variable: use Vi(s), Vj(s) or LazyTensor(s, axis=0 or 1)"
            )
        t = self.tensor
        cat = CAT_I if axis == 0 else CAT_J
        array = t.unsqueeze(-2) if axis == 0 else t.unsqueeze(-3)  # pykeops' (..., M, 1, D) / (..., 1, N, D)
        return L.make_leaf(array, cat, t.shape[-1], t.shape[-2], tuple(t.shape[:-2]), shard=self.layout)

    def __repr__(self):
        return f"Sharded(rows {self.offset}..{self.offset + self.tensor.shape[-2]} of {sum(self.sizes)}, " \
               f"local shape {tuple(self.tensor.shape)})"


def sharded(t, group=None) -> Sharded:
    """Mark ``t`` (``(*batch, n, D)``, rows = points) as this rank's shard of a variable whose
    global value is the concatenation of the shards of every rank of ``group`` (default: the
    world) in rank order.  Collective: every rank of the group calls it (the shard sizes are
    all-gathered once, here).  Use the result with ``Vi``, ``Vj`` or ``LazyTensor(.., axis=)``."""
    if not isinstance(t, torch.Tensor):
        raise FormulaError(f"sharded() takes a torch tensor, got {type(t).__name__}")
    if not dist.is_available() or not dist.is_initialized():
        raise FormulaError("sharded() needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    if t.dim() < 2:
        raise ShapeError(f"sharded() takes a tensor of shape (*batch, n, D) (rows = points), "
                         f"got {tuple(t.shape)}")
    world = dist.get_world_size(group)
    meta = torch.tensor([t.shape[-2], t.shape[-1], t.dim()] + list(t.shape[:-2])[:8]
                        + [0] * (8 - min(8, t.dim() - 2)), dtype=torch.int64, device=_comm_device(t, group))
    gathered = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(gathered, meta, group=group)
    gathered = [g.tolist() for g in gathered]
    others = {tuple(g[1:]) for g in gathered}
    if len(others) > 1:
        raise ShapeError(f"sharded(): the ranks' shards differ in dimension or batch shape: "
                         f"{[(g[2], g[1]) for g in gathered]} (ndim, D) per rank")
    return Sharded(t, group, [g[0] for g in gathered])


def _comm_device(t, group):
    """Where the tensors of a collective live: NCCL wants CUDA tensors, Gloo takes both."""
    backend = dist.get_backend(group)
    return t.device if t.is_cuda or "nccl" in str(backend) else torch.device("cpu")


# ---------------------------------------------------------------------------
# a reduction of LazyTensors with sharded leaves -> a ShardedCall
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShardLayout:
    """How a variable is split: the process group and every rank's number of rows."""

    group: object
    sizes: tuple

    def same_as(self, other) -> bool:
        return self.group is other.group and self.sizes == other.sizes

    def reduce(self, tools, spec, leaves, opts, out=None, shape_hint=None):
        """Evaluate the reduction ``spec`` of LazyTensor ``leaves`` (some sharded) on every rank."""
        dcall, args = prepare_sharded_call(tools, spec, leaves, opts, shape_hint)
        return finish_outputs(tools, spec, reduce_sharded(dcall, args), out)


@dataclass(frozen=True, eq=False)
class ShardedCall:
    """A canonical :class:`ReductionCall` on global sizes, and how its axes are split.

    ``rows`` / ``cols``: every rank's number of i rows / j columns, or None for an axis
    that is not split (every rank holds it whole)."""

    call: ReductionCall
    rows: tuple | None
    cols: tuple | None
    group: object = None

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def local_nx(self) -> int:
        return self.call.nx if self.rows is None else self.rows[self.rank]

    @property
    def local_ny(self) -> int:
        return self.call.ny if self.cols is None else self.cols[self.rank]

    def with_spec(self, spec) -> ShardedCall:
        return replace(self, call=self.call.with_spec(spec))

    def gradient(self, spec) -> ShardedCall:
        """The distributed call of a gradient reduction (an axis-0 spec swaps the axes)."""
        swapped = spec.axis == 0
        return ShardedCall(self.call.gradient(spec), self.cols if swapped else self.rows,
                           self.rows if swapped else self.cols, self.group)


def prepare_sharded_call(tools, spec, leaves, opts, shape_hint=None):
    """``(ShardedCall, arguments)`` for a reduction of LazyTensor ``leaves``, some sharded."""
    if opts.get("ranges") is not None:
        raise FormulaError("block-sparse ranges are not supported with sharded variables")
    by_cat = {CAT_I: [], CAT_J: []}
    for v, leaf in zip(spec.variables, leaves):
        if v.cat in by_cat:
            by_cat[v.cat].append((v, leaf))
    layouts = {}
    for cat, items in by_cat.items():
        split = [leaf.shard for _, leaf in items if leaf.shard is not None]
        if not split:
            continue
        whole = [v for v, leaf in items if leaf.shard is None]
        if whole:
            raise ShapeError(
                f"the {'i' if cat == CAT_I else 'j'}-variables mix sharded and whole tensors "
                f"({describe_variable(whole[0])} is not sharded): shard all of them, or none")
        if any(not s.same_as(split[0]) for s in split):
            raise ShapeError(f"the sharded {'i' if cat == CAT_I else 'j'}-variables have different "
                             f"shard sizes or groups: {sorted({s.sizes for s in split})}")
        layouts[cat] = split[0]
    groups = {id(s.group) for s in layouts.values()}
    if len(groups) > 1:
        raise ShapeError("the sharded i- and j-variables belong to different process groups")
    group = next(iter(layouts.values())).group
    # arguments in a backend's layout: (*batch, n, D), (*batch, D)
    nbatch = max([len(leaf.batch) for leaf in leaves] + [len(shape_hint[2]) if shape_hint else 0])
    batch = [1] * nbatch
    for leaf in leaves:
        padded = (1,) * (nbatch - len(leaf.batch)) + tuple(leaf.batch)
        for k, (x, y) in enumerate(zip(batch, padded)):
            if x != y and 1 not in (x, y):
                raise ShapeError(f"batch dimensions do not broadcast: {tuple(leaf.batch)} and {tuple(batch)}")
            batch[k] = max(x, y)
    like = next((leaf.array for leaf in leaves if not leaf.is_scalar), None)
    args = []
    for v, leaf in zip(spec.variables, leaves):
        padded = (1,) * (nbatch - len(leaf.batch)) + tuple(leaf.batch)
        if leaf.is_scalar:
            args.append(tools.scalar_array(leaf.array, spec.dtype, like=like, shape=padded + (1,)))
        elif v.cat == CAT_P:
            args.append(tools.as_arg(leaf.array, padded + (v.dim,), spec.dtype))
        else:
            args.append(tools.as_arg(leaf.array, padded + (leaf.n, v.dim), spec.dtype))
    devices = sorted({str(a.device) for a in args})
    if len(devices) > 1:
        raise DeviceError(f"the arguments of {spec} are on different devices: {devices}")
    sizes = {}
    hints = shape_hint[:2] if shape_hint else (None, None)
    for cat, hint in zip((CAT_I, CAT_J), hints):
        if cat in layouts:
            sizes[cat] = sum(layouts[cat].sizes)
        else:
            ns = [leaf.n for _, leaf in by_cat[cat]]
            sizes[cat] = ns[0] if ns else (hint or 1)
    red_n = sizes[CAT_J] if spec.axis == 1 else sizes[CAT_I]
    if red_n == 0:
        raise ShapeError(f"{spec.reduction}: every shard of the reduced axis is empty")
    if spec.k is not None and spec.k > red_n:
        raise ShapeError(f"{spec.reduction}: K = {spec.k} is larger than the number of reduced "
                         f"elements {red_n}")
    call = ReductionCall.of(spec, sizes[CAT_I], sizes[CAT_J], batch_shape=tuple(batch),
                            request=BackendRequest.parse(opts.get("backend"), opts.get("device_id")),
                            array_kind="torch", device=devices[0].split(":")[0])
    rows = layouts[CAT_I].sizes if CAT_I in layouts else None
    cols = layouts[CAT_J].sizes if CAT_J in layouts else None
    if spec.axis == 0:
        rows, cols = cols, rows
    return ShardedCall(call, rows, cols, group), args


# ---------------------------------------------------------------------------
# evaluation: the ring over j
# ---------------------------------------------------------------------------


def reduce_sharded(dcall: ShardedCall, args):
    """The outputs of ``dcall`` on this rank (through autograd when gradients are needed)."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        out = ShardedReduction.apply(dcall, *args)
        out = out if isinstance(out, tuple) else (out,)
        return out[:-1] if _tracks_indices(dcall.call.spec) else out
    with torch.no_grad():
        return evaluate(dcall, args)


def evaluate(dcall: ShardedCall, args) -> tuple:
    """The outputs of ``dcall`` for this rank's rows (no autograd)."""
    call = dcall.call
    nx = dcall.local_nx
    if dcall.cols is None:  # every rank holds all of j: a local reduction of its rows
        if nx == 0:
            return _empty_outputs(call, args)
        return tuple(dispatch(replace(call, nx=nx), list(args)))
    state = ring_state(dcall, args) if dcall.rows is not None else gathered_state(dcall, args)
    if state is None:  # no row here
        return _empty_outputs(call, args)
    return tuple(partial_states.finalize(call.spec, state))


def _empty_outputs(call, args):
    ref = next(a for a in args if a.is_floating_point())
    return tuple(torch.empty((*call.batch_shape, 0, o.dim),
                             dtype=torch.int64 if o.kind == "index" else ref.dtype, device=ref.device)
                 for o in call.spec.outputs())


def _starts(sizes):
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def ring_state(dcall: ShardedCall, args):
    """The partial state of this rank's rows over every rank's j-shard (None without rows).

    At step ``s`` this rank holds the j-shard of rank ``r - s`` and sends it to ``r + 1`` while
    reducing its rows against it.  States arrive in the order ``r, r-1, ..., 0, W-1, ..., r+1``:
    the first run and the second are each combined with the newer state *before* the older
    one (it comes earlier in j), then the two runs in j order, so ties resolve as in one process."""
    call, spec = dcall.call, dcall.call.spec
    world, rank, cols = dcall.world, dcall.rank, dcall.cols
    starts = _starts(cols)
    nx = dcall.local_nx
    jpos = [p for p, v in enumerate(spec.variables) if v.cat == CAT_J]
    held = [args[p] for p in jpos]
    low = high = None
    src = rank
    for step in range(world):
        nxt = (src - 1) % world
        pending = _exchange(held, cols[src], cols[nxt], dcall) if step < world - 1 else None
        if nx and cols[src]:
            sub = list(args)
            for p, h in zip(jpos, held):
                sub[p] = h
            st = partial_states.offset(spec, dispatch_states(replace(call, nx=nx, ny=cols[src]), sub),
                                       starts[src])
            if src <= rank:
                low = st if low is None else partial_states.combine(spec, st, low)
            else:
                high = st if high is None else partial_states.combine(spec, st, high)
        if pending is not None:
            held = pending()
        src = nxt
    if low is None or high is None:
        return low if high is None else high
    return partial_states.combine(spec, low, high)


def gathered_state(dcall: ShardedCall, args):
    """The partial state of every row (the rows are whole on every rank) over every j-shard:
    each rank reduces all the rows against its own j-shard (1/W of the pairs), the states are
    all-gathered and combined in rank (= global j) order, the same way on every rank, so the
    whole output is identical on every rank."""
    call, spec = dcall.call, dcall.call.spec
    world, rank, cols = dcall.world, dcall.rank, dcall.cols
    if cols[rank]:
        state = dispatch_states(replace(call, ny=cols[rank]), list(args))
        state = [s.contiguous() for s in partial_states.offset(spec, state, _starts(cols)[rank])]
    else:  # an empty j-shard: a placeholder of the state's shape, skipped by every rank below
        ref = next(a for a in args if a.is_floating_point())
        dtype = getattr(torch, partial_states.state_dtype(spec))
        state = [torch.zeros((*call.batch_shape, call.nx, f.size), device=ref.device,
                             dtype=torch.int64 if f.kind == INDEX else dtype)
                 for f in partial_states.layout(spec)]
    if world == 1:
        return tuple(state)
    gathered = []
    for field in state:
        parts = [torch.empty_like(field) for _ in range(world)]
        dist.all_gather(parts, field, group=dcall.group)
        gathered.append(parts)
    return combine_tree(spec, [tuple(g[k] for g in gathered) for k in range(world) if cols[k]])


def _peer(dcall, group_rank):
    return group_rank if dcall.group is None else dist.get_global_rank(dcall.group, group_rank)


def _exchange(held, n_send, n_recv, dcall):
    """Start sending ``held`` (``n_send`` rows each) to the next rank and receiving the previous
    rank's (``n_recv`` rows); returns a function that waits and gives the received arrays."""
    world, rank = dcall.world, dcall.rank
    shapes = [(*h.shape[:-2], n_recv, h.shape[-1]) for h in held]
    ops, rbuf = [], None
    if n_send:
        sbuf = torch.cat([h.detach().reshape(-1) for h in held])
        ops.append(dist.P2POp(dist.isend, sbuf.contiguous(), _peer(dcall, (rank + 1) % world), dcall.group))
    if n_recv:
        rbuf = torch.empty(sum(math.prod(s) for s in shapes), dtype=held[0].dtype, device=held[0].device)
        ops.append(dist.P2POp(dist.irecv, rbuf, _peer(dcall, (rank - 1) % world), dcall.group))
    works = dist.batch_isend_irecv(ops) if ops else []

    def finish():
        for w in works:
            w.wait()
        if rbuf is None:
            return [h.new_empty(s) for h, s in zip(held, shapes)]
        out, at = [], 0
        for s in shapes:
            size = math.prod(s)
            out.append(rbuf[at:at + size].view(s))
            at += size
        return out

    return finish


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------


class ShardedReduction(torch.autograd.Function):
    """One distributed reduction: ``apply(dcall, *args)``; outputs as
    :class:`~polykeops.torch.autograd.GenredFunction` (selected indices last for Min/Max/KMin)."""

    @staticmethod
    def forward(dcall, *args):
        spec = dcall.call.spec
        if spec.red.is_selection and spec.red.differentiable:
            dcall = dcall.with_spec(spec.with_(reduction=WITH_INDICES[spec.reduction]))
        return evaluate(dcall, args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dcall, *args = inputs
        spec = dcall.call.spec
        ctx.dcall = dcall
        ctx.n_args = len(args)
        output = output if isinstance(output, tuple) else (output,)
        indices = [o for o in output if not o.is_floating_point()]
        values = [o for o in output if o.is_floating_point()]
        ctx.mark_non_differentiable(*indices)
        ctx.has_indices = spec.red.is_selection and spec.red.differentiable
        ctx.save_for_backward(*(list(args) + values + (indices[-1:] if ctx.has_indices else [])))

    @staticmethod
    def backward(ctx, *gouts):
        dcall = ctx.dcall
        spec = dcall.call.spec
        saved = ctx.saved_tensors
        args = list(saved[: ctx.n_args])
        rest = saved[ctx.n_args:]
        indices = rest[-1] if ctx.has_indices else None
        outs = rest[:-1] if ctx.has_indices else rest
        g = gouts[0]
        grads = [None]
        # the same gradients on every rank, in the same order: each is a collective
        for p, a in enumerate(args):
            if not ctx.needs_input_grad[1 + p]:
                grads.append(None)
                continue
            if spec.red.is_selection:
                r = _selection_grad(dcall, p, args, g, indices)
            else:
                r = _sum_like_grad(dcall, p, args, g, outs)
            grads.append(_unbroadcast(r, a.shape))
        return tuple(grads)


def _sum_like_grad(dcall, p, args, g, outs):
    spec = dcall.call.spec
    plan = sum_like_gradient(spec, p)
    extras = []
    for name in plan.extras:
        if name == "G":
            extras.append(g.contiguous())
        elif name == "OUT":
            extras.append(outs[0])
        else:  # "LSE"
            extras.append(reduce_sharded(dcall.with_spec(lse_spec(spec)), args)[0])
    res = reduce_sharded(dcall.gradient(plan.spec), list(args) + extras)[0]
    if plan.sum_rows:
        res = res.sum(-2)
        if dcall.rows is not None:  # each rank summed its own rows
            res = all_reduce_sum(res, dcall.group)
    return res


def _selection_grad(dcall, p, args, g, indices):
    """The symbolic gradient at the selected pairs (as torch/autograd.py), with the selected
    j rows fetched from their owners and the j gradients sent back to them (around the ring)."""
    call = dcall.call
    spec, nx = call.spec, dcall.local_nx
    h, e = selection_gradient(spec, p)
    v = spec.variables[p]
    d = spec.formulas[0].dim
    q = indices.shape[-1]
    rows = nx * q
    comp = torch.arange(q, device=g.device) % d
    onehot = torch.nn.functional.one_hot(comp, d).to(g.dtype)
    e_rows = (g.unsqueeze(-1) * onehot).reshape(*g.shape[:-2], rows, d)
    flat_idx = indices.reshape(*indices.shape[:-2], rows)
    missing = flat_idx < 0
    flat_idx = flat_idx.clamp_min(0)
    jpos = [k for k, var in enumerate(spec.variables) if var.cat == CAT_J]

    def shared(a):  # the same on every rank while each rank has its own rows: in a higher-order
        # backward, the gradient of the sum of the ranks' objectives is summed over the ranks
        return a if dcall.rows is None or not a.requires_grad else SumGradient.apply(a, dcall.group)

    if dcall.cols is None:
        fetched = [_gather_local(shared(args[k]), flat_idx) for k in jpos]
    else:
        fetched = list(RingGather.apply(dcall, flat_idx, *[args[k] for k in jpos]))
    new_args, mapping = [], {}
    for k, (var, a) in enumerate(zip(spec.variables, args)):
        if var.cat == CAT_I:
            new_args.append(a.repeat_interleave(q, dim=-2))
        elif var.cat == CAT_J:
            new_args.append(fetched[jpos.index(k)])
            mapping[var] = Var(var.index, var.dim, CAT_I)
        else:
            new_args.append(shared(a))
    new_args.append(e_rows)
    variables = tuple(mapping.get(var, var) for var in spec.variables) + (e,)
    gspec = spec.with_(reduction="Sum", formulas=(substitute(h, mapping),), variables=variables, k=None)
    if rows == 0:  # no selected pair here; still a function of the same inputs as on the other
        # ranks, so that a higher-order backward runs the same collectives (ring gathers) here too
        tie = sum(a.sum() for a in new_args if a.requires_grad) * 0
        per_row = e_rows.new_zeros((*call.batch_shape, 0, v.dim)) + tie
    else:
        per_row = _apply_local(call.gradient(gspec, nx=rows, ny=1, ranges=None), new_args)[0]
    per_row = torch.where(missing.unsqueeze(-1), per_row.new_zeros(()), per_row)
    if v.cat == CAT_I:
        return per_row.reshape(*per_row.shape[:-2], nx, q, v.dim).sum(-2)
    if v.cat == CAT_P:
        res = per_row.sum(-2)
        return res if dcall.rows is None else all_reduce_sum(res, dcall.group)
    if dcall.cols is not None:
        return RingScatterAdd.apply(dcall, flat_idx, per_row)
    shape = torch.broadcast_shapes(per_row.shape[:-2], flat_idx.shape[:-1])
    idx = flat_idx.expand(*shape, rows).unsqueeze(-1).expand(*shape, rows, v.dim)
    res = per_row.new_zeros((*shape, call.ny, v.dim))
    res = res.scatter_add(-2, idx, per_row.expand(*shape, rows, v.dim))
    return res if dcall.rows is None else all_reduce_sum(res, dcall.group)


def _gather_local(a, flat_idx):
    shape = torch.broadcast_shapes(a.shape[:-2], flat_idx.shape[:-1])
    rows = flat_idx.shape[-1]
    idx = flat_idx.expand(*shape, rows).unsqueeze(-1).expand(*shape, rows, a.shape[-1])
    return torch.gather(a.expand(*shape, *a.shape[-2:]), -2, idx)


class AllReduceSum(torch.autograd.Function):
    """``all_reduce(SUM)``, differentiable.  Its result is held alike by every rank, and counts
    once in the objective (see the module docstring): the cotangent, the same on every rank, is
    that of each rank's term (the backward is the identity)."""

    @staticmethod
    def forward(ctx, x, group):
        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, gy):
        return gy, None


class SumGradient(torch.autograd.Function):
    """The identity, whose backward sums the gradient over the ranks (``all_reduce``): for a
    tensor every rank holds alike (a parameter) used in each rank's own computation."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return all_reduce_sum(g.contiguous(), ctx.group), None


def all_reduce_sum(x, group=None):
    return AllReduceSum.apply(x, group)


def ring_gather(dcall, flat_idx, arrays):
    """For each j-array of ``dcall`` (this rank's shard), its rows at the global indices
    ``flat_idx`` (``(*b, rows)``, in ``[0, ny)``), fetched from their owners around the ring."""
    world, rank, cols = dcall.world, dcall.rank, dcall.cols
    starts = _starts(cols)
    rows = flat_idx.shape[-1]
    outs = []
    for a in arrays:
        shape = torch.broadcast_shapes(a.shape[:-2], flat_idx.shape[:-1])
        outs.append(a.new_zeros((*shape, rows, a.shape[-1])))
    held = [a.detach() for a in arrays]
    src = rank
    for step in range(world):
        nxt = (src - 1) % world
        pending = _exchange(held, cols[src], cols[nxt], dcall) if step < world - 1 else None
        if rows and cols[src]:
            inside = ((flat_idx >= starts[src]) & (flat_idx < starts[src + 1])).unsqueeze(-1)
            local = (flat_idx - starts[src]).clamp(0, cols[src] - 1)
            outs = [torch.where(inside, _gather_local(h, local), o) for h, o in zip(held, outs)]
        if pending is not None:
            held = pending()
        src = nxt
    return outs


def ring_scatter_add(dcall, flat_idx, values):
    """This rank's j-shard of the sum, over every rank, of ``values`` (``(*b, rows, D)``) added
    at the global j indices ``flat_idx``: accumulators go around the ring (a reduce-scatter).
    When the rows are not sharded (every rank holds all of them, and the same ``values``),
    the sum is of one rank's values: no communication."""
    world, rank, cols = dcall.world, dcall.rank, dcall.cols
    starts = _starts(cols)
    rows, dv = values.shape[-2], values.shape[-1]
    shape = torch.broadcast_shapes(values.shape[:-2], flat_idx.shape[:-1])
    values = values.detach().expand(*shape, rows, dv)
    src = rank
    acc = [values.new_zeros((*shape, cols[src], dv))]
    for _ in range(1 if dcall.rows is None else world):
        if rows and cols[src]:
            inside = (flat_idx >= starts[src]) & (flat_idx < starts[src + 1])
            local = (flat_idx - starts[src]).clamp(0, cols[src] - 1).expand(*shape, rows)
            contrib = torch.where(inside.unsqueeze(-1), values, values.new_zeros(()))
            acc = [acc[0].scatter_add(-2, local.unsqueeze(-1).expand(*shape, rows, dv), contrib)]
        if dcall.rows is None:
            break
        nxt = (src - 1) % world
        if world > 1:
            acc = _exchange(acc, cols[src], cols[nxt], dcall)()
        src = nxt
    return acc[0]


class RingGather(torch.autograd.Function):
    """:func:`ring_gather`, differentiable (its adjoint is :func:`ring_scatter_add`: the
    objective is the sum of every rank's loss where the rows are sharded, the loss of any
    rank where every rank holds all the rows)."""

    @staticmethod
    def forward(ctx, dcall, flat_idx, *arrays):
        ctx.dcall = dcall
        ctx.shapes = [a.shape for a in arrays]
        ctx.save_for_backward(flat_idx)
        return tuple(ring_gather(dcall, flat_idx, arrays))

    @staticmethod
    def backward(ctx, *gs):
        (flat_idx,) = ctx.saved_tensors
        grads = [_unbroadcast(RingScatterAdd.apply(ctx.dcall, flat_idx, g), s)
                 for g, s in zip(gs, ctx.shapes)]
        return (None, None, *grads)


class RingScatterAdd(torch.autograd.Function):
    """:func:`ring_scatter_add`, differentiable (its adjoint is :func:`ring_gather`)."""

    @staticmethod
    def forward(ctx, dcall, flat_idx, values):
        ctx.dcall = dcall
        ctx.shape = values.shape
        ctx.save_for_backward(flat_idx)
        return ring_scatter_add(dcall, flat_idx, values)

    @staticmethod
    def backward(ctx, g):
        (flat_idx,) = ctx.saved_tensors
        (out,) = RingGather.apply(ctx.dcall, flat_idx, g)
        return None, None, _unbroadcast(out, ctx.shape)


__all__ = ["sharded", "Sharded", "ShardedCall", "ShardedReduction", "reduce_sharded", "all_reduce_sum"]
