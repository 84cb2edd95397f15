"""Environment configuration, read at use time (never at import time).

=========================  =================================================
``POLYKEOPS_BACKEND``      ``auto`` (default), ``cpu``, ``cuda``, ``reference``
                           or the name of a registered plugin backend
``POLYKEOPS_CACHE_DIR``    where compiled kernels are cached
                           (default: ``$XDG_CACHE_HOME/polykeops`` or
                           ``~/.cache/polykeops``)
``POLYKEOPS_JIT``          ``auto`` (default), ``sync`` or ``off``: how the CPU
                           engine compiles specialised kernels
``POLYKEOPS_NUM_THREADS``  number of CPU threads (default: the CPUs this process may run on)
``POLYKEOPS_VERBOSE``      ``0`` (default) or ``1``
``POLYKEOPS_GENERIC_ISA``  ``avx512``, ``avx2`` or ``baseline``: force one build of the
                           CPU generic engine (default: the best this CPU runs)
``POLYKEOPS_CACHE_SIZE``   the most bytes each backend's cache folder keeps
                           (``2GB`` by default; ``500MB``, ``1.5GiB``, plain bytes);
                           least recently used kernels are deleted past it
``POLYKEOPS_MAX_KERNELS``  the most specialised CPU kernels a process keeps loaded
                           (``512`` by default, about 50 KB each); the least
                           recently used one is unloaded past it
=========================  =================================================

Every variable is validated when it is read, and all of them at every reduction
(:func:`validate_environment`): a typo raises a :class:`ConfigError` listing the
valid values and the closest one, rather than silently changing behaviour.  An
unknown ``POLYKEOPS_*`` variable (a misspelt name) gives one warning naming the
closest known variable.
"""

from __future__ import annotations

import os
import re
import warnings
from difflib import get_close_matches
from pathlib import Path

from .errors import ConfigError

#: the package's version (part of every compiled artifact's cache key)
__version__ = "0.1.0"


def _choice(var: str, value: str, valid: tuple[str, ...]) -> str:
    if value in valid:
        return value
    close = get_close_matches(value, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{var}={value!r} is not valid; use one of {', '.join(valid)}.{hint}")


def backend_name() -> str:
    """The backend asked for by ``POLYKEOPS_BACKEND`` (``"auto"`` when unset); validated by the registry."""
    return os.environ.get("POLYKEOPS_BACKEND", "").strip() or "auto"


def jit_mode() -> str:
    value = os.environ.get("POLYKEOPS_JIT", "").strip().lower() or "auto"
    return _choice("POLYKEOPS_JIT", value, ("auto", "sync", "off"))


def _positive_int(var: str, default: int | None) -> int | None:
    value = os.environ.get(var, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        hint = f" (default {default})" if default is not None else ""
        raise ConfigError(f"{var}={value!r} must be a positive integer{hint}")
    return n


def num_threads() -> int | None:
    return _positive_int("POLYKEOPS_NUM_THREADS", None)


DEFAULT_MAX_KERNELS = 512


def max_kernels() -> int:
    """``POLYKEOPS_MAX_KERNELS``: the most specialised CPU kernels loaded at once (default 512)."""
    return _positive_int("POLYKEOPS_MAX_KERNELS", DEFAULT_MAX_KERNELS)


def verbose() -> bool:
    value = os.environ.get("POLYKEOPS_VERBOSE", "").strip() or "0"
    return _choice("POLYKEOPS_VERBOSE", value, ("0", "1")) == "1"


def generic_isa() -> str | None:
    """The generic-engine build ``POLYKEOPS_GENERIC_ISA`` forces, or None (the best one)."""
    value = os.environ.get("POLYKEOPS_GENERIC_ISA", "").strip().lower()
    return _choice("POLYKEOPS_GENERIC_ISA", value, ("avx512", "avx2", "baseline")) if value else None


def cache_dir() -> Path:
    value = os.environ.get("POLYKEOPS_CACHE_DIR", "").strip()
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "polykeops"


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
DEFAULT_CACHE_SIZE = 2 * 10**9


def cache_size() -> int:
    """``POLYKEOPS_CACHE_SIZE`` in bytes (default 2 GB)."""
    value = os.environ.get("POLYKEOPS_CACHE_SIZE", "").strip()
    if not value:
        return DEFAULT_CACHE_SIZE
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([a-zA-Z]*)", value)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"POLYKEOPS_CACHE_SIZE={value!r} is not a size; use bytes or a number with a unit "
                          f"({', '.join(u for u in _SIZE_UNITS if u)}), e.g. 500MB or 2GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


#: every variable polykeops reads, and the function validating it
VARIABLES = {
    "POLYKEOPS_BACKEND": backend_name,
    "POLYKEOPS_CACHE_DIR": cache_dir,
    "POLYKEOPS_CACHE_SIZE": cache_size,
    "POLYKEOPS_GENERIC_ISA": generic_isa,
    "POLYKEOPS_JIT": jit_mode,
    "POLYKEOPS_MAX_KERNELS": max_kernels,
    "POLYKEOPS_NUM_THREADS": num_threads,
    "POLYKEOPS_VERBOSE": verbose,
}
#: prefixes of variables read by other parts of the project (the conformance suite, CI)
OTHER_PREFIXES = ("POLYKEOPS_CONFORMANCE_", "POLYKEOPS_CI_")
_unknown_warned: set = set()


_validated: list = [None, -1]  # the values last found valid, the environment's size last scanned


def validate_environment() -> None:
    """Read every ``POLYKEOPS_*`` variable: a ConfigError for an invalid value, one warning per
    unknown variable name (with the closest known one).  A few microseconds when nothing changed
    since the last call (the values are compared; names are scanned when variables are added)."""
    environ = os.environ
    values = tuple(environ.get(name) for name in VARIABLES)
    if values != _validated[0]:
        for read in VARIABLES.values():
            read()
        _validated[0] = values
    if len(environ) == _validated[1]:
        return
    _validated[1] = len(environ)
    for name in environ:
        if (name.startswith("POLYKEOPS_") and name not in VARIABLES and name not in _unknown_warned
                and not name.startswith(OTHER_PREFIXES)):
            _unknown_warned.add(name)
            close = get_close_matches(name, VARIABLES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.warn(f"polykeops: unknown environment variable {name} is ignored{hint} "
                          f"(known: {', '.join(VARIABLES)})", RuntimeWarning, stacklevel=3)
