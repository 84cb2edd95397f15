"""Tensor-core blocks of inner products in the CUDA kernels (``mma.sync``, sm_80 and newer).

When a formula reads inner products ``x_i . y_j`` or squared distances ``|x_i - y_j|^2``
of dimension ``D >= MIN_DIM`` between an i-variable and a j-variable (found by
:mod:`polykeops.formula.inner_products`), and the target and the data allow it
(:func:`tensor_core_mode`), the main kernel computes them with warp-level matrix
multiply-adds: for each chunk of :data:`CHUNK` columns of the j tile (already in
shared memory), every warp multiplies its 32 rows (two m16 tiles) by the chunk
(two n8 tiles), ``K`` components at a time, into FP32 accumulators, and stores the
32 x CHUNK block to a per-warp buffer ``pk_g<q>`` in shared memory; then each thread
runs the rest of the formula for its row and the chunk's columns, reading the block
as the value of the product's node.  The warp's A fragments (its rows of ``x``) stay in
registers for the whole j loop when they fit in :data:`PRELOAD_REGS` registers (D <= 64 in
f16/bf16, D <= 32 in TF32); wider ones are re-read (through L1) for every chunk.

Modes (``pk_mma_<mode>`` in the kernel prelude; PTX ``mma.sync.aligned...row.col``):

* ``"f16"`` -- float16 data: ``m16n8k16 .f32.f16.f16.f32``; products exact, FP32
  accumulation (the SIMT path computes in float32 too);
* ``"bf16"`` -- bfloat16 data: ``m16n8k16 .f32.bf16.bf16.f32``, likewise;
* ``"tf32"`` -- float32 data with ``precision="tf32"`` only: ``m16n8k8 .f32.tf32.tf32.f32``,
  inputs rounded to TF32 (10-bit mantissa, ``cvt.rna.tf32.f32``): about 3 decimal digits
  per product, like torch's ``allow_tf32``.

Squared distances are formed as ``|x|^2 + |y|^2 - 2 x.y`` (row norms once per row,
column norms once per tile, both in float32) and recomputed in the difference form
``sum_k (x_k - y_k)^2`` (float32, the SIMT path's arithmetic) where the expansion
cancels -- value below ``TAU * (|x|^2 + |y|^2)`` -- or a norm is not finite or above
``BIG`` (NaN propagates, infinities stay infinite), as the CPU blocks do
(:mod:`polykeops.backends.cpu.ipblock`).  ``TAU`` is 1/32 for 16-bit data (the rounding
error of the block is a float32 one) and 1/8 for TF32 (its error is ``2^-11`` relative per
product, so a kept value has a relative error below about ``2^-11 * 2 / TAU = 0.1 %``).

Fragment layouts are those of the PTX ISA ("Matrix fragments for mma.m16n8k16 with
floating point type", "... mma.m16n8k8 ... .tf32"): lane ``l``, ``g = l / 4``,
``t = l % 4``; A element ``(row, k)``, B element ``(k, col)``, C/D element ``(row, col)``.
The host emulator (:mod:`.emulator`) implements ``pk_mma_<mode>`` from the same tables,
written the other way round (which lane holds an element), so CI checks this module's
index arithmetic against dense NumPy without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula.inner_products import SQDIST, between_variables, find_inner_products

#: smallest inner-product dimension computed on tensor cores: one k-step of an m16n8k16 fragment
#: (two of m16n8k8 for tf32); the CPU blocks' threshold, inner_products.MIN_DIM, is a measured one
MIN_DIM = 16
#: columns of j per block product (two n8 tiles)
CHUNK = 16
#: row pitch (floats) of a warp's block buffer (CHUNK + 1: no bank conflict on the row reads)
PITCH = CHUNK + 1
#: at most this many products per kernel use tensor cores (each needs a block buffer)
MAX_PRODUCTS = 2
#: smallest architecture with mma.sync for f16/bf16/tf32 at m16n8k16 / m16n8k8
MIN_ARCH = 80
#: A fragments (the warp's rows) stay in registers across the j loop when they take at most
#: this many 32-bit registers per thread (8 per k step: two m16 tiles); otherwise they are
#: re-read (from L1) for every chunk
PRELOAD_REGS = 32
#: norms above this are not expanded (the difference form keeps inf, NaN and huge values)
BIG = 4.0e37

MODES = ("f16", "bf16", "tf32")
#: K of one mma per mode
K_STEP = {"f16": 16, "bf16": 16, "tf32": 8}
#: cancellation threshold of the squared-distance expansion per mode (see the module docstring)
TAU = {"f16": 1 / 32, "bf16": 1 / 32, "tf32": 1 / 8}
_PACK = {"f16": "pk_tc_h2", "bf16": "pk_tc_b2"}


def arch_number(arch) -> int | None:
    """``90`` from ``"sm_90"``, ``"sm_90a"``, ``"compute_90"``, ``90`` or ``(9, 0)``; None stays None."""
    if arch is None:
        return None
    if isinstance(arch, tuple):
        return arch[0] * 10 + arch[1]
    if isinstance(arch, int):
        return arch
    digits = "".join(c for c in str(arch).split("_")[-1] if c.isdigit())
    return int(digits) if digits else None


def tensor_core_mode(spec, arch) -> str | None:
    """The tensor-core mode of ``spec`` on architecture ``arch`` (``sm_XY``, an int XY or None:
    no tensor cores), or None: float16 -> "f16", bfloat16 -> "bf16", float32 -> "tf32" only
    with ``precision="tf32"``; float64 never."""
    a = arch_number(arch)
    if a is None or a < MIN_ARCH:
        return None
    if spec.dtype == "float16":
        return "f16"
    if spec.dtype == "bfloat16":
        return "bf16"
    if spec.dtype == "float32" and spec.precision == "tf32":
        return "tf32"
    return None


@dataclass(frozen=True)
class TcProduct:
    """One inner product of a kernel computed on tensor cores; its block buffer is ``pk_g<q>``."""

    q: int
    product: object  # polykeops.formula.inner_products.InnerProduct
    xvar: object  # the i-variable
    yvar: object  # the j-variable

    @property
    def dim(self) -> int:
        return self.product.dim

    @property
    def sqdist(self) -> bool:
        return self.product.kind == SQDIST

    @property
    def value(self) -> str:
        """The C variable holding the product's value for (row, column jj) in the j loop."""
        return f"pk_ipv{self.q}"


def tc_products(formulas, min_dim: int = MIN_DIM) -> list[TcProduct]:
    """The inner products of ``formulas`` computed on tensor cores: one dot product or squared
    distance between an i-variable and a j-variable (at most :data:`MAX_PRODUCTS`)."""
    out = []
    for p in find_inner_products(formulas, min_dim=min_dim):
        if between_variables(p) and len(out) < MAX_PRODUCTS:
            out.append(TcProduct(len(out), p, p.x, p.y))
    return out


def smem_bytes(products, warps: int, tile_j: int) -> int:
    """Static shared memory of the block buffers and column norms."""
    g = len(products) * warps * 32 * PITCH * 4
    n = sum(tile_j * 4 for tp in products if tp.sqdist)
    return g + n


def buffers(products, warps: int, tile_j: int) -> list[str]:
    """Declarations of the shared buffers (kernel scope)."""
    L = []
    for tp in products:
        L.append(f"__shared__ float pk_g{tp.q}[{warps * 32 * PITCH}];")
        if tp.sqdist:
            L.append(f"__shared__ float pk_yn{tp.q}[{tile_j}];")
    return L


def steps(tp: TcProduct, mode: str) -> int:
    """k steps (mma calls per pair of tiles) of a product."""
    return -(-tp.dim // K_STEP[mode])


def preloaded(tp: TcProduct, mode: str) -> bool:
    """Whether the A fragments of ``tp`` are loaded once, before the j loop (:data:`PRELOAD_REGS`)."""
    return steps(tp, mode) * 8 <= PRELOAD_REGS


def row_setup(products, IN: str, mode: str) -> list[str]:
    """Once per batch entry, before the j loop: the warp's A-row pointers and validity (rows
    ``16 mt + g + 8 h`` of the warp), the A fragments when they are kept in registers
    (:func:`preloaded`), and each thread's row norm for squared distances."""
    L = [
        "const int pk_lane = threadIdx.x & 31;",
        "const int pk_gi = pk_lane >> 2, pk_ti = pk_lane & 3;",
    ]
    for tp in products:
        D, x = tp.dim, tp.xvar.index
        for mt in range(2):
            for h in range(2):
                L.append(f"const long long pk_row{tp.q}_{mt}{h} = pk_wrow + {16 * mt + 8 * h} + pk_gi;")
                L.append(f"const bool pk_ok{tp.q}_{mt}{h} = pk_row{tp.q}_{mt}{h} < pk_rend;")
                L.append(f"const {IN}* __restrict__ pk_xr{tp.q}_{mt}{h} = pk_xb{x} + "
                         f"(pk_ok{tp.q}_{mt}{h} ? pk_row{tp.q}_{mt}{h} : 0) * {D};")
        if preloaded(tp, mode):
            S = steps(tp, mode)
            L.append(f"unsigned pk_A{tp.q}[{S}][2][4];")
            L.append("#pragma unroll")
            L.append(f"for (int pk_s = 0; pk_s < {S}; ++pk_s) {{")
            L.append(f"  const int k0 = pk_s * {K_STEP[mode]};")
            L += ["  " + x for x in _a_loads(tp, mode, lambda mt, r, q=tp.q: f"pk_A{q}[pk_s][{mt}][{r}]")]
            L.append("}")
        if tp.sqdist:
            L += [f"float pk_xn{tp.q} = 0.0f;",
                  f"for (int k = 0; k < {D}; ++k) {{ const float v = pk_ld(r{x} + k); "
                  f"pk_xn{tp.q} += v * v; }}"]
    return L


def tile_norms(products, jrow: int, j_base) -> list[str]:
    """After the tile is staged (then a __syncthreads): the column norms of squared distances."""
    L = []
    for tp in products:
        if not tp.sqdist:
            continue
        D, base = tp.dim, j_base[tp.yvar.index]
        L.append(
            f"for (int t = threadIdx.x; t < tn; t += blockDim.x) {{ float s = 0.0f; "
            f"for (int k = 0; k < {D}; ++k) {{ const float v = sj[t * {jrow} + {base} + k]; s += v * v; }} "
            f"pk_yn{tp.q}[t] = s; }}"
        )
    return L


def chunk_block(tp: TcProduct, mode: str, jrow: int, j_base) -> list[str]:
    """Run by all 32 lanes of every warp for the chunk of columns ``[jc, jc + CHUNK)``: the
    warp's 32 x CHUNK block of ``x . y`` into ``pk_g<q>`` (columns at or past ``tn`` and
    components at or past D read as 0)."""
    q, D = tp.q, tp.dim
    base = j_base[tp.yvar.index]
    ks = K_STEP[mode]
    L = ["{"]
    L.append("  " + " ".join(f"float pk_c{m}{n}[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};"
                             for m in range(2) for n in range(2)))

    def yb(n, k):  # B element (component k, column jc + 8 n + g) as float
        col = f"(jc + {8 * n} + pk_gi)"
        return f"({col} < tn && {k} < {D} ? sj[{col} * {jrow} + {base} + {k}] : 0.0f)"

    pre = preloaded(tp, mode)
    if pre:  # A fragments in registers (row_setup): a fully unrolled loop over the k steps
        L.append("  #pragma unroll")
        L.append(f"  for (int pk_s = 0; pk_s < {steps(tp, mode)}; ++pk_s) {{")
        L.append(f"    const int k0 = pk_s * {ks};")
        L.append("    unsigned pk_b0[2], pk_b1[2];")
    else:
        L.append(f"  #pragma unroll {4 if D <= 256 else 2}")
        L.append(f"  for (int k0 = 0; k0 < {D}; k0 += {ks}) {{")
        L.append("    unsigned pk_a0[4], pk_a1[4], pk_b0[2], pk_b1[2];")
        L += ["    " + x for x in _a_loads(tp, mode, lambda mt, r: f"pk_a{mt}[{r}]")]
    if mode == "tf32":
        # B (8 x 8): reg r holds (k t + 4 r, col g)
        for n in range(2):
            for r in range(2):
                L.append(f"    pk_b{n}[{r}] = pk_tf32({yb(n, f'k0 + pk_ti + {4 * r}')});")
    else:
        # B (16 x 8): reg r holds (k 2 t + 8 r + {0, 1}, col g), the lower k in the low half
        pack = _PACK[mode]
        for n in range(2):
            for r in range(2):
                k = f"k0 + 2 * pk_ti + {8 * r}"
                L.append(f"    pk_b{n}[{r}] = {pack}({yb(n, k)}, {yb(n, k + ' + 1')});")
    for m in range(2):
        for n in range(2):
            a = f"pk_A{q}[pk_s][{m}]" if pre else f"pk_a{m}"
            L.append(f"    pk_mma_{mode}(pk_c{m}{n}, {a}, pk_b{n});")
    L.append("  }")
    # C/D (16 x 8): reg r holds (row g + 8 (r / 2), col 2 t + (r % 2))
    L.append(f"  float* __restrict__ pk_gw = pk_g{q} + (threadIdx.x >> 5) * {32 * PITCH};")
    for m in range(2):
        for n in range(2):
            for r in range(4):
                row = f"({16 * m + 8 * (r // 2)} + pk_gi)"
                col = f"{8 * n + r % 2} + 2 * pk_ti"
                L.append(f"  pk_gw[{row} * {PITCH} + {col}] = pk_c{m}{n}[{r}];")
    L.append("}")
    return L


def _a_loads(tp: TcProduct, mode: str, dest) -> list[str]:
    """Lines loading the A fragments of the k step at ``k0`` into ``dest(mt, r)`` (m16 tile mt,
    register r) from the warp's rows (rows past the end and components past D read as 0)."""
    q, D = tp.q, tp.dim

    def xa(mt, h, k):  # A element (row 16 mt + g + 8 h, component k) as float
        return f"(pk_ok{q}_{mt}{h} && {k} < {D} ? pk_ld(pk_xr{q}_{mt}{h} + {k}) : 0.0f)"

    L = []
    for mt in range(2):
        for r in range(4):
            if mode == "tf32":  # A (16 x 8): reg r holds (row g + 8 (r % 2), k t + 4 (r / 2))
                L.append(f"{dest(mt, r)} = pk_tf32({xa(mt, r % 2, f'k0 + pk_ti + {4 * (r // 2)}')});")
            else:  # A (16 x 16): reg r holds (row g + 8 (r % 2), k 2 t + 8 (r / 2) + {0, 1})
                k = f"k0 + 2 * pk_ti + {8 * (r // 2)}"
                L.append(f"{dest(mt, r)} = {_PACK[mode]}({xa(mt, r % 2, k)}, {xa(mt, r % 2, k + ' + 1')});")
    return L


def pair_value(tp: TcProduct, mode: str, jrow: int, j_base) -> list[str]:
    """In the j loop (row of the thread, column ``jj``): ``pk_ipv<q>``, the product's value."""
    q, D, x = tp.q, tp.dim, tp.xvar.index
    base = j_base[tp.yvar.index]
    v = tp.value
    L = [f"float {v} = pk_g{q}[(threadIdx.x >> 5) * {32 * PITCH} + pk_lane * {PITCH} + (jj - jc)];"]
    if tp.sqdist:
        tau = f"{TAU[mode]!r}f"
        L += [
            "{",
            f"  const float pk_n = pk_xn{q} + pk_yn{q}[jj];",
            f"  const float pk_e = pk_n - 2.0f * {v};",
            f"  if (pk_e >= {tau} * pk_n && pk_n <= {BIG!r}f) {{",
            f"    {v} = pk_e;",
            "  } else {  // cancellation, or a norm not finite: the difference form",
            "    float pk_s = 0.0f;",
            f"    for (int k = 0; k < {D}; ++k) {{ const float pk_d = pk_ld(r{x} + k) - "
            f"sj[jj * {jrow} + {base} + k]; pk_s += pk_d * pk_d; }}",
            f"    {v} = pk_s;",
            "  }",
            "}",
        ]
    scale = float(tp.product.scale)
    if scale != 1.0:
        L.append(f"{v} *= {scale!r}f;")
    return L
