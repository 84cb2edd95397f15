"""polykeops: symbolic kernel and distance matrices with linear memory.

Import :mod:`polykeops.torch` or :mod:`polykeops.numpy` for the LazyTensor API.
Importing this package compiles nothing, detects no GPU and imports neither
torch nor any CUDA library.
"""

from __future__ import annotations

from . import config as _config
from .config import __version__
from .errors import (
    BackendError,
    CacheUnavailable,
    ConfigError,
    DeviceError,
    DTypeError,
    FormulaError,
    FormulaSyntaxError,
    NotDifferentiableError,
    PolyKeopsError,
    ShapeError,
)

__all__ = [
    "BackendError",
    "CacheUnavailable",
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "FormulaError",
    "FormulaSyntaxError",
    "NotDifferentiableError",
    "PolyKeopsError",
    "ShapeError",
    "__version__",
    "check_health",
    "clean_cache",
    "clean_pykeops",
    "get_build_folder",
    "set_build_folder",
    "set_verbose",
    "test_numpy_bindings",
    "test_torch_bindings",
]


def check_health(verbose: bool = True) -> dict:
    """Report the Python environment and every backend: available or not, and why.

    Returns a dict ``{"version", "python", "numpy", "torch", "backends": {name: (ok, reason)}}``
    and prints it as a table when ``verbose``.
    """
    import importlib.util
    import platform

    from .backends import available, instance

    report = {
        "version": __version__,
        "python": platform.python_version(),
        "numpy": _version_of("numpy"),
        "torch": _version_of("torch") if importlib.util.find_spec("torch") else None,
        "backends": available(),
    }
    if verbose:
        print(f"polykeops {report['version']} (Python {report['python']}, numpy {report['numpy']}, "
              f"torch {report['torch'] or 'not installed'})")
        for name, (ok, reason) in report["backends"].items():
            print(f"  {name:<12} {'OK ' if ok else 'off'}  {reason}")
            for note in getattr(getattr(instance(name), "capabilities", None), "notes", ()) if ok else ():
                print(f"  {'':<12}      {note}")
    return report


def clean_cache() -> list[str]:
    """Delete the compiled-kernel caches under ``POLYKEOPS_CACHE_DIR``; returns the removed directories.

    Every backend with a ``clean_cache()`` method is asked: the built-in CPU and CUDA
    backends (loaded for this if need be: neither imports torch nor a CUDA library to do
    it) and the plugin backends already loaded.  Then any other folder that polykeops
    tagged as a cache is removed too; untagged folders are never touched.  Kernels
    already loaded in this process keep working; new ones are rebuilt on demand.
    """
    from . import backends
    from .backends.artifact_cache import clean_tagged

    for name in ("cpu", "cuda"):
        backends.instance(name)
    removed = []
    for backend in backends.loaded():
        clean = getattr(backend, "clean_cache", None)
        if callable(clean):
            removed += clean()
    removed += clean_tagged()
    return sorted(set(removed))


def _version_of(module: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


# -- pykeops' top-level helpers, under their names -------------------------------------------


def set_verbose(val: bool) -> None:
    """pykeops' ``set_verbose``: sets ``POLYKEOPS_VERBOSE`` (read at use time)."""
    import os

    os.environ["POLYKEOPS_VERBOSE"] = "1" if val else "0"


def clean_pykeops(recompile_jit_binaries: bool = True) -> list[str]:
    """pykeops' ``clean_pykeops``: :func:`clean_cache` (nothing needs recompiling up front)."""
    return clean_cache()


def get_build_folder() -> str:
    """pykeops' ``get_build_folder``: where compiled kernels are cached (``POLYKEOPS_CACHE_DIR``)."""
    return str(_config.cache_dir())


def set_build_folder(path=None) -> None:
    """pykeops' ``set_build_folder``: sets ``POLYKEOPS_CACHE_DIR`` (None: back to the default)."""
    import os

    if path is None:
        os.environ.pop("POLYKEOPS_CACHE_DIR", None)
    else:
        os.environ["POLYKEOPS_CACHE_DIR"] = str(path)


def _bindings_check(lib: str) -> bool:
    import importlib

    import numpy as np

    front = importlib.import_module(f"polykeops.{lib}")
    x = np.arange(1, 10, dtype=np.float32).reshape(-1, 3)
    y = np.arange(3, 9, dtype=np.float32).reshape(-1, 3)
    expected = np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)).sum(1)
    if lib == "torch":
        import torch

        x, y = torch.from_numpy(x), torch.from_numpy(y)
    conv = front.Genred("Exp(-SqDist(x, y))", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Sum", axis=1)
    got = conv(x, y)
    got = got.numpy() if lib == "torch" else got
    ok = bool(np.allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-7))
    print(f"polykeops with {lib} bindings is working!" if ok else f"polykeops with {lib}: wrong result")
    return ok


def test_torch_bindings() -> bool:
    """pykeops' ``test_torch_bindings``: one small reduction checked against NumPy."""
    return _bindings_check("torch")


def test_numpy_bindings() -> bool:
    """pykeops' ``test_numpy_bindings``: one small reduction checked against NumPy."""
    return _bindings_check("numpy")


def _config_getattr(name: str):
    """pykeops' ``config.gpu_available``, computed on first access (importing polykeops detects no GPU)."""
    if name == "gpu_available":
        from .common.gpu_utils import gpu_available

        value = gpu_available()
        _config.gpu_available = value
        return value
    raise AttributeError(f"module 'polykeops.config' has no attribute {name!r}")


_config.__getattr__ = _config_getattr
