"""The examples gallery (``examples/*.py``) as integration tests.

Every gallery script checks itself against a dense torch reference and raises AssertionError
when they disagree; here each runs with ``--small`` in a fresh interpreter and must exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["kmeans.py", "knn_classification.py", "gaussian_process.py", "sinkhorn.py", "block_sparse.py",
           "dask_knn.py", "multi_gpu.py"]


def test_gallery_lists_every_script():
    found = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert found == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_gallery_script_runs_and_checks_itself(script):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--small"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} --small failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script} printed nothing"
