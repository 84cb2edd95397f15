"""Meta-tests: the suite must catch every deliberately broken backend, and pass a correct one.

The broken backends of :mod:`conformance.meta.broken` are certified in a
subprocess (``python -m pytest conformance/... --backend
conformance.meta.broken:NAME,...``), exactly as a third party runs the suite,
each on the tests meant to catch its bug, with few examples and no shrinking.
Every one must fail, with a report carrying a reproduction snippet; the snippet
of one failure is run on its own to check that it reproduces the error.  A
backend built on an op table with a wrong ``OpDef.ref`` must fail too (in a run
of its own: that bug is planted in the op table of the whole process).  The same
machinery checks the skips/xfails files and the third-party plugin example
of ``examples/plugin_backend`` (registered through its entry point).

A sample of the planted bugs of :mod:`conformance.meta.mutants` (a tiled engine
with one realistic bug each) runs against the whole default suite at
``--max-examples 25`` (:mod:`conformance.meta.killrate`, whose command line runs
all of them), and the engine without a bug must pass.

The subprocesses start together (module fixture) and run concurrently.  The
meta-tests check the suite, not a backend: they are skipped when a backend is
named with ``--backend`` / ``POLYKEOPS_CONFORMANCE_BACKEND``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the suite's folder, and its package as imported now ("conformance" in a checkout, else
#: "polykeops.conformance", installed): the subprocesses certify through the same files
SUITE_DIR = Path(__file__).resolve().parents[1]
SUITE = __package__.rpartition(".")[0]
#: in a checkout, the repository root (the subprocesses run there, with it on their path)
ROOT = SUITE_DIR.parent if SUITE == "conformance" else None
CWD = ROOT or Path(tempfile.gettempdir())
PLUGIN_SRC = (ROOT or SUITE_DIR) / "examples" / "plugin_backend" / "src"


@pytest.fixture(scope="module", autouse=True)
def _suite_only(options):
    """The meta-tests check the suite itself: skipped when a backend is named (before any subprocess)."""
    if options.user_selected:
        pytest.skip("meta-tests check the suite itself; run them without --backend")

#: broken backend -> (its label, the tests of the suite that must catch it: a -k expression)
TARGETS = {
    "sin_derivative": ("meta-sin-derivative", "test_op"),
    "dropped_tile": ("meta-dropped-tile", "test_sizes"),
    "argmin_last": ("meta-argmin-last", "test_selection_ties"),
    "batch0": ("meta-batch0", "test_batch_broadcasting"),
    "lse_no_shift": ("meta-lse-no-shift", "test_logsumexp_large_values"),
    "param_grad_not_summed": ("meta-param-grad", "test_parameter_gradient"),
    "ranges_drop_last": ("meta-ranges-drop-last", "test_ranges_forward or test_ranges_per_batch"),
}
#: what the correct wrapper of the reference backend runs (the reference itself runs the whole suite)
CORRECT = (
    "test_parameter_gradient or test_batch_broadcasting or test_selection_ties or test_sizes"
    " or test_ranges_forward or test_ranges_per_batch"
)
#: a backend that does not claim block-sparse ranges: the ranges tests must skip, saying why
NO_RANGES = ("meta-batch0", "test_ranges_per_batch or test_ranges_without_blocks")
FILES = [str(SUITE_DIR / f"test_{name}.py") for name in ("ops", "special", "gradients", "ranges")]
#: the op table's reference of Sin made wrong for the whole process (alone in its run): the suite's
#: oracle, independent of OpDef.ref, must fail the backend built on it, and the table check too
WRONG_REF = ("meta-wrong-ref", "wrong_sin_ref")
SNIPPET_RE = re.compile(r"Reproduce \(run from the repository root\):\n-{60}\n(.*?)\n-{60}", re.S)


def _pythonpath(extra: str | None) -> str:
    """The subprocesses' PYTHONPATH: the repository root first in a checkout, then ``extra``."""
    return os.pathsep.join(([str(ROOT)] if ROOT else []) + ([extra] if extra else []))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Run:
    """A suite run in a subprocess, started now, waited for on demand."""

    def __init__(self, args, *, env_extra=None):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("POLYKEOPS_CONFORMANCE_") or key == "POLYKEOPS_BACKEND":
                env.pop(key)
        env["PYTHONPATH"] = _pythonpath(env.get("PYTHONPATH"))
        env.update(env_extra or {})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-shrink"]
        cmd += ["-W", "ignore::DeprecationWarning", *args]
        self._out = tempfile.TemporaryFile(mode="w+")
        self._err = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(cmd, cwd=CWD, env=env, stdout=self._out, stderr=self._err, text=True)
        self._result = None

    def result(self, timeout=900) -> Result:
        if self._result is None:
            try:
                code = self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            self._out.seek(0)
            self._err.seek(0)
            self._result = Result(code, self._out.read(), self._err.read())
            self._out.close()
            self._err.close()
        return self._result


#: planted bugs of meta/mutants.py run in CI against the whole default suite at --max-examples 25
#: (the full set: python -m conformance.meta.killrate, see the README's kill rate)
MUTANT_SAMPLE = ("index_without_tile_offset", "lse_combine_not_rescaled", "dtype_acc_ignored")


class KillRateRun(Run):
    """``python -m <suite>.meta.killrate --only ...``: planted bugs against the whole suite."""

    def __init__(self, names, *, max_examples):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("POLYKEOPS_CONFORMANCE_") or key == "POLYKEOPS_BACKEND":
                env.pop(key)
        env["PYTHONPATH"] = _pythonpath(env.get("PYTHONPATH"))
        cmd = [sys.executable, "-m", f"{SUITE}.meta.killrate", "--only", ",".join(names)]
        cmd += ["--max-examples", str(max_examples), "--jobs", "1"]
        self._out = tempfile.TemporaryFile(mode="w+")
        self._err = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(cmd, cwd=CWD, env=env, stdout=self._out, stderr=self._err, text=True)
        self._result = None


def _meta_args():
    names = list(TARGETS) + ["correct"]
    backends = ",".join(f"{SUITE}.meta.broken:{n}" for n in names)
    selections = [f"({label} and ({expr}))" for label, expr in TARGETS.values()]
    selections.append(f"(meta-correct and ({CORRECT}))")
    selections.append(f"({NO_RANGES[0]} and ({NO_RANGES[1]}))")
    return [*FILES, "--backend", backends, "--max-examples", "3", "-k", " or ".join(selections), "-rfs"]


def _write_id_files(tmp: Path):
    skips = tmp / "skips.txt"
    skips.write_text("test_special.py::test_sizes[meta-dropped-tile-1x1  # tiny sizes\n")
    with skips.open("a") as fh:
        fh.write("test_special.py::test_no_such_test\n")
    xfails = tmp / "xfails.txt"
    xfails.write_text("# known bug\nconformance/test_special.py::test_sizes  # the last tile is dropped\n")
    return skips, xfails


def _write_entry_point(tmp: Path):
    """What ``pip install examples/plugin_backend`` writes: a dist-info declaring the entry point."""
    dist = tmp / "polykeops_numpy_tiles-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: polykeops-numpy-tiles\nVersion: 0.1.0\n")
    entry = "numpy_tiles = polykeops_numpy_tiles:make_backend"
    (dist / "entry_points.txt").write_text(f"[polykeops.backends]\n{entry}\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess of the meta-tests, started together."""
    tmp = tmp_path_factory.mktemp("meta")
    skips, xfails = _write_id_files(tmp)
    started = {"meta": Run(_meta_args())}
    started["ids"] = Run(
        [str(SUITE_DIR / "test_special.py") + "::test_sizes", "-k", "1x1 or 31x33 or 65x129", "-rsxX"]
        + ["--backend", f"{SUITE}.meta.broken:dropped_tile", "--skips-file", str(skips)]
        + ["--xfails-file", str(xfails)]
    )
    started["wrong_ref"] = Run(
        [str(SUITE_DIR / "test_ops.py"), str(SUITE_DIR / "test_op_table.py")]
        + ["--backend", f"{SUITE}.meta.broken:{WRONG_REF[1]}", "--max-examples", "3"]
        + ["-k", "test_op and Sin and not SinXDivX", "-rfs"]
    )
    started["mutant_sample"] = KillRateRun(MUTANT_SAMPLE, max_examples=25)
    started["mutant_correct"] = Run(
        [str(SUITE_DIR / "test_options.py"), str(SUITE_DIR / "test_special.py")]
        + ["--backend", f"{SUITE}.meta.mutants:correct", "--max-examples", "2", "-x"]
    )
    if PLUGIN_SRC.is_dir():
        _write_entry_point(tmp)
        started["plugin"] = Run(
            [str(SUITE_DIR / "test_reductions.py") + "::test_reduction", str(SUITE_DIR / "test_special.py")]
            + ["-k", "(test_reduction and float64 and axis1) or test_selection_ties or test_nan or 31x33"]
            + ["--backend", "numpy_tiles", "--max-examples", "2", "-x"],
            env_extra={"PYTHONPATH": _pythonpath(os.pathsep.join([str(PLUGIN_SRC), str(tmp)]))},
        )
    return started


def plain(text: str) -> str:
    """pytest's report without the ``E       `` prefixes of assertion messages."""
    return re.sub(r"^E(?: {7}|$)", "", text, flags=re.M)


def _tail(result, n=4000):
    return (result.stdout + "\n" + result.stderr)[-n:]


def _failed_ids(result, label):
    return [line for line in result.stdout.splitlines() if line.startswith("FAILED") and f"[{label}-" in line]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_broken_backend_is_caught(runs, name):
    result = runs["meta"].result()
    label = TARGETS[name][0]
    assert _failed_ids(result, label), f"the suite did not catch {name!r}:\n{_tail(result)}"
    text = plain(result.stdout)
    titles = re.findall(r"polykeops conformance: (.*)\nbackend '" + re.escape(label) + "'", text)
    assert titles, _tail(result)
    # caught for the right reason: wrong values, not a crash of the wrapper
    assert all(t.startswith("wrong") for t in titles), titles
    at = text.find(f"backend '{label}':")
    assert SNIPPET_RE.search(text, at), "no reproduction snippet:\n" + _tail(result)


def test_correct_wrapper_passes(runs):
    result = runs["meta"].result()
    assert not _failed_ids(result, "meta-correct"), _tail(result)
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-1], _tail(result)
    assert result.returncode == 1, _tail(result)  # the broken backends failed, nothing else went wrong


@pytest.mark.parametrize("label", ["meta-dropped-tile", "meta-ranges-drop-last"])
def test_failure_snippet_reproduces(runs, tmp_path, label):
    """A snippet printed for a dropped-tile (or block-sparse ranges) failure, run on its own,
    shows the error."""
    result = runs["meta"].result()
    text = plain(result.stdout)
    at = text.find(f"backend '{label}':")
    match = SNIPPET_RE.search(text, max(at, 0))
    assert at >= 0 and match, _tail(result)
    code = textwrap.dedent(match.group(1))
    script = tmp_path / "repro.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=_pythonpath(None))
    res = subprocess.run(
        [sys.executable, str(script)], cwd=CWD, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:] + "\n---\n" + code
    errors = [float(x) for x in re.findall(r"max abs error (\S+)", res.stdout)]
    assert errors and max(errors) > 1e-3, res.stdout + "\n---\n" + code


def test_ranges_tests_skip_without_the_capability(runs):
    """A backend that does not claim ``capabilities.ranges`` skips the ranges tests, saying why."""
    result = runs["meta"].result()
    label = NO_RANGES[0]
    assert f"{label} does not claim block-sparse ranges" in result.stdout, _tail(result)
    ranges_failures = [line for line in _failed_ids(result, label) if "test_ranges.py" in line]
    assert not ranges_failures, ranges_failures


def test_skips_and_xfails_files(runs):
    """Entries are test-id prefixes; listed xfails do not fail the run; stray entries are reported."""
    result = runs["ids"].result()
    assert result.returncode == 0, _tail(result)
    assert "xfailed" in result.stdout and "skipped" in result.stdout, _tail(result)
    assert "test_no_such_test" in result.stdout, _tail(result)
    assert "matches no collected test" in result.stdout, _tail(result)


def test_plugin_example_passes(runs):
    """examples/plugin_backend, registered through its entry point, passes (part of) the suite."""
    if "plugin" not in runs:
        pytest.skip("examples/plugin_backend is not in this checkout")
    result = runs["plugin"].result()
    assert result.returncode == 0, _tail(result)
    assert " passed" in result.stdout, _tail(result)


@pytest.fixture
def registered_broken():
    """The broken backends registered under their names for one test (then removed again)."""
    from polykeops import backends as registry

    from .broken import FACTORIES

    names = {}
    for key, factory in FACTORIES.items():
        names[key] = factory().name
        registry.register_backend(names[key], factory, replace=True)
    yield names
    for name in names.values():
        registry.unregister_backend(name)


def test_planted_bugs_fire(registered_broken):
    """Each planted bug changes a small hand-made result (else the meta-tests would prove nothing).

    The two gradient bugs look for ``GenredFunction.backward`` on the call stack: if
    polykeops.torch.autograd is reorganised, this test says so before the meta-tests do.
    """
    import torch

    from polykeops.common.call import run_spec
    from polykeops.formula import algebra as A
    from polykeops.formula.nodes import Const, Var
    from polykeops.formula.spec import ReductionSpec
    from polykeops.torch.tools import TorchTools

    torch.manual_seed(0)
    tools = TorchTools()
    x, y, p = Var(0, 1, 0), Var(1, 1, 1), Var(2, 1, 2)
    f = A.mul(A.node("Sin", A.add(x, y)), p)
    data = [
        torch.randn(5, 1, dtype=torch.float64),
        torch.randn(40, 1, dtype=torch.float64),
        torch.randn(1, dtype=torch.float64),
    ]

    def grads(backend):
        args = [a.clone().requires_grad_() for a in data]
        out = run_spec(tools, ReductionSpec("Sum", (f,), (x, y, p), dtype="float64"), args, backend=backend)
        return torch.autograd.grad(out.sum(), args)

    def forward(spec, arrays, backend):
        return run_spec(tools, spec, arrays, backend=backend)

    ref = grads("reference")
    assert not torch.allclose(grads(registered_broken["sin_derivative"])[0], ref[0]), "sin_derivative"
    assert not torch.allclose(grads(registered_broken["param_grad_not_summed"])[2], ref[2]), "param_grad"
    assert torch.allclose(grads(registered_broken["correct"])[2], ref[2])
    spec = ReductionSpec("Sum", (A.mul(x, y),), (x, y), dtype="float64")
    assert not torch.allclose(
        forward(spec, data[:2], registered_broken["dropped_tile"]), forward(spec, data[:2], "reference")
    ), "dropped_tile"
    ties = [torch.zeros(3, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)]
    amin = ReductionSpec("ArgMin", (A.add(x, y),), (x, y), dtype="float64")
    assert int(forward(amin, ties, registered_broken["argmin_last"]).max()) == 3, "argmin_last"
    lse = ReductionSpec("LogSumExp", (A.add(A.mul(x, y), Const(1000, 1)),), (x, y), dtype="float64")
    assert not torch.isfinite(forward(lse, data[:2], registered_broken["lse_no_shift"])).all(), "lse"
    # i-ranges [0, 2) and [2, 5) keep j-clusters {0, 1} and {1, 2}: the bug skips the second of each
    rx, ry = torch.tensor([[0, 2], [2, 5]]), torch.tensor([[0, 10], [10, 25], [25, 40]])
    r_i = (rx, torch.tensor([2, 4]), ry[torch.tensor([0, 1, 1, 2])])
    r_j = (ry, torch.tensor([1, 3, 4]), rx[torch.tensor([0, 0, 1, 1])])
    ranges = r_i + r_j
    ref_r = run_spec(tools, spec, data[:2], backend="reference", ranges=ranges)
    assert not torch.allclose(ref_r, forward(spec, data[:2], "reference")), "the ranges are not a no-op"
    assert torch.allclose(
        run_spec(tools, spec, data[:2], backend=registered_broken["correct"], ranges=ranges), ref_r
    )
    got = run_spec(tools, spec, data[:2], backend=registered_broken["ranges_drop_last"], ranges=ranges)
    assert not torch.allclose(got, ref_r), "ranges_drop_last"
    batched = [torch.randn(3, 5, 1, dtype=torch.float64), torch.randn(1, 40, 1, dtype=torch.float64)]
    assert not torch.allclose(
        forward(spec, batched, registered_broken["batch0"]), forward(spec, batched, "reference")
    ), "batch0"


def test_wrong_op_reference_is_caught(runs):
    """A faithful backend on an op table whose ``OpDef.ref`` of Sin is wrong fails the suite: the
    oracle computes with the independent definitions of dense_ops, not with the op table's refs."""
    result = runs["wrong_ref"].result()
    label = WRONG_REF[0]
    failed = _failed_ids(result, label)
    assert any("test_op[" in line and f"{label}-Sin]" in line for line in failed), _tail(result)
    text = plain(result.stdout)
    titles = re.findall(r"polykeops conformance: (.*)\nbackend '" + re.escape(label) + "'", text)
    assert titles and all(t.startswith("wrong") for t in titles), _tail(result)
    assert "test_ref_matches_the_independent_definition[Sin]" in result.stdout, _tail(result)
    assert "wrong reference implementation of Sin" in text, _tail(result)


def test_mutant_sample_is_killed_by_the_whole_suite(runs):
    """A sample of the planted bugs of meta/mutants.py, each against the whole default suite at
    --max-examples 25, must fail it with a conformance failure and a reproduction snippet."""
    result = runs["mutant_sample"].result()
    assert result.returncode == 0, _tail(result)
    assert f"kill rate: {len(MUTANT_SAMPLE)}/{len(MUTANT_SAMPLE)}" in result.stdout, _tail(result)


def test_correct_tiled_engine_passes(runs):
    """The tiled engine of meta/mutants.py without a planted bug passes (options and special values
    here; the whole suite in the kill-rate run)."""
    result = runs["mutant_correct"].result()
    assert result.returncode == 0, _tail(result)
    assert " passed" in result.stdout, _tail(result)
