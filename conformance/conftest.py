"""pytest entry of the suite's folder: loads the suite's plugin (:mod:`.plugin`).

``python -m pytest conformance --backend NAME`` in a checkout, ``python -m
polykeops.conformance --backend NAME`` where polykeops is installed (see the
suite's README).  When the plugin was already loaded with ``-p`` (the form
``python -m pytest -p polykeops.conformance.plugin --pyargs polykeops.conformance``),
this file adds nothing: its hooks must not run twice.
"""

import sys

if f"{__package__}.plugin" not in sys.modules:
    from .plugin import *  # noqa: F403 - the plugin's hooks and fixtures, as this conftest's
