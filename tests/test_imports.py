"""``import polykeops`` is cheap: no torch, no CUDA, no compiled backend module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cuda", "cupy", "numba")


def _modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POLYKEOPS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _heavy(mods):
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def _backend_modules(mods):
    # the registry, the contract, the request and the dispatch are plain Python; nothing below
    # them (no backend) may be imported eagerly
    light = {"polykeops.backends", "polykeops.backends.contract", "polykeops.backends.registry",
             "polykeops.backends.request", "polykeops.backends.reduction_call",
             "polykeops.backends.dispatch"}
    return sorted(m for m in mods if m.startswith("polykeops.backends") and m not in light)


@pytest.mark.parametrize("statement", [
    "import polykeops",
    "import polykeops.errors, polykeops.config",
    "import polykeops.formula",
    "import polykeops.backends",
])
def test_import_is_light(statement):
    mods = _modules_after(statement)
    assert "polykeops" in mods
    assert _heavy(mods) == []
    assert _backend_modules(mods) == []


def test_numpy_front_end_imports_no_torch():
    mods = _modules_after("import polykeops.numpy")
    assert _heavy(mods) == []

