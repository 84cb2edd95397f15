"""Packaging: the conformance suite ships inside the package as ``polykeops.conformance``.

Its sources stay in the top-level ``conformance/`` folder; ``pyproject.toml`` maps
the package name onto the folder (``[tool.setuptools.package-dir]``) and lists every
package explicitly (find cannot see a mapped folder).  These checks run from the
checkout: the list against the tree, and the suite imported under its installed name
(through the same mapping, as an editable install does) with its ``__main__``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")


def _setuptools_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]


def _package_dirs(package_dir: dict) -> dict[str, Path]:
    """Every package of the tree (a folder with an ``__init__.py``) under the names it installs as."""
    roots = {"polykeops": ROOT / "polykeops"} | {name: ROOT / path for name, path in package_dir.items()}
    found = {}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found[".".join((name, *rel))] = init.parent
    return found


def test_pyproject_lists_every_package_and_maps_the_conformance_folder():
    config = _setuptools_config()
    assert config["package-dir"] == {"polykeops.conformance": "conformance"}
    found = _package_dirs(config["package-dir"])
    listed = set(config["packages"])
    assert listed == set(found), (
        "pyproject.toml [tool.setuptools] packages must list every package: "
        f"missing {sorted(set(found) - listed)}, stale {sorted(listed - set(found))}"
    )
    assert {"polykeops.conformance", "polykeops.conformance.meta"} <= listed


#: imports the suite under its installed name through the pyproject mapping (what the finder of an
#: editable install does), then runs ``argv`` as ``python -m polykeops.conformance``
_AS_INSTALLED = """
import importlib.abc, importlib.util, runpy, sys, tomllib
from pathlib import Path
root = Path(sys.argv[1])
mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

class Mapped(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in mapping:
            folder = root / mapping[name]
            return importlib.util.spec_from_file_location(
                name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        return None

sys.meta_path.insert(0, Mapped())
import polykeops.conformance as suite
assert Path(suite.__file__).parent == root / "conformance", suite.__file__
for module in ("plugin", "session", "dense_ops", "dense_values", "tolerances", "gradients", "checks",
               "repro", "runner", "strategies", "meta.broken"):
    importlib.import_module("polykeops.conformance." + module)
loose = sorted(m for m in sys.modules if m == "conformance" or m.startswith("conformance."))
assert not loose, f"the suite imports itself by its checkout name: {loose}"
sys.argv = ["polykeops.conformance", *sys.argv[2:]]
runpy.run_module("polykeops.conformance", run_name="__main__", alter_sys=True)
"""


def _run_as_installed(*args, timeout=120):
    path = [str(ROOT), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_AS_INSTALLED), str(ROOT), *args],
        cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_the_suite_runs_as_polykeops_conformance():
    """``import polykeops.conformance`` is the conformance folder, every module imports under that
    name (relative imports only), and ``python -m polykeops.conformance --help`` shows the options."""
    res = _run_as_installed("--help")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "--backend=BACKEND" in res.stdout and "--max-examples" in res.stdout, res.stdout[-3000:]


def test_an_editable_install_maps_the_folder():
    """Where polykeops is installed in editable mode from this checkout (``pip install -e .``),
    ``polykeops.conformance`` is this checkout's conformance folder."""
    import importlib.util

    spec = importlib.util.find_spec("polykeops.conformance")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or ROOT not in origin.parents:
        pytest.skip("polykeops.conformance is not installed from this checkout (pip install -e .)")
    assert origin.parent == ROOT / "conformance"
