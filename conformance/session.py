"""Options of a conformance run and the backends under test.

The values are read once per pytest session by the suite's plugin
(:mod:`.plugin`: command-line options, falling back to environment variables)
into an :class:`Options` kept on pytest's config (:func:`options_of`); tests get
it from the ``options`` fixture, and property tests get their hypothesis
settings from it when they are collected (:func:`property_test`).  Every option has an environment
variable, for runs where pytest cannot see the command-line option (for
instance ``python -m pytest`` with no path, which collects ``conformance``
through ``testpaths``):

===================================  ==========================================
``--backend``                        ``POLYKEOPS_CONFORMANCE_BACKEND``
``--tier``                           ``POLYKEOPS_CONFORMANCE_TIER``
``--max-examples``                   ``POLYKEOPS_CONFORMANCE_MAX_EXAMPLES``
``--skips-file``                     ``POLYKEOPS_CONFORMANCE_SKIPS_FILE``
``--xfails-file``                    ``POLYKEOPS_CONFORMANCE_XFAILS_FILE``
``--conformance-device``             ``POLYKEOPS_CONFORMANCE_DEVICE``
``--no-shrink``                      ``POLYKEOPS_CONFORMANCE_NO_SHRINK=1``
===================================  ==========================================
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import pytest

#: examples per property test when --max-examples is not given
DEFAULT_MAX_EXAMPLES = {"fast": 5, "full": 25}


class BackendUnderTest:
    """One backend the suite runs against (a plain class: hypothesis prints its short repr)."""

    def __init__(
        self, label: str, name: str, origin: str, backend=None, available: bool = True, reason: str = "ok"
    ):
        self.label = label  # how it appears in test ids
        self.name = name  # the name it is registered under (what ``backend=`` receives)
        self.origin = origin  # "registered" or the "module:factory" path
        self.backend = backend
        self.available = available
        self.reason = reason

    @property
    def capabilities(self):
        return self.backend.capabilities

    def supports_dtype(self, dtype: str) -> bool:
        return self.available and dtype in self.capabilities.dtypes

    def array_kinds(self) -> list[str]:
        return sorted(k for k in self.capabilities.array_kinds if k in ("torch", "numpy"))

    def __repr__(self) -> str:  # shown by hypothesis in falsifying examples
        return f"<backend {self.label}>"


@dataclass
class Options:
    tier: str = "fast"
    max_examples: int = DEFAULT_MAX_EXAMPLES["fast"]
    shrink: bool = True
    device: str | None = None
    user_selected: bool = False  # a backend was named explicitly (meta-tests then skip)
    backends: list = field(default_factory=list)
    compile_targets: list = field(default_factory=list)  # compile-only checks (see compile_hooks)
    skips: list = field(default_factory=list)  # [(entry, reason)]
    xfails: list = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.tier == "full"

    def max_size(self, fast: int | None) -> int | None:
        """The largest M or N a test draws: ``fast`` in the fast tier, the tier's own bound in full."""
        return None if self.full else fast


#: where the session's :class:`Options` live (``config.stash``)
OPTIONS_KEY = pytest.StashKey[Options]()


def options_of(config) -> Options:
    """The :class:`Options` of the pytest session of ``config`` (set by the suite's plugin)."""
    try:
        return config.stash[OPTIONS_KEY]
    except KeyError:
        raise pytest.UsageError(
            "the polykeops conformance plugin is not loaded: run the suite's folder "
            "(python -m polykeops.conformance, or python -m pytest conformance in a checkout) "
            "or pass -p polykeops.conformance.plugin"
        ) from None


def env(name: str, default=None):
    value = os.environ.get("POLYKEOPS_CONFORMANCE_" + name, "").strip()
    return value or default


def load_factory(path: str):
    """The object named by ``"pkg.module:attr"``."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:factory'")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_backends(requested: str | None) -> list[BackendUnderTest]:
    """The backends named by ``requested`` (comma-separated), or the default set."""
    from polykeops import backends as registry

    if requested:
        entries = [e.strip() for e in requested.split(",") if e.strip()]
    else:
        entries = ["reference"]
        try:
            known = registry.names()
        except Exception:  # pragma: no cover - a broken registry is reported by the tests
            known = []
        status = registry.available() if known else {}
        for name in ("cpu", "cuda"):  # the built-in engines, where this machine can run them
            if name in known and status.get(name, (False, ""))[0]:
                entries.append(name)
    result = []
    for entry in entries:
        if ":" in entry:
            factory = load_factory(entry)
            backend = factory()
            name = getattr(backend, "name", None) or entry
            try:
                registry.register_backend(name, factory, replace=True)
            except Exception:
                name = "conformance:" + entry
                registry.register_backend(name, factory, replace=True)
            label = name
            origin = entry
        else:
            name = entry
            label = entry
            origin = "registered"
            known = registry.names()
            if name not in known:
                raise ValueError(
                    f"unknown backend {name!r}; registered: {', '.join(known)} "
                    "(or pass pkg.module:factory for a backend that is not registered)"
                )
        bt = BackendUnderTest(label=label, name=name, origin=origin)
        try:
            bt.backend = registry.get_backend(name)
        except Exception as exc:
            bt.available = False
            bt.reason = f"{type(exc).__name__}: {exc}"
        result.append(bt)
    return result


def resolve_compile_targets(backends, user_selected: bool) -> list:
    """Backends whose generated code is compiled for drawn formulas (:mod:`conformance.compile_hooks`)."""
    from polykeops import backends as registry

    from .compile_hooks import compile_target, instance_even_if_unavailable

    if user_selected:
        names = [(bt.name, bt.backend) for bt in backends]
    else:
        try:
            known = registry.names()
        except Exception:  # pragma: no cover
            known = []
        names = [(n, instance_even_if_unavailable(n)) for n in known]
    targets = []
    for name, obj in names:
        target = compile_target(name, obj)
        if target is not None:
            targets.append(target)
    return targets


def read_id_file(path: str | None) -> list[tuple[str, str]]:
    """Entries of a skips/xfails file: one test-id prefix (or glob) per line, ``# reason`` optional."""
    if not path:
        return []
    entries = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text, _, reason = line.partition("#")
            text = text.strip()
            if text:
                entries.append((text, reason.strip()))
    return entries


def hypothesis_settings(options: Options, factor: float = 1.0, **overrides):
    """Settings of one property test: ``factor`` x --max-examples examples, derandomised."""
    from hypothesis import HealthCheck, Phase, settings

    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if options.shrink:
        phases.append(Phase.shrink)
    kwargs = dict(
        max_examples=max(1, round(options.max_examples * factor)),
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    kwargs.update(overrides)
    return settings(**kwargs)


def property_test(factor: float = 1.0, *, full: float | None = None, **overrides):
    """Decorator of a property test that draws from a ``data`` argument: ``@given(data=st.data())``.

    Its settings (:func:`hypothesis_settings`: ``factor`` x --max-examples examples, or
    ``full`` x in the full tier when given) depend on the session's options: the plugin
    gives each collected test its :func:`with_session_settings` version.
    """
    from hypothesis import given
    from hypothesis import strategies as st

    def decorate(test):
        drawn = given(data=st.data())(test)
        drawn.conformance_property = (test, factor, full, overrides)
        return drawn

    return decorate


def with_session_settings(function, options: Options):
    """A property test (see :func:`property_test`) under the settings of ``options``; other
    functions unchanged."""
    property_ = getattr(function, "conformance_property", None)
    if property_ is None:
        return function
    from hypothesis import given
    from hypothesis import strategies as st

    test, factor, full, overrides = property_
    factor = full if options.full and full is not None else factor
    return hypothesis_settings(options, factor, **overrides)(given(data=st.data())(test))


#: ``axis`` parameter of a test over both reduction axes
AXES = pytest.mark.parametrize("axis", [0, 1], ids=["axis0", "axis1"])


def claims(backend, reduction: str | None = None, dtype: str | None = None, *, ranges: bool = False):
    """The capabilities of ``backend``; skips the test unless it claims ``dtype`` and ``reduction``
    (and block-sparse ``ranges`` when asked)."""
    caps = backend.capabilities
    if ranges and not getattr(caps, "ranges", False):
        pytest.skip(f"{backend.label} does not claim block-sparse ranges (capabilities.ranges)")
    if dtype is not None and dtype not in caps.dtypes:
        pytest.skip(f"{backend.label} does not claim {dtype}")
    if reduction is not None and caps.reductions is not None and reduction not in caps.reductions:
        pytest.skip(f"{backend.label} does not claim the {reduction} reduction")
    return caps
