"""CUDA C source for one reduction spec: the map-reduce kernels and their launch metadata.

One translation unit per (spec, batch rank, index width); kernel names carry a
digest of those, so several specs can share a translation unit.  For each
*output slice* (see :func:`.states.slices`) it holds two kernels:

``pk<digest>_main_<s>`` -- the 1D scheme: one thread per output row ``i``; the
    j-variables of a tile of ``TILE_J`` columns are staged in shared memory by
    the whole block (coalesced loads, float16 converted to float on the way),
    one column per 16-byte-aligned row so that a thread reads a column with
    vector loads (``ld.shared.v4``); then every thread runs the formula for its
    row against the tile and updates its register state.  The i-variables and
    parameters a thread uses are loaded into registers once per row, and every
    sub-formula that does not depend on j is computed once per row, before the
    j loop.  Batch dimensions run over ``gridDim.z`` (per-argument batch
    strides, 0 where an argument broadcasts).  With ``partial = 1`` the block
    handles the j range ``[blockIdx.y * jchunk, (blockIdx.y + 1) * jchunk)``
    only and writes its partial state to a workspace instead of the outputs:
    that is the 2D scheme, for few rows and many columns.
``pk<digest>_comb_<s>`` -- the second pass of the 2D scheme: one thread per
    (batch, row) merges the partial states in j order with the reduction's
    combine rule and writes the outputs.

With ``ranges=True`` (block-sparse reductions, a separate translation unit) the
main kernels take two more arguments, the block map of :mod:`.ranges`: block
``blockIdx.x`` reads its item (batch, rows, j intervals) and sweeps the tiles of
those intervals only; there is no 2D scheme.

Sizes: ``TILE_J`` is the largest power of two (<= 256) whose tile fits in 48 KiB
of static shared memory (256 for D = 3, 32 for D = 256); blocks have 256
threads (128 for heavy K-min states), lowered at launch to what the kernel's
registers allow (``CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK``); the j loop is
unrolled 4, 2 or 1 times depending on the size of the register state.  Output
slices bound the register state of one thread (a ``K @ b`` with b of width 256
runs as 8 slices of 32); chunked evaluation of wide sums (:mod:`.render`)
bounds the registers of the formula itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ...errors import BackendError
from ...formula.nodes import CAT_I, CAT_J, CAT_P, variables
from . import mma
from .render import CudaRenderer, render_formulas
from .states import StateTypes, sliced_formulas, slices, state_class

#: shared memory a block may use for its j tile (static: safe on every GPU)
SMEM_BUDGET = 48 * 1024
#: largest j tile (columns staged per __syncthreads)
MAX_TILE_J = 256
#: default threads per block for the 1D scheme (lowered at launch if registers require it)
DEFAULT_BLOCK = 256
#: __launch_bounds__ of the main kernels (the largest block they are launched with; 256
#: threads leave up to 255 registers per thread)
MAX_BLOCK = 256

#: the extra (last) parameters of block-sparse main kernels: the block map of :mod:`.ranges`
RANGE_PARAMS = ("items", "ivals")
#: int64 columns of an item of the block map: batch, first row, end row, first and end interval
ITEM_WIDTH = 5

#: storage types: float16 as its bits (unsigned short), bfloat16 as pk_bf16 (a 2-byte struct of its
#: bits, layout-compatible with cuda_bf16.h's __nv_bfloat16, which the sources do not include)
_IN_TYPES = {"float16": "unsigned short", "bfloat16": "pk_bf16", "float32": "float", "float64": "double"}
_COMPUTE = {"float16": "float", "bfloat16": "float", "float32": "float", "float64": "double"}


@dataclass(frozen=True)
class SliceKernels:
    """The kernels of one output slice."""

    c0: int
    width: int
    main: str  # name of the map-reduce kernel
    combine: str  # name of the 2D-scheme combine kernel
    nf: int  # float fields of a partial state
    ni: int  # index fields of a partial state


@dataclass(frozen=True)
class TranslationUnit:
    """A rendered translation unit and what the launcher needs to know about it."""

    body: str  # the kernels (without the prelude)
    spec: object
    n_batch_dims: int
    idx64: bool
    tile_j: int
    block: int
    smem_bytes: int  # static shared memory of a main kernel
    slices: tuple[SliceKernels, ...]
    main_params: tuple[tuple[str, str], ...]  # (C type, name), in order
    combine_params: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = field(default=())
    ranges: bool = False  # block-sparse main kernels (extra parameters RANGE_PARAMS)
    tensor_cores: str = ""  # the mma mode of the main kernels (.mma), "" for the SIMT path

    @property
    def source(self) -> str:
        """The complete translation unit."""
        return PRELUDE + self.body

    @property
    def digest(self) -> str:
        """SHA-256 of the source (identifies the binary, with the architecture)."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def kernel_names(self) -> list[str]:
        return [n for s in self.slices for n in (s.main, s.combine)]


def ctypes_for(spec, idx64: bool) -> StateTypes:
    acc = spec.accumulation_dtype
    outs = []
    for o in spec.outputs():
        outs.append("long long" if o.kind == "index" else _IN_TYPES[spec.dtype])
    return StateTypes(
        T=_COMPUTE[spec.dtype],
        ACC="double" if acc == "float64" else "float",
        acc_half=acc == "float16",
        IDX="long long" if idx64 else "int",
        out=tuple(outs),
    )


def tile_row(spec) -> int:
    """Elements of one column of the j tile: the j-variables side by side, padded to 16 bytes
    (so that the compiler can read a column with vector loads)."""
    used = set(variables(*spec.formulas))
    width = sum(v.dim for v in spec.variables if v.cat == CAT_J and v in used)
    vec = 2 if spec.dtype == "float64" else 4
    if width > vec // 2:
        width = -(-width // vec) * vec
    return width


def tile_size(spec, budget: int = SMEM_BUDGET) -> int:
    """Columns of j staged in shared memory per tile, from the j-variables' sizes (``budget``:
    the bytes of shared memory left for the tile)."""
    elem = 8 if spec.dtype == "float64" else 4
    per_j = tile_row(spec) * elem
    if per_j == 0:
        return 64
    tj = min(MAX_TILE_J, budget // per_j)
    if tj < 1:
        raise BackendError(
            f"the j-variables of {spec} need {per_j} bytes per column: more than the "
            f"{SMEM_BUDGET} bytes of shared memory of a block"
        )
    return 1 << (tj.bit_length() - 1)  # a power of two


def block_size(spec) -> int:
    """Default threads per block: fewer for heavy per-thread states."""
    heavy = spec.red.uses_k and spec.k * spec.formulas[0].dim > 16
    return 128 if heavy else DEFAULT_BLOCK


class _Leaves:
    """How the kernel reads component ``k`` of a variable (``k``: an int or a C index expression).

    j-variables come from the shared-memory tile; i-variables and parameters from
    registers loaded once per row (fixed components) or from global memory
    (components indexed by a loop variable, in chunked sums).
    """

    def __init__(self, j_base, row):
        self.j_base = j_base
        self.row = row
        self.preload: dict[tuple[int, int], object] = {}
        self.used: set[int] = set()

    def __call__(self, var, k):
        self.used.add(var.index)
        if var.cat == CAT_J:
            base = self.j_base[var.index]
            if isinstance(k, int):
                return f"sj[jj * {self.row} + {base + k}]"
            return f"sj[jj * {self.row} + {base} + {k}]"
        if isinstance(k, int):
            self.preload[(var.index, k)] = var
            return f"v{var.index}_{k}"
        return f"pk_ld(r{var.index} + {k})"


def _indent(lines, n):
    pad = " " * n
    out = []
    for line in lines:
        out.extend(pad + part for part in line.split("\n"))
    return out


def tensor_core_plan(spec, arch, ranges: bool = False, tile_j: int | None = None):
    """``(mode, products, tile_j)``: the tensor-core mode and products of ``spec`` on ``arch``
    (:mod:`.mma`; ``(None, [], tile)`` for the SIMT path) and the j tile that leaves room for
    their buffers.  Block-sparse kernels keep the SIMT path."""
    mode = None if ranges else mma.tensor_core_mode(spec, arch)
    products = mma.tc_products(spec.formulas) if mode else []
    if products:
        budget = SMEM_BUDGET - mma.smem_bytes(products, MAX_BLOCK // 32, MAX_TILE_J)
        tj = tile_j or (tile_size(spec, budget) if budget > 0 else 0)
        if tj >= mma.CHUNK:
            return mode, products, tj
    return None, [], tile_j or tile_size(spec)


def generate(spec, *, n_batch_dims: int = 0, idx64: bool = False, tile_j: int | None = None,
             ranges: bool = False, arch=None, renderer_cls=CudaRenderer) -> TranslationUnit:
    """Render the kernels of a canonical spec (see the module docstring).

    ``tile_j`` overrides the tile size (tests use small tiles to cross many tile
    boundaries).  ``ranges=True`` renders the block-sparse variant of the main
    kernels (1D scheme only, see :mod:`.ranges`).  Kernel names carry a digest of
    the spec and the options, so the sources of several specs can share one
    translation unit.  ``arch`` (``"sm_80"``, 80 or None) is the target: from sm_80 on, inner
    products of eligible dtypes run on tensor cores (:mod:`.mma`, :func:`tensor_core_plan`).
    """
    if spec.axis != 1:
        raise BackendError("the CUDA code generator needs a canonical spec (axis == 1)")
    ct = ctypes_for(spec, idx64)
    IN, T = _IN_TYPES[spec.dtype], ct.T
    tc_mode, tc_all, tj = tensor_core_plan(spec, arch, ranges, tile_j)
    in_formulas = set(variables(*spec.formulas))
    jvars = [v for v in spec.variables if v.cat == CAT_J and v in in_formulas]
    row = tile_row(spec)
    j_base, off = {}, 0
    for v in jvars:
        j_base[v.index] = off
        off += v.dim
    smem_elems = tj * row if jvars else 0
    nb = n_batch_dims
    key = (spec, nb, idx64, tj, "ranges") if ranges else (spec, nb, idx64, tj)
    if tc_mode:
        key += ("mma", tc_mode)
    tag = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    State = state_class(spec)

    main_params = [(f"const {IN}* __restrict__", f"a{v.index}") for v in spec.variables]
    main_params += [(f"{t}* __restrict__", f"o{n}") for n, t in enumerate(ct.out)]
    main_params += [("double* __restrict__", "wsf"), ("long long* __restrict__", "wsi")]
    main_params += [("const int", "partial")]
    main_params += [("const long long", n) for n in ("nx", "ny", "nbatch", "jchunk")]
    main_params += [("const long long", f"bs{d}") for d in range(nb)]
    main_params += [("const long long", f"st{v.index}_{d}") for v in spec.variables for d in range(nb)]
    if ranges:
        main_params += [("const long long* __restrict__", n) for n in RANGE_PARAMS]
    comb_params = [(f"{t}* __restrict__", f"o{n}") for n, t in enumerate(ct.out)]
    comb_params += [("const double* __restrict__", "wsf"), ("const long long* __restrict__", "wsi")]
    comb_params += [("const long long", n) for n in ("nx", "nbatch", "nchunks")]

    parts = [f"// {spec}"]
    for v in spec.variables:
        cat = {CAT_I: "Vi", CAT_J: "Vj", CAT_P: "Pm"}[v.cat]
        parts.append(f"//   a{v.index}: {cat}({v.index}, {v.dim})")
    parts.append(f"// T = {T}, ACC = {ct.ACC}{' (rounded to half)' if ct.acc_half else ''}, "
                 f"IDX = {ct.IDX}, TILE_J = {tj}, batch dims = {nb}")
    if tc_mode:
        parts.append(f"// tensor cores: {tc_mode} mma for {len(tc_all)} inner product(s)")
    kernels = []
    for s, (c0, w) in enumerate(slices(spec)):
        st = State(spec, ct, c0, w)
        main_name, comb_name = f"pk{tag}_main_{s}", f"pk{tag}_comb_{s}"
        renderer = renderer_cls("float64" if T == "double" else "float32")
        formulas = sliced_formulas(spec, c0, w)
        parts.append(_main_kernel(spec, formulas, st, ct, IN, tj, j_base, row, jvars, smem_elems,
                                  nb, main_name, main_params, renderer, ranges, tc_mode))
        parts.append(_combine_kernel(st, comb_name, comb_params))
        kernels.append(SliceKernels(c0, w, main_name, comb_name, st.nf, st.ni))
    elem = 8 if T == "double" else 4
    tc_smem = mma.smem_bytes(tc_all, MAX_BLOCK // 32, tj) if tc_mode else 0
    return TranslationUnit(
        body="\n".join(parts) + "\n",
        spec=spec,
        n_batch_dims=nb,
        idx64=idx64,
        tile_j=tj,
        block=block_size(spec),
        smem_bytes=smem_elems * elem + tc_smem,
        slices=tuple(kernels),
        main_params=tuple(main_params),
        combine_params=tuple(comb_params),
        ranges=ranges,
        tensor_cores=tc_mode or "",
    )


def _signature(name, params, bounds=None):
    lb = f"__launch_bounds__({bounds}, 1) " if bounds else ""
    args = ",\n    ".join(f"{t} {n}" for t, n in params)
    return f'extern "C" __global__ void {lb}{name}(\n    {args})'


def _main_kernel(spec, formulas, st, ct, IN, tj, j_base, jrow, jvars, smem_elems, nb, name, params,
                 renderer, ranges=False, tc_mode=None):
    T = ct.T
    leaves = _Leaves(j_base, jrow)
    tcp = mma.tc_products(formulas) if tc_mode else []
    given = {tp.product.node: (lambda k, tp=tp: tp.value) for tp in tcp}
    code = render_formulas(renderer, formulas, leaves, given=given)
    upd = st.update("S", code.values, "j")
    for tp in tcp:  # x's row pointer (row norms, difference form) and y's (the tile)
        leaves.used.update((tp.xvar.index, tp.yvar.index))

    L = [_signature(name, params, MAX_BLOCK) + " {"]
    if smem_elems:
        L.append(f"  alignas(16) __shared__ {T} sj[{smem_elems}];")
    L += _indent(mma.buffers(tcp, MAX_BLOCK // 32, tj), 2)
    used = [v for v in spec.variables if v.index in leaves.used]
    if ranges:  # one item of the block map per block (see .ranges)
        L += [
            f"  const long long* __restrict__ item = items + {ITEM_WIDTH} * (long long)blockIdx.x;",
            "  const long long i = item[1] + threadIdx.x;",
            "  const bool active = i < item[2];",
            "  const int vb = (int)item[3], ve = (int)item[4];  // fewer than 2^31 intervals",
            "  // batch item[0], or every batch entry (over gridDim.z) when item[0] < 0",
            "  const long long bend = item[0] < 0 ? nbatch : item[0] + 1;",
            "  for (long long b = item[0] < 0 ? blockIdx.z : item[0]; b < bend; b += gridDim.z) {",
        ]
    else:
        L += [
            "  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
            "  const bool active = i < nx;",
            "  const long long jb = partial ? (long long)blockIdx.y * jchunk : 0;",
            "  const long long je = partial ? pk_minll(ny, jb + jchunk) : ny;",
            "  for (long long b = blockIdx.z; b < nbatch; b += gridDim.z) {",
        ]
    body = []
    if nb and used:
        body.append("long long q = b;")
        for d in reversed(range(nb)):
            body.append(f"const long long bi{d} = q % bs{d};" + (f" q /= bs{d};" if d else ""))
    for v in used:
        boff = " + ".join(f"bi{d} * st{v.index}_{d}" for d in range(nb)) or "0"
        row = f" + (active ? i : 0) * {v.dim}" if v.cat == CAT_I else ""
        body.append(f"const {IN}* __restrict__ r{v.index} = a{v.index} + ({boff}){row};")
        if any(tp.xvar.index == v.index for tp in tcp):
            body.append(f"const {IN}* __restrict__ pk_xb{v.index} = a{v.index} + ({boff});")
    if tcp:  # the warp's first row and the end of the rows (1D scheme, see .mma)
        body.append("const long long pk_wrow = (long long)blockIdx.x * blockDim.x + (threadIdx.x & ~31u);")
        body.append("const long long pk_rend = nx;")
        body += mma.row_setup(tcp, IN, tc_mode)
    for (index, k), _v in sorted(leaves.preload.items()):
        body.append(f"const {T} v{index}_{k} = pk_ld(r{index} + {k});")
    body += code.pre
    body += st.init("S")
    tile = [f"const int tn = (int)pk_minll({tj}LL, je - j0);"]
    if jvars:
        tile.append("__syncthreads();")
        for v in jvars:
            base, d = j_base[v.index], v.dim
            dst = f"t * {jrow} + {base}" if d == 1 else f"(t / {d}) * {jrow} + {base} + t % {d}"
            tile.append(
                f"for (int t = threadIdx.x; t < tn * {d}; t += blockDim.x) "
                f"sj[{dst}] = pk_ld(r{v.index} + j0 * {d} + t);"
            )
        tile.append("__syncthreads();")
    inner = [f"const {ct.IDX} j = ({ct.IDX})(j0 + jj);"] if st.uses_index else []
    if tcp:
        norms = mma.tile_norms(tcp, jrow, j_base)
        if norms:
            tile += norms + ["__syncthreads();"]
        for tp in tcp:
            inner += mma.pair_value(tp, tc_mode, jrow, j_base)
        inner += code.body + upd
        # every lane of every warp runs the block products (mma.sync is warp-wide)
        tile += st.tile_begin("S")
        tile.append(f"for (int jc = 0; jc < tn; jc += {mma.CHUNK}) {{")
        for tp in tcp:
            tile += _indent(mma.chunk_block(tp, tc_mode, jrow, j_base), 2)
        tile.append("  __syncwarp();")
        tile.append("  if (active) {")
        tile.append(f"    const int pk_je = jc + {mma.CHUNK} < tn ? jc + {mma.CHUNK} : tn;")
        tile.append(f"    #pragma unroll {_unroll(st, spec)}")
        tile.append("    for (int jj = jc; jj < pk_je; ++jj) {")
        tile += _indent(inner, 6)
        tile.append("    }")
        tile.append("  }")
        tile.append("  __syncwarp();")
        tile.append("}")
        tile.append("if (active) {")
        tile += _indent(st.tile_end("S"), 2)
        tile.append("}")
        inner = None
    else:
        inner += code.body + upd
    if inner is not None:
        tile += _simt_tile(st, spec, inner)
    jloop = [f"for (long long j0 = jb; j0 < je; j0 += {tj}) {{", *_indent(tile, 2), "}"]
    if ranges:  # the j intervals of the block's i-range, in order
        jloop = ["for (int v = vb; v < ve; ++v) {",
                 "  const long long jb = ivals[2LL * v], je = ivals[2LL * v + 1];",
                 *_indent(jloop, 2), "}"]
    body += jloop
    if ranges:
        body.append("if (active) {")
        body.append("  const long long row = b * nx + i;")
        body += _indent(st.finalize("S", "row"), 2)
        body.append("}")
        L += _indent(body, 4)
        L += ["  }", "}"]
        return "\n".join(L)
    body.append("if (active) {")
    body.append("  if (partial) {")
    body += _indent(st.store("S", "((long long)blockIdx.y * nbatch + b) * nx + i"), 4)
    body.append("  } else {")
    body.append("    const long long row = b * nx + i;")
    body += _indent(st.finalize("S", "row"), 4)
    body.append("  }")
    body.append("}")
    L += _indent(body, 4)
    L += ["  }", "}"]
    return "\n".join(L)


def _simt_tile(st, spec, inner) -> list[str]:
    """The j loop over a staged tile, one thread per row (the SIMT path)."""
    tile = ["if (active) {"]
    tile += _indent(st.tile_begin("S"), 2)
    tile.append(f"  #pragma unroll {_unroll(st, spec)}")
    tile.append("  for (int jj = 0; jj < tn; ++jj) {")
    tile += _indent(inner, 4)
    tile.append("  }")
    tile += _indent(st.tile_end("S"), 2)
    tile.append("}")
    return tile


def _unroll(st, spec) -> int:
    """Unrolling of the j loop: 4 for light states, less when the state already holds many
    registers (unrolling multiplies the live temporaries; ptxas would spill)."""
    regs = st.nf + st.ni + (st.w if spec.sum_scheme == "block_sum" and st.ni == 0 else 0)
    return 4 if regs <= 16 else (2 if regs <= 48 else 1)


def _combine_kernel(st, name, params):
    L = [_signature(name, params) + " {"]
    body = [
        "const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
        "if (t >= nx * nbatch) return;",
    ]
    body += st.init("A")
    body.append("for (long long c = 0; c < nchunks; ++c) {")
    body.append("  const long long w = c * nx * nbatch + t;")
    body += _indent(st.load("B", "w"), 2)
    body += _indent(st.combine("A", "B"), 2)
    body.append("}")
    body += st.finalize("A", "t")
    L += _indent(body, 2)
    L.append("}")
    return "\n".join(L)


PRELUDE = r"""// generated by polykeops.backends.cuda.kernel_source -- do not edit
#ifndef PK_HOST_EMULATION
#define PK_DEV __device__ __forceinline__
struct __align__(2) pk_bf16 { unsigned short bits; };
// float16 <-> float32 in PTX (no cuda_fp16.h: the sources include no header at all)
PK_DEV float pk_h2f(unsigned short h) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
PK_DEV unsigned short pk_f2h(float f) {
  unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
// bfloat16 <-> float32: the high half of a float's bits; rounded to nearest even (NaN kept quiet)
PK_DEV float pk_b2f(pk_bf16 b) { return __uint_as_float(((unsigned)b.bits) << 16); }
PK_DEV pk_bf16 pk_f2b(float f) {
  unsigned u = __float_as_uint(f);
  pk_bf16 b;
  b.bits = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u)
                                            : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return b;
}
PK_DEV float pk_inf_f() { return __int_as_float(0x7f800000); }
PK_DEV double pk_inf_d() { return __longlong_as_double(0x7ff0000000000000LL); }
PK_DEV float pk_nan_f() { return __int_as_float(0x7fffffff); }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// tensor cores (see polykeops.backends.cuda.mma): d += a b on a warp, fragments as in the PTX ISA
PK_DEV unsigned pk_tf32(float f) {
  unsigned u; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(f)); return u;
}
PK_DEV void pk_mma_f16(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
PK_DEV void pk_mma_bf16(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
PK_DEV void pk_mma_tf32(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
#endif
PK_DEV long long pk_minll(long long a, long long b) { return a < b ? a : b; }
PK_DEV float pk_ld(const float* p) { return *p; }
PK_DEV double pk_ld(const double* p) { return *p; }
PK_DEV float pk_ld(const unsigned short* p) { return pk_h2f(*p); }
PK_DEV float pk_ld(const pk_bf16* p) { return pk_b2f(*p); }
PK_DEV void pk_st(float* p, float v) { *p = v; }
PK_DEV void pk_st(float* p, double v) { *p = (float)v; }
PK_DEV void pk_st(double* p, double v) { *p = v; }
PK_DEV void pk_st(unsigned short* p, float v) { *p = pk_f2h(v); }
PK_DEV void pk_st(unsigned short* p, double v) { *p = pk_f2h((float)v); }
PK_DEV void pk_st(pk_bf16* p, float v) { *p = pk_f2b(v); }
PK_DEV void pk_st(pk_bf16* p, double v) { *p = pk_f2b((float)v); }
PK_DEV void pk_st(long long* p, long long v) { *p = v; }
// two 16-bit values in a 32-bit register, the first in the low half (mma operands; exact for
// values that came from float16 / bfloat16 data)
PK_DEV unsigned pk_tc_h2(float lo, float hi) {
  return (unsigned)pk_f2h(lo) | ((unsigned)pk_f2h(hi) << 16);
}
PK_DEV unsigned pk_tc_b2(float lo, float hi) {
  return (unsigned)pk_f2b(lo).bits | ((unsigned)pk_f2b(hi).bits << 16);
}
PK_DEV float pk_round_h(float x) { return pk_h2f(pk_f2h(x)); }
PK_DEV float pk_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }
PK_DEV double pk_sign(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0); }
PK_DEV float pk_abs(float x) { return fabsf(x); }
PK_DEV double pk_abs(double x) { return fabs(x); }
// the shift of a max-shifted sum: the max itself, or 0 when it is infinite or NaN
PK_DEV float pk_safe(float m) { return (m - m == 0.0f) ? m : 0.0f; }
PK_DEV double pk_safe(double m) { return (m - m == 0.0) ? m : 0.0; }
PK_DEV float pk_maxnan(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
PK_DEV double pk_maxnan(double a, double b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
// order of the K-min lists: NaN first, then ascending values, ties by index; empty slots (index < 0) last
template <typename V, typename I>
PK_DEV bool pk_before(V a, I ia, V b, I ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  if (a != a) return b == b || ia < ib;
  return a < b || (a == b && ia < ib);
}
"""
