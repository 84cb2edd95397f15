"""The in-process table of specialised CPU kernels: bounded (least recently used kernels are
unloaded and their libraries unmapped), and a cached library that the loader rejects is
deleted, built again and used.  Each test runs in a fresh interpreter (its own table)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")

PRELUDE = """
import gc
import numpy as np
import polykeops.numpy as pk
from polykeops.backends.cpu import cache, kernels
from polykeops.backends.cpu.omp import driver

x = np.arange(60, dtype=np.float64).reshape(20, 3) / 11
y = x[:13] * 1.25

def call(k):
    # an integer constant is part of the spec: one kernel per k
    got = ((pk.Vi(x) - pk.Vj(y)) ** 2).sum(-1).__mul__(k).sum(1)
    want = (((x[:, None] - y[None]) ** 2).sum(-1) * k).sum(1, keepdims=True)
    assert np.allclose(got, want, rtol=1e-12), (k, got, want)

def mapped():
    return open("/proc/self/maps").read()
"""


def _run(code: str, cache_dir: Path, **env_extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), POLYKEOPS_CACHE_DIR=str(cache_dir), POLYKEOPS_JIT="sync",
               **env_extra)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(code)], env=env,
                         timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_the_table_is_bounded_and_evicted_libraries_are_unmapped(tmp_path):
    out = _run("""
        paths = {}
        for k in (1, 2, 3, 4):
            call(k)
            for spec, kern in kernels.TABLE.kernels.items():
                paths.setdefault(kern.key, kern.path)
            assert len(kernels.TABLE.kernels) <= 2, len(kernels.TABLE.kernels)
        gc.collect()
        assert len(paths) == 4 and cache.BUILDS == 4
        assert driver().libraries_loaded() == 2, driver().libraries_loaded()
        live = {kern.path for kern in kernels.TABLE.kernels.values()}
        maps = mapped()
        for path in paths.values():
            assert (path in maps) == (path in live), (path, path in maps)
        call(1)  # evicted: mapped again from the disk cache, not compiled again
        assert cache.BUILDS == 4 and driver().libraries_loaded() == 2
        print("ok")
    """, tmp_path / "cache", POLYKEOPS_MAX_KERNELS="2")
    assert out.strip() == "ok"


def test_a_library_the_loader_rejects_is_deleted_built_again_and_used(tmp_path):
    out = _run("""
        call(7)
        (spec, kern), = kernels.TABLE.kernels.items()
        key, path = kern.key, kern.path
        del kern
        kernels.forget_loaded()
        gc.collect()
        assert path not in mapped() and driver().libraries_loaded() == 0
        # metadata that matches (written by the store itself), a library no loader accepts
        with cache.STORE.lock(key):
            cache.STORE.put(key, b"\\x7fELF truncated by a full disk", {"spec": str(spec)})
        assert cache.lookup(key) is not None
        call(7)
        assert cache.BUILDS == 2, cache.BUILDS
        assert path in mapped() and open(path, "rb").read(4) == b"\\x7fELF" and cache.lookup(key) is not None
        print("ok")
    """, tmp_path / "cache")
    assert out.strip() == "ok"


def test_max_kernels_is_validated(monkeypatch):
    from polykeops import config
    from polykeops.errors import ConfigError

    monkeypatch.setenv("POLYKEOPS_MAX_KERNELS", "0")
    with pytest.raises(ConfigError, match="POLYKEOPS_MAX_KERNELS='0' must be a positive integer"):
        config.max_kernels()
    monkeypatch.setenv("POLYKEOPS_MAX_KERNELS", "7")
    assert config.max_kernels() == 7
