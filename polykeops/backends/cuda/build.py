"""From a spec to a cubin: code generation (memoised) and NVRTC compilation (cached on disk)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ...errors import BackendError
from . import cache, nvrtc
from .cubin import KernelResources, kernel_resources
from .kernel_source import TranslationUnit, generate


@functools.lru_cache(maxsize=512)
def kernel_source(spec, n_batch_dims: int = 0, idx64: bool = False,
                  ranges: bool = False, arch: str | None = None) -> TranslationUnit:
    """The generated kernels of a canonical spec (memoised: specs are hashable values);
    ``ranges``: the block-sparse variant; ``arch``: the target (``"sm_80"`` and newer render
    tensor-core inner products where the dtype and ``precision`` allow, see :mod:`.mma`)."""
    return generate(spec, n_batch_dims=n_batch_dims, idx64=idx64, ranges=ranges, arch=arch)


@dataclass(frozen=True)
class Built:
    binary: bytes
    kind: str  # "cubin" or "ptx"
    arch: str  # "sm_90"
    log: str  # NVRTC log ("" when the binary came from the disk cache)
    cached: bool

    def resources(self) -> dict[str, KernelResources]:
        """Registers, shared and local memory of every kernel (cubins only)."""
        if self.kind != "cubin":
            return {}
        return kernel_resources(self.binary)


def target_for(cc: tuple[int, int]) -> tuple[str, str]:
    """``(kind, arch)`` to compile for a device of compute capability ``cc``.

    A cubin for the exact architecture when NVRTC supports it; PTX for the newest
    architecture NVRTC knows when the device is newer (the driver compiles it).
    """
    wanted = cc[0] * 10 + cc[1]
    archs = nvrtc.supported_archs()
    if wanted in archs:
        return "cubin", f"sm_{wanted}"
    if archs and wanted > max(archs):
        return "ptx", f"sm_{max(archs)}"
    major, minor = nvrtc.version()
    raise BackendError(
        f"this GPU (compute capability {cc[0]}.{cc[1]}) is not supported by NVRTC {major}.{minor}, "
        f"which compiles for sm_{min(archs)} to sm_{max(archs)}"
    )


def build(source: str, arch: str, kind: str = "cubin", *, use_cache: bool = True,
          options: tuple = ()) -> Built:
    """Compile ``source`` for ``arch`` (``"sm_90"``), through the disk cache."""
    arch = nvrtc.normalize_arch(arch)
    version = nvrtc.version()
    all_options = tuple(nvrtc.DEFAULT_OPTIONS) + tuple(options)
    log = []

    def compile_now() -> bytes:
        out = nvrtc.compile_source(source, arch, options=options, kind=kind)
        log.append(out.log)
        return out.binary

    if not use_cache:
        binary = compile_now()
        return Built(binary, kind, arch, log[0], False)
    key = cache.make_key(source, all_options, arch, version, kind)
    binary, built = cache.get_or_build(key, kind, compile_now)
    if kind == "cubin":
        try:
            kernel_resources(binary)
        except Exception:  # a damaged file that passed the checksum: rebuild without the cache
            binary, built = compile_now(), True
    return Built(binary, kind, arch, log[0] if log else "", not built)


def compile_specs(specs, arch: str = "sm_90", *, n_batch_dims: int = 0, idx64: bool = False,
                  use_cache: bool = False, ranges: bool = False) -> tuple[Built, dict]:
    """Compile the kernels of several canonical specs in ONE translation unit (no GPU needed).

    Returns the build and ``{spec: TranslationUnit}``; raises :class:`.nvrtc.CompileError`
    with the NVRTC log if any kernel fails.  This is how the test suites check code
    generation in CI: one NVRTC run for many specs is much cheaper than one per spec.
    """
    from .kernel_source import PRELUDE

    sources = {}
    for spec in specs:
        spec = spec.canonical()
        if spec not in sources:
            sources[spec] = kernel_source(spec, n_batch_dims, idx64, ranges, nvrtc.normalize_arch(arch))
    text = PRELUDE + "".join(ks.body for ks in sources.values())
    return build(text, arch, use_cache=use_cache), sources
