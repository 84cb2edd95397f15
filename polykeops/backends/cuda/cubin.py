"""Resource use of the kernels of a cubin, read from its ELF sections (no GPU, no cuobjdump).

A cubin is an ELF64 file.  For a kernel ``k``:

* registers: bits 24..31 of ``sh_info`` of the section ``.text.k``;
* static shared memory: the size of the section ``.nv.shared.k`` (absent: 0), less
  the 1 KiB system reservation it includes from sm_90 on;
* local memory (stack frame, where spilled registers go): the ``EIATTR_FRAME_SIZE``
  attribute of ``k`` in the ``.nv.info`` section (records: format byte,
  attribute byte, then for the "sized value" format a 16-bit size and the
  payload ``(symbol index, value)``).

The same numbers are printed by ``ptxas -v`` (the NVRTC log of a fresh compile);
reading them from the cubin works for cached kernels too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_EIFMT_NVAL, _EIFMT_BVAL, _EIFMT_HVAL, _EIFMT_SVAL = 1, 2, 3, 4
_EIATTR_FRAME_SIZE = 0x11
_EIATTR_REGCOUNT = 0x2F
#: shared memory the system reserves per block on sm_90 and later (counted in the kernel's section)
RESERVED_SMEM = 1024


@dataclass(frozen=True)
class KernelResources:
    name: str
    registers: int
    shared_bytes: int  # static shared memory
    local_bytes: int  # stack frame per thread (0 when nothing spills)
    arch: int  # e.g. 90


class CubinError(ValueError):
    pass


def _sections(data: bytes):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise CubinError("not a little-endian ELF64 file")
    (e_flags,) = struct.unpack_from("<I", data, 0x30)
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if e_shoff + e_shnum * e_shentsize > len(data):
        raise CubinError("truncated ELF section table")
    secs = []
    for k in range(e_shnum):
        off = e_shoff + k * e_shentsize
        name, typ, flags, addr, offset, size, link, info, align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, off
        )
        secs.append([name, typ, offset, size, link, info])
    strtab = secs[e_shstrndx]
    names = data[strtab[2] : strtab[2] + strtab[3]]
    out = []
    for name, typ, offset, size, link, info in secs:
        end = names.find(b"\x00", name)
        out.append((names[name:end].decode(errors="replace"), typ, offset, size, link, info))
    return out, e_flags


def _symbols(data, secs):
    """Symbol index -> name, from the .symtab section."""
    for _name, typ, offset, size, link, _ in secs:
        if typ == 2:  # SHT_SYMTAB
            strsec = secs[link]
            strs = data[strsec[2] : strsec[2] + strsec[3]]
            syms = {}
            for k in range(size // 24):
                (st_name,) = struct.unpack_from("<I", data, offset + 24 * k)
                end = strs.find(b"\x00", st_name)
                syms[k] = strs[st_name:end].decode(errors="replace")
            return syms
    return {}


def _attributes(data, offset, size):
    """Yield (attribute, payload bytes) of an .nv.info section."""
    pos, end = offset, offset + size
    while pos + 2 <= end:
        fmt, attr = data[pos], data[pos + 1]
        pos += 2
        if fmt == _EIFMT_SVAL:
            (n,) = struct.unpack_from("<H", data, pos)
            yield attr, data[pos + 2 : pos + 2 + n]
            pos += 2 + n
        elif fmt in (_EIFMT_HVAL, _EIFMT_NVAL, _EIFMT_BVAL):
            yield attr, data[pos : pos + 2]
            pos += 2
        else:
            raise CubinError(f"unknown .nv.info record format {fmt}")


def kernel_resources(cubin: bytes) -> dict[str, KernelResources]:
    """``{kernel name: KernelResources}`` for every kernel (``.text.*`` section) of a cubin."""
    secs, e_flags = _sections(cubin)
    # ELF ABI version 8 and later (CUDA 12.x+) keep the SM version in bits 8..15
    arch = (e_flags >> 8) & 0xFF if cubin[8] >= 8 else e_flags & 0xFF
    syms = _symbols(cubin, secs)
    # from sm_90 on, a kernel's shared section starts with the 1 KiB the system reserves per
    # block (a ``.nv.shared.reserved.*`` section is then present); ptxas -v counts without it
    reserved = RESERVED_SMEM if any(n.startswith(".nv.shared.reserved") for n, *_ in secs) else 0
    shared = {
        n[len(".nv.shared."):]: max(0, size - reserved)
        for n, _, _, size, _, _ in secs
        if n.startswith(".nv.shared.") and not n.startswith(".nv.shared.reserved")
    }
    frames: dict[str, int] = {}
    regs_info: dict[str, int] = {}
    for name, _typ, offset, size, _, _ in secs:
        if name == ".nv.info":
            for attr, payload in _attributes(cubin, offset, size):
                if len(payload) >= 8 and attr in (_EIATTR_FRAME_SIZE, _EIATTR_REGCOUNT):
                    sym, value = struct.unpack_from("<II", payload, 0)
                    target = frames if attr == _EIATTR_FRAME_SIZE else regs_info
                    target[syms.get(sym, str(sym))] = value
    out = {}
    for name, _typ, _offset, _size, _link, info in secs:
        if name.startswith(".text."):
            k = name[len(".text."):]
            regs = (info >> 24) & 0xFF
            out[k] = KernelResources(
                name=k,
                registers=regs_info.get(k, regs),
                shared_bytes=shared.get(k, 0),
                local_bytes=frames.get(k, 0),
                arch=arch,
            )
    return out
