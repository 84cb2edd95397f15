"""The lane code of a specialised CPU kernel: what runs for one row and one tile of columns.

The sub-formulas that depend on both i and j (the *lanes*: one per column of
the tile) are scheduled in stages, each an ``omp simd`` loop over the tile
(see :func:`lane_code`); values crossing stages live in ``[dim][TJ]`` tile
buffers.  :mod:`.kernel_source` places this code inside the row loop of the
kernel's tile function.
"""

from __future__ import annotations

from ..codegen.plan import computed_between
from .gemm import gemm_operands


def _accumulate(rf, root, d: int) -> str:
    """``acc<d> += component d of root``: a multiply-add when ``root`` is a product (kernels
    are compiled without contraction, so this fusion is written out)."""
    if root.op == "Mult" and len(root.args) == 2:
        u, v = root.args
        try:
            return f"acc{d} = PK_MADD({rf.value(u, d)}, {rf.value(v, d)}, acc{d});"
        except KeyError:  # an operand computed outside this loop (an i-only factor): no name here
            pass
    return f"acc{d} += (ACC)({rf.value(root, d)});"


def lane_code(roots, known, leaf, counter, *, renderer, T: str, ACC: str, state, fused: bool):
    """Code run for one row and one tile (lanes = the tile's columns j), its buffers, and the
    ``K @ b`` operands of :func:`.gemm.gemm_operands` when the last stage is that product.

    The sub-formulas that depend on i and j are computed in *stages*: fused
    ``omp simd`` loops over j for values of small dimension (one scalar or a
    small array per lane), and, for large elementwise vectors (dimension above
    the renderer's unroll limit, e.g. ``x_i - y_j`` in 64-D), loops over the
    components with an ``omp simd`` loop over j inside, where each component
    is a scalar and a ``Sum`` of the vector is accumulated in place.  Values
    crossing stages go through [dim][TJ] tile buffers.  The last stage feeds
    the reduction: per-lane accumulators (Sum of a small formula), or formula
    buffers reduced by the helpers of pk_reduce.h.
    """
    R = renderer
    fdims = [f.dim for f in roots]
    found_gemm = None
    lane_nodes = computed_between(roots, known)
    lane_set = set(lane_nodes)
    pos = {n: q for q, n in enumerate(lane_nodes)}
    big = {n for n in lane_nodes if n.dim > R.unroll_limit and R.is_elementwise(n)}
    region = _regions(big, lane_nodes, lane_set)
    absorbed = {n: region[n.args[0]] for n in lane_nodes if n.op == "Sum" and n.args[0] in big}
    unit_of = {}
    for n in lane_nodes:
        if n in big:
            unit_of[n] = ("R", region[n])
        elif n in absorbed:
            unit_of[n] = ("R", absorbed[n])
        else:
            unit_of[n] = ("S", pos[n])
    sink = ("S", len(lane_nodes))
    deps = {u: set() for u in set(unit_of.values()) | {sink}}
    for n in lane_nodes:
        for a in n.args:
            if a in lane_set and unit_of[a] != unit_of[n]:
                deps[unit_of[n]].add(unit_of[a])
    for r in roots:
        if r in lane_set:
            deps[sink].add(unit_of[r])
    first = {}
    for n in lane_nodes:
        first.setdefault(unit_of[n], pos[n])
    first[sink] = len(lane_nodes)
    remaining = sorted(deps, key=lambda u: first[u])
    stages, done = [], set()
    while remaining:
        group = []
        grew = True
        while grew:
            grew = False
            for u in remaining:
                if u[0] == "S" and u not in group and deps[u] <= done | set(group):
                    group.append(u)
                    grew = True
        if group:
            stages.append(("fused", group))
        else:
            group = [next(u for u in remaining if u[0] == "R" and deps[u] <= done)]
            stages.append(("region", group))
        done |= set(group)
        remaining = [u for u in remaining if u not in done]
    stage_of = {u: q for q, (_, units) in enumerate(stages) for u in units}

    # which values cross stages (-> tile buffers)
    crossing = set()
    for n in lane_nodes:
        for a in n.args:
            if a in lane_set and stage_of[unit_of[a]] != stage_of[unit_of[n]]:
                crossing.add(a)
    for r in roots:
        if r in lane_set and stage_of[unit_of[r]] != stage_of[sink]:
            crossing.add(r)
    root0 = roots[0]
    # Sum of a large vector computed in a component loop: reduce it there, per component
    region_reduce = state.plain_sum and root0 in big and len(roots) == 1
    if region_reduce:
        crossing.discard(root0)

    bufs = []
    buf_known = {}  # filled stage after stage: values of earlier stages, read from their buffers
    names = {}
    for n in lane_nodes:
        if n in crossing:
            name = f"lb{len(names)}"
            names[n] = name
            dim = 1 if n in absorbed else n.dim
            bufs.append((name, T, dim))
    buffered = not fused and not region_reduce
    if buffered:
        bufs.append(("fb", T, fdims[0]))
        if len(fdims) > 1:
            bufs.append(("gb", T, fdims[1]))
        bufs.extend((name, ACC if ty == "ACC" else T, dim)
                    for name, ty, dim in state.tile_buffers())

    lines: list[str] = []
    D = fdims[0]
    for kind, units in stages:
        nodes = [n for n in lane_nodes if unit_of[n] in units]
        scope = {**known, **buf_known}
        for n in nodes:
            if n in names:
                buf_known[n] = lambda k, name=names[n]: f"{name}[({k}) * TJ + j]"
        if kind == "fused":
            rf = R.render(nodes, leaf, known=scope, prefix="v", counter=counter)
            body = list(rf.lines)
            for n in nodes:
                if n in names:
                    body.extend(f"{names[n]}[{k} * TJ + j] = {rf.value(n, k)};" for k in range(n.dim))
            pragma = R.simd_pragma
            if sink in units:
                if fused:
                    accs = [f"acc{d}" for d in range(D)]
                    lines.append("ACC " + ", ".join(f"{a} = 0" for a in accs) + ";")
                    pragma += f" reduction(+ : {', '.join(accs)})"
                    body.extend(_accumulate(rf, root0, d) for d in range(D))
                elif buffered:
                    for buf, f in zip(("fb", "gb"), roots):
                        body.extend(f"{buf}[{d} * TJ + j] = {rf.value(f, d)};" for d in range(f.dim))
            if body and sink in units and fused:
                # whole vectors, then one masked vector for the last columns (short tiles of
                # block-sparse ranges: no scalar remainder loop)
                lines.append(pragma)
                lines.append("for (int j = 0; j < nfull; ++j) {")
                lines.extend("    " + x for x in body)
                lines.append("}")
                lines.append("if (nfull < n) {")
                lines.append("    " + pragma)
                lines.append("    for (int l = 0; l < PK_VL; ++l) {")
                masked = ["const int j = nfull + l;"] + body[: len(body) - D]  # (no accumulation)
                masked.extend(
                    f"acc{d} += j < n ? (ACC)({rf.value(root0, d)}) : (ACC)0;" for d in range(D)
                )
                lines.extend("        " + x for x in masked)
                lines.append("    }")
                lines.append("}")
            elif body:
                # values of the columns n .. npad - 1 (zero padding) are computed and never used
                lines.append(pragma)
                lines.append("for (int j = 0; j < npad; ++j) {")
                lines.extend("    " + x for x in body)
                lines.append("}")
            if sink in units and fused:
                lines.extend(f"s->s[{d}] += acc{d};" for d in range(D))
            continue
        # a component loop
        vec = [n for n in nodes if n in big]
        sums = [n for n in nodes if n in absorbed]
        dim = vec[0].dim
        clines, cnames = R.render_component(vec, "k", dim, leaf, known=scope, prefix="c", counter=counter)
        reduce_here = region_reduce and root0 in vec
        gemm = gemm_operands(root0, vec, names) if reduce_here and not sums else None
        if gemm is not None:
            # Sum_j s_ij b_j (K @ b): the scalars s_ij of every row of the item are kept (a
            # [BI][TJ] buffer) and reduced after the row loop, several rows and components at
            # a time (pk_process), so that each load of b_j serves several rows
            found_gemm = gemm
            continue
        if sums and not reduce_here:
            # register blocking: JB columns at a time, the Sums of the components stay in
            # registers across the loop over components (tile buffers hold TJ >= n columns,
            # a multiple of JB, so the last block may compute a few unused columns)
            jb = 32 if T == "float" else 16
            lines.append(f"for (int j0 = 0; j0 < n; j0 += {jb}) {{")
            for sm in sums:
                lines.append(f"    {T} sa_{names[sm]}[{jb}];")
                lines.append(f"    for (int l = 0; l < {jb}; ++l) sa_{names[sm]}[l] = 0;")
            lines.append(f"    for (int k = 0; k < {dim}; ++k) {{")
            lines.append(f"        {R.simd_pragma}")
            lines.append(f"        for (int l = 0; l < {jb}; ++l) {{")
            body = ["const int j = j0 + l;"] + list(clines)
            for n in vec:
                if n in names:
                    body.append(f"{names[n]}[k * TJ + j] = {cnames[n]};")
            for sm in sums:
                body.append(f"sa_{names[sm]}[l] += {cnames[sm.args[0]]};")
            lines.extend("            " + x for x in body)
            lines.append("        }")
            lines.append("    }")
            for sm in sums:
                nm = names[sm]
                lines.append(f"    for (int l = 0; l < {jb}; ++l) {nm}[j0 + l] = sa_{nm}[l];")
            lines.append("}")
            continue
        for sm in sums:
            lines.append(R.simd_pragma)
            lines.append(f"for (int j = 0; j < n; ++j) {names[sm]}[j] = 0;")
        if reduce_here and dim >= 8:
            # reduced per component: 4 components per pass over j, so that the values shared
            # by the components (the scalar factor of K_ij * b_j) are loaded once for 4 sums
            u = 4
            top = dim - dim % u
            ks = [f"kq + {q}" for q in range(u)]
            body = []
            for q in range(u):
                cl, cn = R.render_component(
                    vec, ks[q], dim, leaf, known=scope, prefix=f"u{q}_", counter=counter
                )
                body.extend(cl)
                body.append(f"acc{q} += (ACC)({cn[root0]});")
                for n in vec:
                    if n in names:
                        body.append(f"{names[n]}[({ks[q]}) * TJ + j] = {cn[n]};")
            lines.append(f"for (int kq = 0; kq < {top}; kq += {u}) {{")
            lines.append("    " + " ".join(f"ACC acc{q} = 0;" for q in range(u)))
            accs = ", ".join(f"acc{q}" for q in range(u))
            lines.append(f"    {R.simd_pragma} reduction(+ : {accs})")
            lines.append("    for (int j = 0; j < n; ++j) {")
            lines.extend("        " + x for x in body)
            lines.append("    }")
            lines.extend(f"    s->s[kq + {q}] += acc{q};" for q in range(u))
            lines.append("}")
            if top == dim:
                continue
            lines.append(f"for (int k = {top}; k < {dim}; ++k) {{")
        else:
            lines.append(f"for (int k = 0; k < {dim}; ++k) {{")
        if reduce_here:
            lines.append("    ACC acc = 0;")
            lines.append(f"    {R.simd_pragma} reduction(+ : acc)")
        else:
            lines.append(f"    {R.simd_pragma}")
        lines.append("    for (int j = 0; j < n; ++j) {")
        body = list(clines)
        for n in vec:
            if n in names:
                body.append(f"{names[n]}[k * TJ + j] = {cnames[n]};")
        for sm in sums:
            body.append(f"{names[sm]}[j] += {cnames[sm.args[0]]};")
        if reduce_here:
            body.append(f"acc += (ACC)({cnames[root0]});")
        lines.extend("        " + x for x in body)
        lines.append("    }")
        if reduce_here:
            lines.append("    s->s[k] += acc;")
        lines.append("}")
    if buffered:
        lines.extend(state.tile_reduce())
    return lines, bufs, found_gemm


def _regions(big: set, order: list, lane_set: set) -> dict:
    """Group large elementwise nodes that feed each other (same dimension) into component loops.

    Nodes of one group are split by *level*: a big node that reads a value computed outside
    its component loop (a scalar stage, e.g. ``exp(-|x - y|^2)``) which itself depends on
    nodes of the same group (the ``Sum`` absorbed by the loop) sits one level above them.  Without the
    split, ``(x - y) * exp(-Sum((x - y)^2))`` put ``x - y``, its absorbed ``Sum`` and the
    product in one loop that depends on a scalar stage that depends on it: no schedule
    (the gradient of a LogSumExp of squared distances in dimension 20 and more).  With it,
    every dependency between different units goes to a strictly higher level or between
    scalar nodes in order, so the units form a DAG.
    """
    parent = {n: n for n in big}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in big:
        for a in n.args:
            if a in big and a.dim == n.dim:
                parent[find(a)] = find(n)
    level: dict = {}
    seen: dict = {}  # node -> {group: highest level of that group among the values it reads}
    for n in order:  # children first
        reads: dict = {}
        for a in n.args:
            for c, lv in seen.get(a, {}).items():
                reads[c] = max(reads.get(c, -1), lv)
        if n in big:
            c = find(n)
            lv = 0
            for a in n.args:
                if a not in lane_set:
                    continue
                if a in big and a.dim == n.dim:
                    lv = max(lv, level[a])
                else:  # a value from another unit: above what it read of this group
                    lv = max(lv, seen[a].get(c, -1) + 1)
            level[n] = lv
            reads[c] = max(reads.get(c, -1), lv)
        seen[n] = reads
    reps: dict = {}
    return {n: reps.setdefault((find(n), level[n]), len(reps)) for n in order if n in big}
