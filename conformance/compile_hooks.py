"""Compile-only checks: code generation certified on machines that cannot run the backend.

A backend whose kernels are generated and compiled (CUDA with NVRTC, say) can be
checked for *code generation* without its device: the suite draws formulas for
every reduction and asks the backend to compile them.  A backend opts in with
a method

    ``conformance_compile(specs, *, batch_dims: int) -> None``

that compiles the kernels of these canonical specs (raising on any error), and
optionally ``conformance_compile_availability() -> (bool, reason)``.  For the
built-in ``cuda`` backend the suite provides the hook itself (NVRTC through
:func:`polykeops.backends.cuda.build.compile_specs`, for ``sm_90``).
"""

from __future__ import annotations

from dataclasses import dataclass


def _cuda_available():
    try:
        from polykeops.backends.cuda import nvrtc

        nvrtc.version()
        return True, "NVRTC available"
    except Exception as exc:  # cuda-python or the NVRTC library missing
        return False, f"NVRTC unavailable: {type(exc).__name__}: {exc}"


def _cuda_compile(specs, *, batch_dims: int = 0):
    from polykeops.backends.cuda.build import compile_specs

    compile_specs(list(specs), "sm_90", n_batch_dims=batch_dims)


#: hooks the suite provides for built-in backends: name -> (availability, compile)
BUILTIN_HOOKS = {"cuda": (_cuda_available, _cuda_compile)}


@dataclass
class CompileTarget:
    label: str
    name: str
    compile: object
    available: bool
    reason: str
    capabilities: object = None

    def __repr__(self) -> str:
        return f"<compile-only {self.label}>"


def compile_target(name: str, backend=None):
    """The compile-only target of a backend, or None if it has no compile hook."""
    fn = getattr(backend, "conformance_compile", None) if backend is not None else None
    if callable(fn):
        avail = getattr(backend, "conformance_compile_availability", None)
        ok, why = avail() if callable(avail) else (True, "ok")
        return CompileTarget(name, name, fn, ok, why, getattr(backend, "capabilities", None))
    if name in BUILTIN_HOOKS:
        avail, fn = BUILTIN_HOOKS[name]
        ok, why = avail()
        return CompileTarget(name, name, fn, ok, why, getattr(backend, "capabilities", None))
    return None


def instance_even_if_unavailable(name: str):
    """The backend object registered under ``name`` (also when it cannot run here), or None."""
    from polykeops import backends as registry

    try:
        return registry.get_backend(name)
    except Exception:
        pass
    try:  # an unavailable backend: the registry still builds it to ask for its availability
        return registry.instance(name)
    except Exception:
        return None
