"""NVRTC through ``cuda.bindings.nvrtc``: CUDA C -> cubin (or PTX), with no CUDA toolkit.

The NVRTC library comes from the ``nvidia-cuda-nvrtc`` wheel (found by
``cuda.pathfinder``, which ``cuda.bindings`` uses); no system CUDA, no nvcc,
no C++ compiler.  The generated sources include no header, so nothing else is
needed.  Kernels are compiled to a cubin for the exact architecture of the
device (``-arch=sm_XY``), which avoids the PTX-version mismatches a newer NVRTC
can cause with an older driver; ``--ptxas-options=-v`` makes the log report the
registers, spills and shared memory of every kernel.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from ...errors import BackendError

#: options of every compilation (IEEE semantics: no fast math, which would break NaN/inf rules)
DEFAULT_OPTIONS = ("-default-device", "-std=c++17", "--ptxas-options=-v")

_lock = threading.Lock()


class NvrtcMissing(BackendError):
    """cuda-python or the NVRTC library is not installed."""


class CompileError(BackendError):
    """NVRTC rejected a generated source; the message holds its log."""

    def __init__(self, message: str, log: str = "", source: str = ""):
        super().__init__(message)
        self.log = log
        self.source = source


def _module():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NvrtcMissing(
            "cuda-python is not installed: pip install 'polykeops[cuda]' "
            f"(cuda-python and nvidia-cuda-nvrtc) ({exc})"
        ) from None
    return nvrtc


def _check(nvrtc, result, what: str):
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise BackendError(f"NVRTC {what} failed: {msg.decode() if isinstance(msg, bytes) else msg}")
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def version() -> tuple[int, int]:
    """The NVRTC version ``(major, minor)``; raises :class:`NvrtcMissing` if it cannot be loaded."""
    nvrtc = _module()
    try:
        res = nvrtc.nvrtcVersion()
    except Exception as exc:  # the library itself could not be loaded
        raise NvrtcMissing(
            f"the NVRTC library was not found: pip install nvidia-cuda-nvrtc ({type(exc).__name__}: {exc})"
        ) from None
    major, minor = _check(nvrtc, res, "version query")
    return int(major), int(minor)


def supported_archs() -> list[int]:
    """Compute capabilities NVRTC can compile for (e.g. ``[75, 80, 86, ..., 120]``)."""
    nvrtc = _module()
    version()
    return [int(a) for a in _check(nvrtc, nvrtc.nvrtcGetSupportedArchs(), "arch query")]


@dataclass(frozen=True)
class Compiled:
    """The output of one NVRTC compilation."""

    binary: bytes  # cubin, or PTX text (NUL-terminated) when ``kind == "ptx"``
    kind: str  # "cubin" or "ptx"
    arch: str  # "sm_90"
    log: str


def normalize_arch(arch) -> str:
    """``"sm_90"`` from ``"sm_90"``, ``"90"``, ``90`` or ``(9, 0)``."""
    if isinstance(arch, tuple):
        return f"sm_{arch[0]}{arch[1]}"
    text = str(arch).strip().lower()
    m = re.fullmatch(r"(?:sm_|compute_)?(\d+)([a-z]?)", text)
    if not m:
        raise BackendError(f"invalid CUDA architecture {arch!r}; use a form like sm_90")
    return f"sm_{m.group(1)}{m.group(2)}"


def compile_source(source: str, arch, *, options=(), kind: str = "cubin",
                   name: str = "polykeops.cu") -> Compiled:
    """Compile ``source`` for ``arch`` with NVRTC; raises :class:`CompileError` with the log."""
    nvrtc = _module()
    version()
    arch = normalize_arch(arch)
    if kind == "ptx":
        arch_opt = "compute_" + arch[3:]
    else:
        arch_opt = arch
    opts = [f"-arch={arch_opt}", *DEFAULT_OPTIONS, *options]
    if kind == "ptx":
        opts = [o for o in opts if not o.startswith("--ptxas-options")]
    bopts = [o.encode() for o in opts]
    if True:  # NVRTC programs are independent: compilations may run in parallel threads
        prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                      "program creation")
        try:
            res = nvrtc.nvrtcCompileProgram(prog, len(bopts), bopts)
            log = _log(nvrtc, prog)
            if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                raise CompileError(
                    f"NVRTC failed to compile the generated CUDA code for {arch} "
                    f"(options {' '.join(opts)}):\n{log}",
                    log,
                    source,
                )
            if kind == "ptx":
                size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "PTX size")
                buf = b" " * size
                _check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "PTX")
            else:
                size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
                buf = b" " * size
                _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf), "cubin")
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
    return Compiled(bytes(buf), kind, arch, log)


def _log(nvrtc, prog) -> str:
    size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "log size")
    if not size:
        return ""
    buf = b" " * size
    _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf), "log")
    return buf.rstrip(b"\x00").decode(errors="replace")


_PTXAS_FN = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """Per-kernel resource use reported by ``ptxas -v`` in an NVRTC log."""
    out: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _PTXAS_SPILL.search(line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = _PTXAS_USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    return out
