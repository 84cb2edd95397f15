"""Reductions over tensors sharded across torch.distributed ranks (polykeops.torch.distributed).

Gloo groups of 2 and 3 processes are started here (tests/distributed_worker.py, one process
per rank, on this machine's CPUs); every rank runs every case of the worker and reports.
Each case compares the rank's shard of the distributed result, and of its gradients, with
polykeops in one process on the concatenated data (indices exactly, values to 1e-10 in
float64): every reduction family forward and backward, uneven shards, a rank with an empty
shard, batch dimensions, reductions over i, axes that are not sharded, ties across shards,
second order for Sum, LogSumExp and SumSoftMaxWeight.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from distributed_worker import CASES  # noqa: E402

TIMEOUT = 240  # seconds for a whole group (the worker's collectives time out after 60 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(world: int, out_dir: Path, cases=()) -> list[dict]:
    """Start ``world`` ranks of the worker; returns each rank's results (fails on a hang)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), str(r), str(world), str(port),
                          str(out_dir), *cases], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(world)
    ]
    deadline = time.monotonic() + TIMEOUT
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the group of {world} ranks did not finish in {TIMEOUT} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for r, (p, log) in enumerate(zip(procs, logs)):
        path = out_dir / f"rank{r}.json"
        when = "after writing its results (at teardown)" if path.exists() else "before writing its results"
        assert p.returncode == 0 and path.exists(), \
            f"rank {r} of {world} failed (exit {p.returncode}) {when}:\n{log[-6000:]}"
        results.append(json.loads(path.read_text()))
    return results


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w}ranks")
def group_results(request, tmp_path_factory):
    world = request.param
    results = run_group(world, tmp_path_factory.mktemp(f"dist{world}"))
    for res in results:  # the ranks imported this checkout of polykeops
        assert Path(res["__file__"]).resolve().is_relative_to(ROOT), res["__file__"]
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(group_results, case):
    failures = {r: res.get(case, "not run") for r, res in enumerate(group_results) if res.get(case) != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{text}" for r, text in failures.items())


def test_outside_a_process_group():
    """sharded() needs an initialised process group."""
    import torch

    from polykeops.errors import FormulaError
    from polykeops.torch.distributed import sharded

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    with pytest.raises(FormulaError, match="init_process_group"):
        sharded(torch.zeros(3, 2))
