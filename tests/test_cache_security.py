"""The cache on shared machines: private modes whatever the umask, unsafe directories refused,
planted artifacts never loaded, a size cap with LRU eviction, unusable locations, builds killed
half-way, configuration typos, and many processes on an empty cache."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import polykeops
from polykeops import config
from polykeops.backends import artifact_cache
from polykeops.backends.cpu import cache as cpu_cache
from polykeops.errors import CacheUnavailable, ConfigError, PolyKeopsError

ROOT = Path(__file__).resolve().parents[1]
STORE = cpu_cache.STORE


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(path))
    monkeypatch.setattr(artifact_cache, "private_fallback", lambda: tmp_path / "private")
    artifact_cache._warned.clear()
    return path


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _run(code: str, env_extra: dict, timeout: float = 120, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout,
                          capture_output=True, text=True, **kwargs)


KERNEL_CALL = """
import numpy as np, polykeops.numpy as pk
x = np.arange(30, dtype=np.float64).reshape(10, 3) / 7
y = x[:7] * {scale}
got = (-((pk.Vi(x) - pk.Vj(y)) ** 2).sum(-1)).exp().sum(1)
want = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)).sum(1, keepdims=True)
assert np.allclose(got, want, rtol=1e-12), (got, want)
"""


def _kernel_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_umask_000_still_gives_private_folders_and_files(fresh_cache):
    code = "import os; os.umask(0)\n" + KERNEL_CALL.format(scale=1.5)
    res = _run(code, {"POLYKEOPS_JIT": "sync"})
    assert res.returncode == 0, res.stderr
    folders = [fresh_cache, *[p for p in fresh_cache.rglob("*") if p.is_dir()]]
    assert folders and all(_mode(p) == 0o700 for p in folders), {str(p): oct(_mode(p)) for p in folders}
    files = _kernel_files(fresh_cache)
    libs = [p for p in files if p.suffix == ".so"]
    assert libs and all(_mode(p) == 0o700 for p in libs)
    assert all(_mode(p) == 0o600 for p in files if p.suffix != ".so"), {str(p): oct(_mode(p)) for p in files}


def test_a_directory_others_may_write_is_refused_for_a_private_one(fresh_cache, tmp_path):
    fresh_cache.mkdir()
    os.chmod(fresh_cache, 0o777)
    with pytest.warns(RuntimeWarning, match="group or others may write.*POLYKEOPS_CACHE_DIR"):
        root = STORE.root
    assert root == tmp_path / "private" / "cpu"
    key = artifact_cache.key_of("refused", str(time.time_ns()))
    with STORE.lock(key):
        STORE.put(key, b"payload")
    assert STORE.read(key) == b"payload" and not any(fresh_cache.iterdir())


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_a_directory_of_another_user_is_refused(fresh_cache):
    fresh_cache.mkdir(mode=0o700)
    os.chown(fresh_cache, 12345, 12345)
    with pytest.warns(RuntimeWarning, match="belongs to user id 12345"):
        assert STORE.root != fresh_cache / "cpu"


def _stored(key: str) -> Path:
    with STORE.lock(key):
        return STORE.put(key, b"\x7fELF genuine kernel bytes")


def test_planted_artifact_with_a_matching_checksum_is_not_loaded(fresh_cache):
    import hashlib

    key = artifact_cache.key_of("planted", str(time.time_ns()))
    _stored(artifact_cache.key_of("another", str(time.time_ns())))  # the folder exists, with its secret
    foreign = b"\x7fELF somebody else's code"
    path, meta_path = STORE.path(key), STORE.meta_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(foreign)
    meta = {"format": artifact_cache.FORMAT, "key": key, "file": path.name, "size": len(foreign),
            "sha256": hashlib.sha256(foreign).hexdigest(), "mac": "0" * 64, "built": time.time()}
    meta_path.write_text(json.dumps(meta))
    os.chmod(path, 0o600)
    os.chmod(meta_path, 0o600)
    assert STORE.lookup(key) is None and STORE.read(key) is None
    payload, built = STORE.get_or_build(key, lambda: b"rebuilt here")
    assert built and payload == b"rebuilt here" and STORE.read(key) == b"rebuilt here"


@pytest.mark.parametrize("damage", ["mode", "owner", "metadata-mode"])
def test_an_artifact_others_could_have_written_is_not_loaded(fresh_cache, damage):
    if damage == "owner" and (not hasattr(os, "getuid") or os.getuid() != 0):
        pytest.skip("chown needs root")
    key = artifact_cache.key_of("mode", damage, str(time.time_ns()))
    path = _stored(key)
    assert STORE.lookup(key) == path
    if damage == "mode":
        os.chmod(path, 0o766)
    elif damage == "owner":
        os.chown(path, 12345, 12345)
    else:
        os.chmod(STORE.meta_path(key), 0o666)
    assert STORE.lookup(key) is None and STORE.read(key) is None


def test_least_recently_used_artifacts_are_evicted_past_the_size_cap(fresh_cache, monkeypatch):
    keys = [artifact_cache.key_of("lru", str(n), str(time.time_ns())) for n in range(6)]
    monkeypatch.setenv("POLYKEOPS_CACHE_SIZE", "100GB")
    for n, key in enumerate(keys):
        with STORE.lock(key):
            STORE.put(key, bytes(10_000))
        past = time.time() - 10_000 + 100 * n  # key n last used n * 100 s after key 0
        os.utime(STORE.meta_path(key), (past, past))
    STORE.read(keys[0])  # used long ago: touching refreshes it (older than TOUCH_EVERY)
    per_key = STORE.entries()[0][1]
    monkeypatch.setenv("POLYKEOPS_CACHE_SIZE", str(3 * per_key + 10))
    new = artifact_cache.key_of("lru-new", str(time.time_ns()))
    with STORE.lock(new):
        STORE.put(new, bytes(10_000))
    left = {k for k, _, _ in STORE.entries()}
    assert left == {new, keys[0], keys[5]}, "the least recently used (keys 1 to 4) go first"
    assert STORE.read(keys[1]) is None and not list(STORE.path(keys[1]).parent.glob(keys[1] + ".*"))


def test_cache_size_is_validated(monkeypatch):
    for value, size in [("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)), ("1234", 1234)]:
        monkeypatch.setenv("POLYKEOPS_CACHE_SIZE", value)
        assert config.cache_size() == size
    monkeypatch.setenv("POLYKEOPS_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="POLYKEOPS_CACHE_SIZE='lots'.*500MB"):
        config.cache_size()


@pytest.mark.parametrize("var,value,match", [
    ("POLYKEOPS_JIT", "bogus", "POLYKEOPS_JIT='bogus'.*auto, sync, off"),
    ("POLYKEOPS_JIT", "snyc", "Did you mean 'sync'"),
    ("POLYKEOPS_VERBOSE", "yes", "POLYKEOPS_VERBOSE='yes'"),
    ("POLYKEOPS_NUM_THREADS", "many", "POLYKEOPS_NUM_THREADS"),
    ("POLYKEOPS_CACHE_SIZE", "big", "POLYKEOPS_CACHE_SIZE"),
])
def test_a_typo_in_a_variable_is_an_error_not_a_silent_fallback(monkeypatch, var, value, match):
    import polykeops.numpy as pknp

    monkeypatch.setenv(var, value)
    x = np.ones((10, 3))
    with pytest.raises(ConfigError, match=match):  # automatic selection does not swallow it
        (pknp.Vi(x) - pknp.Vj(x)).sqnorm2().sum(1)


def test_an_unknown_variable_gives_one_warning_with_the_closest_name(monkeypatch):
    import polykeops.numpy as pknp

    monkeypatch.setenv("POLYKEOPS_JITT", "sync")
    config._unknown_warned.discard("POLYKEOPS_JITT")
    x = np.ones((4, 3))
    with pytest.warns(RuntimeWarning, match="POLYKEOPS_JITT is ignored; did you mean POLYKEOPS_JIT"):
        (pknp.Vi(x) - pknp.Vj(x)).sqnorm2().sum(1)


@pytest.mark.parametrize("location", ["file", "missing-parent-unwritable", "read-only"])
def test_an_unusable_cache_location(tmp_path, location):
    if location == "file":
        where = tmp_path / "a-file"
        where.write_text("")
    elif location == "missing-parent-unwritable":
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o500)
        where = parent / "cache"
    else:
        where = tmp_path / "ro-cache"
        where.mkdir(mode=0o500)
    if location != "file" and os.getuid() == 0:
        pytest.skip("root writes into read-only folders")
    auto = _run(KERNEL_CALL.format(scale=1.25), {"POLYKEOPS_CACHE_DIR": str(where), "POLYKEOPS_JIT": "auto"})
    assert auto.returncode == 0, auto.stderr  # the generic engine answers
    sync = _run(KERNEL_CALL.format(scale=1.25), {"POLYKEOPS_CACHE_DIR": str(where), "POLYKEOPS_JIT": "sync"})
    assert sync.returncode != 0
    assert "CacheUnavailable" in sync.stderr and "POLYKEOPS_CACHE_DIR" in sync.stderr
    assert str(where) in sync.stderr


def test_an_unusable_cache_in_auto_mode_gives_one_warning(tmp_path):
    """Enough work to start a background build, which cannot store its kernel: one warning,
    naming the path and the variable; the generic engine answers every call."""
    where = tmp_path / "a-file"
    where.write_text("")
    code = """
        import warnings
        import numpy as np, polykeops.numpy as pk
        from polykeops.backends.cpu import kernels
        warnings.simplefilter("always")
        x = np.linspace(0, 1, 3 * 3000).reshape(3000, 3)
        want = ((x[:, None] - x[None]) ** 2).sum(-1).sum(1, keepdims=True)
        with warnings.catch_warnings(record=True) as caught:
            for n in range(8):
                assert np.allclose((pk.Vi(x) - pk.Vj(x)).sqnorm2().sum(1), want)
                if n == 3:
                    assert kernels.TABLE.wait_idle(60)
        for w in caught:
            print("WARNING", w.message)
    """
    res = _run(code, {"POLYKEOPS_CACHE_DIR": str(where), "POLYKEOPS_JIT": "auto"})
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, lines
    assert str(where) in lines[0] and "POLYKEOPS_CACHE_DIR" in lines[0]


def test_sync_on_an_unusable_cache_raises_a_polykeops_error(tmp_path, monkeypatch):
    import polykeops.numpy as pknp

    where = tmp_path / "a-file"
    where.write_text("")
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(where))
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    x = np.linspace(0, 1, 33).reshape(11, 3)
    with pytest.raises(PolyKeopsError, match="cannot be used.*POLYKEOPS_CACHE_DIR"):
        (-(pknp.Vi(x) - pknp.Vj(x * 1.75)).sqnorm2()).exp().sum(1)
    assert issubclass(CacheUnavailable, OSError)


def test_a_build_killed_half_way_leaves_nothing_that_loads(fresh_cache, tmp_path):
    """kill -9 during compilation: no artifact, the build folder is swept by the next run, which
    rebuilds and answers."""
    slow_cc = tmp_path / "slow-cc"
    slow_cc.write_text('#!/bin/sh\ncase " $* " in *" -o "*) touch "$STARTED"; sleep 30;; esac\n'
                       'exec gcc "$@"\n')
    os.chmod(slow_cc, 0o755)
    started = tmp_path / "started"
    env = dict(os.environ, PYTHONPATH=str(ROOT), POLYKEOPS_JIT="sync", CC=str(slow_cc), STARTED=str(started),
               POLYKEOPS_CACHE_DIR=str(fresh_cache))
    proc = subprocess.Popen([sys.executable, "-c", KERNEL_CALL.format(scale=1.125)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the compiler never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    cpu = fresh_cache / "cpu"
    assert not list(cpu.rglob("*.so")) and not list(cpu.rglob("*.json"))
    assert list((cpu / "tmp").iterdir()), "the killed build left its folder"
    again = _run(KERNEL_CALL.format(scale=1.125),
                 {"POLYKEOPS_JIT": "sync", "POLYKEOPS_CACHE_DIR": str(fresh_cache)})
    assert again.returncode == 0, again.stderr
    assert list(cpu.rglob("*.so")) and not list((cpu / "tmp").iterdir())


MANY = """
import sys, threading, numpy as np, polykeops.numpy as pk
from polykeops.backends.cpu import cache
errors = []
def work(t):
    try:
        for f in range(20):
            x = np.linspace(0, 1, 60).reshape(20, 3) + t
            y = x[:9] * 0.5
            got = (-((pk.Vi(x) - pk.Vj(y)) ** 2).sum(-1) * (1 + f)).exp().sum(1)
            want = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * (1 + f)).sum(1, keepdims=True)
            assert np.allclose(got, want, rtol=1e-10)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print("BUILDS", cache.BUILDS)
sys.exit(1 if errors else 0)
"""


def test_eight_processes_of_eight_threads_build_each_new_formula_once(fresh_cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), POLYKEOPS_JIT="sync", POLYKEOPS_CACHE_DIR=str(fresh_cache),
               POLYKEOPS_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", MANY], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    builds = sum(int(o[0].split("BUILDS")[1]) for o in outs)
    assert builds == 20, f"{builds} compilations for 20 formulas"
    assert len(list((fresh_cache / "cpu").rglob("*.so"))) == 20


def test_cache_command_shows_and_cleans(fresh_cache):
    res = _run(KERNEL_CALL.format(scale=1.0625),
               {"POLYKEOPS_JIT": "sync", "POLYKEOPS_CACHE_DIR": str(fresh_cache)})
    assert res.returncode == 0, res.stderr
    show = _run("import polykeops.__main__ as m, sys; sys.exit(m.main(['cache']))",
                {"POLYKEOPS_CACHE_DIR": str(fresh_cache)})
    assert show.returncode == 0 and "cpu" in show.stdout and "1 artifact" in show.stdout, show.stdout
    clean = _run("import polykeops.__main__ as m, sys; sys.exit(m.main(['cache', '--clean']))",
                 {"POLYKEOPS_CACHE_DIR": str(fresh_cache)})
    assert clean.returncode == 0 and "removed" in clean.stdout
    assert not list(fresh_cache.rglob("*.so"))
    assert polykeops.clean_cache() == []


def test_automatic_selection_never_reads_a_configuration_error_as_unavailable(monkeypatch):
    from polykeops.backends import registry

    monkeypatch.setenv("POLYKEOPS_JIT", "bogus")
    with pytest.raises(ConfigError, match="POLYKEOPS_JIT"):
        registry.status("cpu")


FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
"""


@pytest.mark.parametrize("mode", ["auto", "sync"])
def test_a_full_file_system(fresh_cache, mode):
    """Writes fail past 2 kB (a file-size limit standing in for a full disk): auto answers with
    the generic engine; sync raises a PolyKeopsError naming the cause; nothing half-written stays."""
    res = _run(FULL_DISK + KERNEL_CALL.format(scale=1.375) + "\nimport time; time.sleep(0.5)\n",
               {"POLYKEOPS_JIT": mode, "POLYKEOPS_CACHE_DIR": str(fresh_cache)})
    if mode == "auto":
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith(("polykeops.errors.", "polykeops.backends.cpu.compiler.")), last
        assert "File too large" in last and "POLYKEOPS_CACHE_DIR" in last, res.stderr[-2000:]
    assert not list(fresh_cache.rglob("*.so")) and not list(fresh_cache.rglob("*.part"))
    assert not [p for p in fresh_cache.rglob("*.json")]
