"""``python -m polykeops.conformance [--backend NAME] [pytest arguments]``: certify a backend.

Runs pytest on the suite's own folder, wherever polykeops is installed (no
checkout needed); every argument goes to pytest (``--backend``, ``--tier``,
``--max-examples``, ``-k``, ``-x``...).  pytest's cache is off unless asked for
(``-p cacheprovider``): it would be written into the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import pytest

    args = list(sys.argv[1:] if argv is None else argv)
    folder = str(Path(__file__).resolve().parent)
    # the folder (not --pyargs): its conftest.py is then loaded before the options are parsed,
    # and test modules get the package name of the folder (also in an editable install)
    cache = [] if "cacheprovider" in " ".join(args) else ["-p", "no:cacheprovider"]
    return int(pytest.main([folder, *cache, *args]))


if __name__ == "__main__":
    sys.exit(main())
