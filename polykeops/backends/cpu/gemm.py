"""The ``K @ b`` micro-kernel of the specialised CPU kernels.

When the reduced formula is ``s_ij * b_j`` (a Sum, ``s_ij`` a scalar computed in
an earlier stage of the lane code, ``b_j`` a j-variable), the scalars of every
row of a work item are kept in a ``[BI][TJ]`` buffer and reduced after the row
loop, several rows and components at a time, so that each load of ``b_j``
serves several rows (register blocking, as in a GEMM).
"""

from __future__ import annotations

from ...formula.nodes import CAT_J


def gemm_operands(root, vec, names):
    """``(scalar buffer, b buffer, dim)`` when the reduced formula ``root`` is ``s_ij * b_j`` with
    ``s_ij`` a scalar computed in an earlier stage (a buffer of ``names``) and ``b_j`` a
    j-variable, else None."""
    if vec != [root] or root.op != "Mult" or len(root.args) != 2:
        return None
    a, b = root.args
    if a.dim != 1:
        a, b = b, a
    if a.dim != 1 or a not in names or b.op != "Var" or b.cat != CAT_J or b.dim != root.dim:
        return None
    return names[a], f"yt{b.index}", root.dim


def gemm_code(sname: str, bname: str, dim: int, simd_pragma: str) -> list[str]:
    """S[r][k] += sum_j s[r][j] b[k][j] for the rows of the item: blocks of RB rows x CB
    components, RB * CB accumulators per SIMD lane (fewer with 16 vector registers)."""
    L = []

    def block(rb, cb, r0, kq):
        accs = [f"a{r}_{c}" for r in range(rb) for c in range(cb)]
        out = ["{", "    " + " ".join(f"ACC {a} = 0;" for a in accs)]
        for r in range(rb):
            out.append(f"    const T *__restrict__ k{r} = {sname}_all + (size_t)({r0} + {r}) * TJ;")
        for c in range(cb):
            out.append(f"    const T *__restrict__ b{c} = {bname} + (size_t)({kq} + {c}) * TJ;")
        out.append(f"    {simd_pragma} reduction(+ : {', '.join(accs)})")
        out.append("    for (int j = 0; j < n; ++j) {")
        for r in range(rb):
            for c in range(cb):
                out.append(f"        a{r}_{c} = PK_MADD(k{r}[j], b{c}[j], a{r}_{c});")
        out.append("    }")
        for r in range(rb):
            for c in range(cb):
                out.append(f"    st[{r0} + {r}].s[{kq} + {c}] += a{r}_{c};")
        out.append("}")
        return out

    def variant(rb, cb):
        V = []
        top = dim - dim % cb
        V.append("int r0 = 0;")
        V.append(f"for (; r0 + {rb} <= nrows; r0 += {rb}) {{")
        V.append(f"    for (int kq = 0; kq < {top}; kq += {cb})")
        V.extend("        " + x for x in block(rb, cb, "r0", "kq"))
        if top < dim:
            V.append(f"    for (int kq = {top}; kq < {dim}; ++kq)")
            V.extend("        " + x for x in block(rb, 1, "r0", "kq"))
        V.append("}")
        V.append("for (; r0 < nrows; ++r0) {")
        V.append(f"    for (int kq = 0; kq < {top}; kq += {cb})")
        V.extend("        " + x for x in block(1, cb, "r0", "kq"))
        if top < dim:
            V.append(f"    for (int kq = {top}; kq < {dim}; ++kq)")
            V.extend("        " + x for x in block(1, 1, "r0", "kq"))
        V.append("}")
        return V

    L.append("{")
    L.append("    const int nrows = (int)(i1 - i0);")
    L.append("#if defined(__AVX512F__) || defined(__aarch64__) /* 32 vector registers */")
    L.extend("    " + x for x in variant(4, 4))
    L.append("#else")
    L.extend("    " + x for x in variant(4, 2))
    L.append("#endif")
    L.append("}")
    return L
