"""Run generated CUDA kernels on the CPU: the same source, compiled as host C++ (tests only).

No GPU is needed to check that the *generated code* computes the right thing:
the kernel text of :mod:`.kernel_source` is compiled by the host C++ compiler with a
small prelude that defines the few CUDA built-ins it uses (``threadIdx``,
``blockIdx``, ``__syncthreads``, ``__shared__``, half conversions), and a
launcher per kernel runs the grid block by block, with the threads of a block
as real threads meeting at a ``std::barrier`` for ``__syncthreads``.  Inputs
and outputs are NumPy arrays.  This exercises every index computation, tile
boundary, batch stride, partial state and combine rule of the real kernels; it
does not exercise NVRTC's code generation (that is what the NVRTC compile tests
and the GPU run are for) nor the performance.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading

import numpy as np

from ...errors import BackendError
from .kernel_source import generate
from .launch import plan_launch, run_reduction
from .ranges import block_map, empty_outputs

HOST_PRELUDE = r"""
#include <cmath>
#include <cstring>
#include <cstdint>
#include <thread>
#include <vector>
#include <barrier>
#include <memory>
#define PK_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__
#define PK_DEV static inline
struct pk_dim3 { unsigned x, y, z; };
static thread_local pk_dim3 threadIdx, blockIdx;
static pk_dim3 blockDim, gridDim;
static std::barrier<>* pk_barrier = nullptr;
static inline void __syncthreads() { pk_barrier->arrive_and_wait(); }
// a warp: its barrier (__syncwarp, the warp-wide mma) and the fragments its lanes exchange
struct pk_warp_t {
  std::barrier<>* bar;
  unsigned a[32][4];
  unsigned b[32][2];
};
static thread_local pk_warp_t* pk_warp_of = nullptr;
static inline void __syncwarp() { pk_warp_of->bar->arrive_and_wait(); }
static inline float pk_inf_f() { return INFINITY; }
static inline double pk_inf_d() { return (double)INFINITY; }
static inline float pk_nan_f() { return NAN; }
struct alignas(2) pk_bf16 { unsigned short bits; };
static inline float pk_b2f(pk_bf16 b) {
  uint32_t u = ((uint32_t)b.bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
static inline pk_bf16 pk_f2b(float f) {  // round to nearest even; NaN stays a quiet NaN
  uint32_t u; std::memcpy(&u, &f, 4);
  pk_bf16 b;
  b.bits = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u)
                                            : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return b;
}
static inline float pk_h2f(unsigned short h) {
  unsigned sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float v;
  if (exp == 0) v = std::ldexp((float)man, -24);
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = std::ldexp((float)(man | 0x400u), (int)exp - 25);
  return sign ? -v : v;
}
static inline unsigned short pk_f2h(float f) {  // round to nearest even
  uint32_t x; std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
  if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // overflow -> inf
  if (ax < 0x38800000u) {  // subnormal half (or zero)
    float a; std::memcpy(&a, &ax, 4);
    float scaled = a * 16777216.0f;  // 2^24: units of the smallest subnormal
    float r = std::nearbyint(scaled);
    return (unsigned short)(sign | (uint32_t)r);
  }
  uint32_t e = ((ax >> 23) - 112) << 10;
  uint32_t m = ax & 0x7fffffu;
  uint32_t h = e | (m >> 13);
  uint32_t rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;
  return (unsigned short)(sign | h);
}
// float -> TF32 (cvt.rna.tf32.f32): 10-bit mantissa, rounded to nearest, ties away from zero
static inline unsigned pk_tf32(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN
  return (u + 0x1000u) & 0xffffe000u;
}
static inline float pk_bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
// The mma of a warp, from the PTX ISA's fragment tables read the other way round: which lane
// and register hold element (r, k) of A and (k, n) of B.  m16n8k16 (.f16/.bf16): A(r, k) in
// lane 4 (r % 8) + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2; B(k, n) in lane
// 4 n + (k % 8) / 2, register k / 8, half k % 2.  m16n8k8 (.tf32): A(r, k) in lane 4 (r % 8) + k % 4,
// register r / 8 + 2 (k / 4); B(k, n) in lane 4 n + k % 4, register k / 4 (the tensor core reads
// the top 19 bits).  D(r, n) in lane 4 (r % 8) + n / 2, register 2 (r / 8) + n % 2.
static float pk_emu_in(unsigned word, int half, int mode) {
  if (mode == 2) return pk_bits_f(word & 0xffffe000u);
  unsigned short bits = (unsigned short)(word >> (16 * half));
  if (mode == 1) { pk_bf16 b; b.bits = bits; return pk_b2f(b); }
  return pk_h2f(bits);
}
static void pk_mma_emu(float* d, const unsigned* a, const unsigned* b, int mode) {
  pk_warp_t* w = pk_warp_of;
  const int l = (int)(threadIdx.x & 31u);
  for (int q = 0; q < 4; ++q) w->a[l][q] = a[q];
  for (int q = 0; q < 2; ++q) w->b[l][q] = b[q];
  w->bar->arrive_and_wait();
  const int K = mode == 2 ? 8 : 16;
  float out[4];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      if (4 * (r % 8) + n / 2 != l) continue;
      double s = 0.0;
      for (int k = 0; k < K; ++k) {
        float x, y;
        if (mode == 2) {
          x = pk_emu_in(w->a[4 * (r % 8) + k % 4][r / 8 + 2 * (k / 4)], 0, 2);
          y = pk_emu_in(w->b[4 * n + k % 4][k / 4], 0, 2);
        } else {
          x = pk_emu_in(w->a[4 * (r % 8) + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2, mode);
          y = pk_emu_in(w->b[4 * n + (k % 8) / 2][k / 8], k % 2, mode);
        }
        s += (double)x * (double)y;
      }
      const int reg = 2 * (r / 8) + n % 2;
      out[reg] = (float)((double)d[reg] + s);
    }
  w->bar->arrive_and_wait();
  for (int q = 0; q < 4; ++q) d[q] = out[q];
}
static inline void pk_mma_f16(float* d, const unsigned* a, const unsigned* b) { pk_mma_emu(d, a, b, 0); }
static inline void pk_mma_bf16(float* d, const unsigned* a, const unsigned* b) { pk_mma_emu(d, a, b, 1); }
static inline void pk_mma_tf32(float* d, const unsigned* a, const unsigned* b) { pk_mma_emu(d, a, b, 2); }
"""

_lock = threading.Lock()
_modules: dict[str, object] = {}  # library key -> ctypes.CDLL
_by_source: dict[str, object] = {}  # TranslationUnit digest -> the library holding its kernels


def compiler() -> str | None:
    """The host C++ compiler the emulator uses (``$CXX`` or ``g++``/``clang++``), if any."""
    for cand in (os.environ.get("CXX"), "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _c_type(t: str) -> str:
    t = t.replace("__restrict__", "").strip()
    return t


def _launcher(name: str, params) -> str:
    decls = ", ".join(f"*({_c_type(t).replace('const ', '', 1) if '*' not in t else _c_type(t)}*)p[{k}]"
                      for k, (t, _n) in enumerate(params))
    return f"""
extern "C" void pk_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, void** p) {{
  gridDim = pk_dim3{{gx, gy, gz}};
  blockDim = pk_dim3{{bx, 1, 1}};
  for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {{
    std::barrier<> bar((std::ptrdiff_t)bx);
    pk_barrier = &bar;
    const unsigned nw = (bx + 31) / 32;
    std::vector<std::unique_ptr<std::barrier<>>> wbar;
    std::vector<pk_warp_t> warps(nw);
    for (unsigned q = 0; q < nw; ++q) {{
      wbar.emplace_back(new std::barrier<>((std::ptrdiff_t)(bx - 32 * q < 32 ? bx - 32 * q : 32)));
      warps[q].bar = wbar.back().get();
    }}
    pk_warp_t* wp = warps.data();
    std::vector<std::thread> ts;
    ts.reserve(bx);
    for (unsigned t = 0; t < bx; ++t) ts.emplace_back([=]() {{
      threadIdx = pk_dim3{{t, 0, 0}};
      blockIdx = pk_dim3{{x, y, z}};
      pk_warp_of = wp + t / 32;
      {name}({decls});
    }});
    for (auto& th : ts) th.join();
  }}
}}
"""


def build(*sources):
    """Compile the kernels of one or several :class:`.kernel_source.TranslationUnit` into one host library.

    Building many specs at once costs one compiler run (the C++ headers dominate).
    """
    cxx = compiler()
    if cxx is None:
        raise BackendError("the CUDA emulator needs a C++20 compiler (g++ or clang++)")
    from .kernel_source import PRELUDE

    text = HOST_PRELUDE + PRELUDE
    for ks in sources:
        text += ks.body
        for sl in ks.slices:
            text += _launcher(sl.main, ks.main_params) + _launcher(sl.combine, ks.combine_params)
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    with _lock:
        lib = _modules.get(key)
        if lib is None:
            tmp = tempfile.mkdtemp(prefix="pk-cuda-emu-")
            src = os.path.join(tmp, "k.cpp")
            so = os.path.join(tmp, "k.so")
            with open(src, "w") as fh:
                fh.write(text)
            cmd = [cxx, "-std=c++20", "-O0", "-shared", "-fPIC", "-pthread", "-w", src, "-o", so]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise BackendError(f"emulator build failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
            lib = ctypes.CDLL(so)
            _modules[key] = lib
        for ks in sources:
            _by_source[ks.digest] = lib
        return lib


class _Executor:
    def __init__(self, lib):
        self.lib = lib
        self.keep = []

    def workspace(self, nf, ni):
        f = np.full(max(nf, 1), np.nan, dtype=np.float64)  # NaN: reading an unwritten state shows
        i = np.full(max(ni, 1), -7, dtype=np.int64)
        self.keep += [f, i]
        return f.ctypes.data, i.ctypes.data

    def upload(self, array):
        a = np.ascontiguousarray(array, dtype=np.int64)
        self.keep.append(a)
        return a.ctypes.data

    def launch(self, name, grid, block, params):
        from .driver import pack_params

        arr, _vals = pack_params(params)
        fn = getattr(self.lib, f"pk_launch_{name}")
        fn(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(grid[2]),
           ctypes.c_uint(block), arr)


def kernel_source(spec, *, n_batch_dims=0, idx64=False, tile_j=None, ranges=False, arch=None):
    """The generated kernels the emulator runs for ``spec`` (same options as :func:`evaluate`;
    ``ranges``: the block-sparse kernels; ``arch``: the target they are rendered for, e.g.
    ``"sm_80"`` for the tensor-core path, whose ``mma`` the emulator computes warp by warp)."""
    return generate(spec, n_batch_dims=n_batch_dims, idx64=idx64, tile_j=tile_j, ranges=ranges,
                    arch=arch)


#: NumPy storage of each dtype (NumPy has no bfloat16: its arrays hold the bits, as uint16)
_NP = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32, "float64": np.float64}


def evaluate(spec, args, *, nx, ny, batch_shape, ranges=None, block=None, scheme="auto",
             sm_count=1, idx64=False, tile_j=None, arch=None):
    """Evaluate a canonical spec on NumPy arrays with the emulated kernels (contract of
    :meth:`polykeops.backends.contract.Backend.evaluate`, ``ranges`` included; the other
    options choose the launch: threads per block (at most, with ranges), "1d"/"2d"/"auto"
    scheme (ignored with ranges: always 1D), tile size; ``arch``: the target the kernels are
    rendered for (see :func:`kernel_source`))."""
    batch_shape = tuple(batch_shape)
    ks = kernel_source(spec, n_batch_dims=len(batch_shape), idx64=idx64, tile_j=tile_j,
                       ranges=ranges is not None, arch=arch)
    lib = _by_source.get(ks.digest) or build(ks)
    args = [np.ascontiguousarray(a, dtype=_NP[spec.dtype]) for a in args]
    outs = [
        np.empty(batch_shape + (nx, o.dim), dtype=np.int64 if o.kind == "index" else _NP[spec.dtype])
        for o in spec.outputs()
    ]
    bmap = None
    if ranges is not None:
        for o, fill in zip(outs, empty_outputs(spec)):
            o[...] = np.asarray(fill, dtype=o.dtype)
        bmap = block_map(ranges, batch_shape, nx, ny, block or ks.block)
    if nx == 0 or math.prod(batch_shape) == 0:
        return tuple(outs)
    if bmap is not None:
        plan = bmap.plan(ny)
    else:
        plan = plan_launch(nx, ny, math.prod(batch_shape) if batch_shape else 1, tile_j=ks.tile_j,
                           block=block or ks.block, max_threads=1024, sm_count=sm_count, scheme=scheme)
    ex = _Executor(lib)
    run_reduction(ks, ex, [a.ctypes.data for a in args], [a.shape for a in args],
                  [o.ctypes.data for o in outs], nx=nx, ny=ny, batch_shape=batch_shape, plan=plan,
                  block_map=bmap)
    return tuple(outs)
