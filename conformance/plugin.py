"""The conformance suite's pytest plugin: options, the backends under test, skips and xfails.

Loaded by ``conftest.py`` when pytest runs the suite's folder (``python -m pytest
conformance --backend NAME`` in a checkout, ``python -m polykeops.conformance
--backend NAME`` installed), or named with ``-p`` where pytest loads no conftest
early enough to see its options (``python -m pytest -p polykeops.conformance.plugin
--pyargs polykeops.conformance --backend NAME``).  ``--backend`` takes a registered
name or ``pkg.module:factory`` (several, comma-separated); without it (and without
``POLYKEOPS_CONFORMANCE_BACKEND``) the suite runs on the reference backend and, when
it is registered and available, on the ``cpu`` backend.
See the suite's README and :mod:`.session`.
"""

from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path

import pytest

from . import session

#: the suite's folder: the plugin acts on the tests in it only (other tests may share the session)
SUITE_DIR = Path(__file__).resolve().parent


def in_suite(path) -> bool:
    """Whether ``path`` (a test file) belongs to the suite."""
    return SUITE_DIR in Path(path).resolve().parents


__all__ = [
    "device",
    "options",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_terminal_summary",
    "skip_unavailable_backend",
]


def pytest_addoption(parser):
    group = parser.getgroup("polykeops-conformance", "polykeops conformance suite")
    group.addoption(
        "--backend",
        default=None,
        help="backend(s) to certify: a registered name or pkg.module:factory, comma-separated "
        "(env POLYKEOPS_CONFORMANCE_BACKEND; default: reference and cpu if available)",
    )
    group.addoption(
        "--tier",
        default=None,
        choices=["fast", "full"],
        help="fast (default, CI): 5 examples, cases <= 40 000 cells; full (certification): 25 examples, "
        "cases <= 400 000 cells (see the README)",
    )
    group.addoption(
        "--max-examples",
        type=int,
        default=None,
        help="hypothesis examples per property test (default 5 fast / 25 full)",
    )
    group.addoption("--skips-file", default=None, help="file of test-id prefixes (or globs) to skip")
    group.addoption(
        "--xfails-file", default=None, help="file of test-id prefixes (or globs) expected to fail"
    )
    group.addoption(
        "--conformance-device",
        default=None,
        help="device of the torch tensors (default: cpu if the backend claims it, else cuda)",
    )
    group.addoption(
        "--no-shrink",
        action="store_true",
        default=False,
        help="report the first failing example without shrinking it (faster)",
    )


def _opt(config, name, env_name, default=None):
    value = config.getoption(name, default=None)
    if value is None or value is False:
        value = session.env(env_name, default)
    return value


def pytest_configure(config):
    options = session.Options()
    requested = _opt(config, "--backend", "BACKEND")
    options.user_selected = bool(requested)
    options.tier = _opt(config, "--tier", "TIER", "fast")
    if options.tier not in ("fast", "full"):
        raise pytest.UsageError(f"--tier must be fast or full, got {options.tier!r}")
    n = _opt(config, "--max-examples", "MAX_EXAMPLES")
    options.max_examples = int(n) if n is not None else session.DEFAULT_MAX_EXAMPLES[options.tier]
    options.shrink = not (
        config.getoption("--no-shrink", default=False) or session.env("NO_SHRINK", "0") not in ("0", "")
    )
    options.device = _opt(config, "--conformance-device", "DEVICE")
    try:
        options.backends = session.resolve_backends(requested)
    except Exception as exc:
        raise pytest.UsageError(
            f"conformance: cannot load backend {requested!r}: {type(exc).__name__}: {exc}"
        ) from exc
    options.compile_targets = session.resolve_compile_targets(options.backends, options.user_selected)
    options.skips = session.read_id_file(_opt(config, "--skips-file", "SKIPS_FILE"))
    options.xfails = session.read_id_file(_opt(config, "--xfails-file", "XFAILS_FILE"))
    config.stash[session.OPTIONS_KEY] = options
    config.addinivalue_line(
        "markers",
        "tier_parametrize(name, fast, full, ids=None): parametrize by the values of the session's tier",
    )


def pytest_report_header(config):
    options = session.options_of(config)
    lines = [
        f"polykeops conformance: tier={options.tier}, max_examples={options.max_examples}, "
        f"shrink={options.shrink}"
    ]
    for bt in options.backends:
        if bt.available:
            caps = bt.capabilities
            lines.append(
                f"  backend {bt.label} ({bt.origin}): dtypes={sorted(caps.dtypes)}, "
                f"arrays={sorted(caps.array_kinds)}, devices={sorted(caps.devices)}, batch={caps.batch}, "
                f"reductions={'all' if caps.reductions is None else sorted(caps.reductions)}"
            )
        else:
            lines.append(f"  backend {bt.label}: UNAVAILABLE ({bt.reason}) -- its tests are skipped")
    for ct in options.compile_targets:
        lines.append(f"  compile-only checks for {ct.label}: {'yes' if ct.available else 'no'} ({ct.reason})")
    return lines


def pytest_generate_tests(metafunc):
    """``backend``: every backend under test; ``target``: every compile-only target (or None);
    ``@pytest.mark.tier_parametrize(name, fast, full)``: the values of the session's tier."""
    if not in_suite(metafunc.definition.path):
        return
    options = session.options_of(metafunc.config)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "backend", options.backends, ids=[bt.label for bt in options.backends], scope="session"
        )
    if "target" in metafunc.fixturenames:
        targets = options.compile_targets or [None]
        metafunc.parametrize("target", targets, ids=[t.label if t else "none" for t in targets])
    for mark in metafunc.definition.iter_markers("tier_parametrize"):
        name, fast, full = mark.args
        metafunc.parametrize(name, full if options.full else fast, ids=mark.kwargs.get("ids"))


@pytest.fixture(scope="session")
def options(request) -> session.Options:
    """The options of this conformance session (:class:`.session.Options`)."""
    return session.options_of(request.config)


@pytest.fixture(scope="session")
def device(backend, options):
    if not backend.available:
        pytest.skip(f"backend {backend.label} unavailable: {backend.reason}")
    if options.device:
        return options.device
    devices = backend.capabilities.devices
    return "cpu" if "cpu" in devices else sorted(devices)[0]


@pytest.fixture(autouse=True)
def skip_unavailable_backend(request):
    if not in_suite(request.node.path):
        return
    bt = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if bt is not None and not bt.available:
        pytest.skip(f"backend {bt.label} unavailable: {bt.reason}")


def _matches(entry: str, item) -> bool:
    """Whether a skips/xfails entry names ``item``: a test-id prefix or glob, with or without the
    ``conformance/`` folder (test ids are relative to wherever pytest runs the suite from)."""
    nodeid = item.nodeid
    rel = nodeid.split("conformance/", 1)[-1]
    entry_rel = entry.split("conformance/", 1)[-1]
    if "*" in entry or "?" in entry:  # a glob ("[" is literal: test ids are full of brackets)
        pattern = entry.replace("[", "[[]")
        pattern_rel = entry_rel.replace("[", "[[]")
        return fnmatch.fnmatchcase(nodeid, pattern) or fnmatch.fnmatchcase(rel, pattern_rel)
    return nodeid.startswith(entry) or rel.startswith(entry_rel)


_UNMATCHED: list[str] = []


def pytest_collection_modifyitems(config, items):
    options = session.options_of(config)
    ours = [it for it in items if in_suite(it.path)]
    settled = {}  # property tests get this session's hypothesis settings (once per function)
    for it in ours:
        if isinstance(it, pytest.Function) and hasattr(it.obj, "conformance_property"):
            if it.obj not in settled:
                settled[it.obj] = session.with_session_settings(it.obj, options)
            it.obj = settled[it.obj]
    for kind, entries in (("skips", options.skips), ("xfails", options.xfails)):
        for entry, reason in entries:
            hit = False
            for it in ours:
                if _matches(entry, it):
                    hit = True
                    why = reason or f"listed in the {kind} file"
                    if kind == "skips":
                        it.add_marker(pytest.mark.skip(reason=why))
                    else:
                        it.add_marker(pytest.mark.xfail(reason=why, strict=False))
            if not hit:
                msg = f"conformance {kind} file: entry {entry!r} matches no collected test"
                _UNMATCHED.append(msg)
                warnings.warn(pytest.PytestWarning(msg), stacklevel=1)


def pytest_terminal_summary(terminalreporter):
    if _UNMATCHED:
        terminalreporter.section("polykeops conformance: unmatched skip/xfail entries")
        for msg in _UNMATCHED:
            terminalreporter.write_line(msg)
