"""Kill rate of the conformance suite: every planted bug against the whole default suite.

Each planted bug (:mod:`.mutants`, and the wrappers of :mod:`.broken`) is certified
by the whole default suite (every test file of the suite, the fast tier, no test
picked for it), in a subprocess, stopping at the first failure.  A bug is
*killed* when the run fails with a conformance failure (wrong values or a broken
contract) and a reproduction snippet.  The unmodified tiled engine
(``mutants:correct``) must pass the same run.

    python -m conformance.meta.killrate                       # all, --max-examples 25, 2 jobs
    python -m conformance.meta.killrate --only nan_ignored,kahan_ignored --jobs 1
    python -m conformance.meta.killrate --markdown killrate.md

(``python -m polykeops.conformance.meta.killrate`` where the suite is installed.)
The exit status is 0 when every bug is killed and the correct engine passes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parents[1]
SUITE = __package__.rpartition(".")[0] if __package__ else "conformance"
ROOT = SUITE_DIR.parent if SUITE == "conformance" else None


def bugs() -> dict[str, str]:
    """name -> ``module:factory`` of every planted bug (and ``correct``, which must pass)."""
    from . import broken, mutants

    out = {name: f"{SUITE}.meta.mutants:{name}" for name in mutants.MUTANTS}
    for name in broken.FACTORIES:
        if name != "correct":
            out[f"broken.{name}"] = f"{SUITE}.meta.broken:{name}"
    out["broken.wrong_sin_ref"] = f"{SUITE}.meta.broken:wrong_sin_ref"
    return out


#: the suite's files, the quick deterministic and dedicated tests first: every file runs (the whole
#: default suite), the order only makes ``-x`` stop sooner
ORDER = (
    "test_options.py", "test_special.py", "test_ranges.py", "test_reductions.py", "test_ops.py",
    "test_gradients.py", "test_op_table.py", "test_codegen.py",
)


def suite_files() -> list[str]:
    """Every test file of the suite (not the meta-tests), in :data:`ORDER`."""
    files = sorted(p.name for p in SUITE_DIR.glob("test_*.py"))
    ordered = [f for f in ORDER if f in files] + [f for f in files if f not in ORDER]
    return [str(SUITE_DIR / f) for f in ordered]


def run_one(name: str, factory: str, max_examples: int, extra=()) -> dict:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("POLYKEOPS_CONFORMANCE_") or key == "POLYKEOPS_BACKEND":
            env.pop(key)
    if ROOT is not None:
        rest = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + rest)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-shrink",
        "-W", "ignore::DeprecationWarning", *suite_files(), "--backend", factory,
        "--max-examples", str(max_examples), *extra,
    ]
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.run(cmd, cwd=ROOT or tempfile.gettempdir(), env=env, stdout=out,
                              stderr=subprocess.STDOUT, text=True)
        out.seek(0)
        text = out.read()
    seconds = time.monotonic() - start
    failed = [
        line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines() if line.startswith("FAILED ")
    ]
    titles = re.findall(r"ConformanceFailure: polykeops conformance: ([^\n]*)", text)
    snippet = "Reproduce (run from the repository root):" in text
    killed = proc.returncode == 1 and bool(failed) and bool(titles) and snippet
    return {
        "name": name,
        "factory": factory,
        "returncode": proc.returncode,
        "killed": killed,
        "first_failure": failed[0] if failed else "",
        "title": titles[0] if titles else "",
        "seconds": seconds,
        "tail": text[-3000:],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated bug names (default: all)")
    parser.add_argument("--markdown", default="", help="write the table to this file too")
    args = parser.parse_args(argv)
    table = bugs()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown bugs {unknown}; known: {', '.join(table)}")
    start = time.monotonic()
    def one(name):
        r = run_one(name, table[name], args.max_examples)
        print(f"  {name}: rc {r['returncode']}, {r['seconds']:.0f} s, {r['first_failure'] or 'passed'}",
              file=sys.stderr, flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, names))
    total = time.monotonic() - start
    planted = [r for r in results if r["name"] != "correct"]
    killed = [r for r in planted if r["killed"]]
    lines = [
        f"kill rate: {len(killed)}/{len(planted)} planted bugs caught by the whole default suite "
        f"(--max-examples {args.max_examples}, -x), {total:.0f} s wall with {args.jobs} job(s)",
        "",
        "| bug | caught | first failing test | title | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r["name"] == "correct":
            status = "passes" if r["returncode"] == 0 else f"FAILS (rc {r['returncode']})"
        else:
            status = "yes" if r["killed"] else f"NO (rc {r['returncode']})"
        test = r["first_failure"].split("conformance/", 1)[-1]
        lines.append(f"| {r['name']} | {status} | `{test}` | {r['title']} | {r['seconds']:.0f} |")
    report = "\n".join(lines)
    print(report)
    for r in results:
        correct = r["name"] == "correct"
        if (correct and r["returncode"] != 0) or (not correct and not r["killed"]):
            print(f"\n--- {r['name']} ---\n{r['tail']}")
    if args.markdown:
        Path(args.markdown).write_text(report + "\n")
    ok = len(killed) == len(planted) and all(r["returncode"] == 0 for r in results if r["name"] == "correct")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
