"""The artifact store shared by the CPU and CUDA backends, and ``polykeops.clean_cache``.

Every store test runs for both folders (the CPU's shared libraries, the CUDA cubins):
atomic writes, checksums, tags, one build among racing threads, cleaning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import polykeops
from polykeops.backends import artifact_cache
from polykeops.backends.cpu import cache as cpu_cache
from polykeops.backends.cuda import build as cuda_build
from polykeops.backends.cuda import cache as cuda_cache
from polykeops.backends.cuda import nvrtc
from polykeops.errors import PolyKeopsError

ROOT = Path(__file__).resolve().parents[1]
STORES = {"cpu": cpu_cache.STORE, "cuda": cuda_cache.store("cubin")}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(path))
    return path


@pytest.fixture(params=sorted(STORES))
def store(request, fresh_cache):
    return STORES[request.param]


def _key(text: str = "material") -> str:
    return artifact_cache.key_of("test", text, str(time.time_ns()))


def _leftovers(store) -> list[Path]:
    """Temporary files or build directories left in the store's folder."""
    tmp = [p for p in store.root.rglob("*") if p.name.startswith(".") or p.suffix in (".part", ".tmp")]
    return tmp + (list((store.root / "tmp").iterdir()) if (store.root / "tmp").is_dir() else [])


def _nvrtc_missing() -> str | None:
    try:
        nvrtc.version()
        return None
    except PolyKeopsError as exc:
        return str(exc)


# -- the store -------------------------------------------------------------------------------


def test_round_trip_writes_artifact_metadata_and_tag(store):
    key = _key()
    assert store.lookup(key) is None and store.read(key) is None
    payload = os.urandom(5000)
    with store.lock(key):
        path = store.put(key, payload, {"spec": "Sum(x)"})
    assert path == store.path(key) and path.suffix == "." + store.ext
    assert store.lookup(key) == path and store.read(key) == payload
    meta = json.loads(store.meta_path(key).read_text())
    assert meta["format"] == artifact_cache.FORMAT and meta["key"] == key and meta["spec"] == "Sum(x)"
    assert meta["size"] == len(payload) and meta["file"] == path.name
    assert "polykeops" in (store.root / "CACHEDIR.TAG").read_text()
    assert not _leftovers(store)


def test_a_file_built_in_the_workspace_is_moved_into_place(store):
    key = _key()
    with store.lock(key), store.workspace(key) as work:
        produced = work / "out.bin"
        produced.write_bytes(b"compiled" * 100)
        path = store.put(key, produced)
        assert not produced.exists()
    assert store.read(key) == b"compiled" * 100 and store.lookup(key) == path
    assert not _leftovers(store)


@pytest.mark.parametrize("damage", ["truncate", "flip", "bad-metadata", "no-metadata", "other-key"])
def test_a_damaged_artifact_reads_as_missing_and_is_rebuilt(store, damage):
    key = _key()
    calls = []

    def build():
        calls.append(1)
        return b"artifact-" * 300

    assert store.get_or_build(key, build) == (b"artifact-" * 300, True)
    path, meta = store.path(key), store.meta_path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[:-10]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "bad-metadata":
        meta.write_text("{not json")
    elif damage == "no-metadata":
        meta.unlink()
    else:  # the metadata of another artifact
        meta.write_text(json.dumps(dict(json.loads(meta.read_text()), key=_key("other"))))
    assert store.lookup(key) is None and store.read(key) is None  # never loaded
    assert store.get_or_build(key, build) == (b"artifact-" * 300, True)
    assert len(calls) == 2
    assert store.lookup(key) == path and store.get_or_build(key, build)[1] is False
    assert not _leftovers(store)


def test_an_artifact_is_replaced_not_rewritten_in_place(store):
    """A loaded artifact (a mapped library, an open file) keeps its bytes when it is rebuilt."""
    key = _key()
    with store.lock(key):
        store.put(key, b"old" * 100)
    with open(store.path(key), "rb") as held, store.lock(key):
        store.put(key, b"new" * 100)
        assert held.read() == b"old" * 100
    assert store.read(key) == b"new" * 100


def test_a_failed_build_stores_nothing(store):
    key = _key()

    def broken():
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        store.get_or_build(key, broken)
    assert store.lookup(key) is None and not store.path(key).exists()
    assert not store.meta_path(key).exists() and not _leftovers(store)


def test_racing_threads_build_once(store):
    key = _key()
    calls = []
    barrier = threading.Barrier(8)
    results = [None] * 8

    def build():
        calls.append(1)
        time.sleep(0.2)
        return b"kernel" * 1000

    def work(t):
        barrier.wait()
        results[t] = store.get_or_build(key, build)[0]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and results == [b"kernel" * 1000] * 8


def test_an_unwritable_cache_builds_without_storing(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(blocker / "cache"))
    for store in STORES.values():
        assert store.get_or_build(_key(), lambda: b"x" * 10) == (b"x" * 10, True)


def test_clean_removes_only_a_tagged_folder(store):
    store.root.mkdir(parents=True)
    (store.root / "user-file.txt").write_text("not ours: no tag")
    assert store.clean() == [] and (store.root / "user-file.txt").exists()
    key = _key()
    with store.lock(key):
        store.put(key, b"payload")
    assert store.clean() == [str(store.root)] and not store.root.exists()
    assert store.clean() == []


# -- polykeops.clean_cache ----------------------------------------------------------------------


def test_clean_cache_removes_cpu_kernels_and_cuda_cubins(fresh_cache):
    """Both backends' artifacts go (CUDA cubins used to be left behind), untagged folders stay."""
    key = cpu_cache.key_for("/* a kernel */")
    with cpu_cache.STORE.lock(key):
        cpu_cache.STORE.put(key, b"\x7fELF fake library")
    if _nvrtc_missing() is None:  # a real cubin, compiled without a GPU
        built = cuda_build.build('extern "C" __global__ void k(float *x) { x[0] = 1.0f; }', "sm_80")
        cubin = built.binary
    else:
        cubin = cuda_cache.get_or_build(cuda_cache.make_key("src", (), "sm_80", (12, 0)), "cubin",
                                        lambda: b"fake cubin")[0]
    assert list(fresh_cache.glob("cpu/*/*.so")) and list(fresh_cache.glob("cuda/*/*.cubin"))
    assert cubin in [p.read_bytes() for p in fresh_cache.glob("cuda/*/*.cubin")]
    other = fresh_cache / "not-ours"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    removed = polykeops.clean_cache()
    assert removed == [str(fresh_cache / "cpu"), str(fresh_cache / "cuda")]
    assert not (fresh_cache / "cpu").exists() and not (fresh_cache / "cuda").exists()
    assert (other / "keep.txt").exists()
    assert polykeops.clean_cache() == []


def test_clean_cache_removes_other_tagged_folders(fresh_cache):
    """A folder tagged by polykeops that no loaded backend claims (an older layout) goes too."""
    old = fresh_cache / "old-backend"
    old.mkdir(parents=True)
    (old / "CACHEDIR.TAG").write_text(artifact_cache.TAG)
    assert polykeops.clean_cache() == [str(old)] and not old.exists()


def test_clean_cache_imports_neither_torch_nor_cuda(tmp_path):
    code = (
        "import sys, polykeops\n"
        "polykeops.clean_cache()\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('cuda.', 'torch.'))]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, POLYKEOPS_CACHE_DIR=str(tmp_path / "c"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
