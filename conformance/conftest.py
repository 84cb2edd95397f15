"""pytest entry of the suite's folder: loads the suite's plugin (:mod:`.plugin`).

``python -m pytest conformance --backend NAME`` in a checkout, ``python -m
polykeops.conformance --backend NAME`` where polykeops is installed (see the
suite's README).  When the plugin was already loaded with ``-p`` (the form
``python -m pytest -p polykeops.conformance.plugin --pyargs polykeops.conformance``),
this file adds nothing: its hooks must not run twice (even when the plugin was
imported under the other name of this folder, as in an editable install).
"""

import sys
from pathlib import Path


def _plugin_loaded() -> bool:
    plugin = Path(__file__).with_name("plugin.py")
    for name, module in list(sys.modules.items()):
        if name.endswith("conformance.plugin") and getattr(module, "__file__", None):
            if Path(module.__file__).resolve() == plugin.resolve():
                return True
    return False


if not _plugin_loaded():
    from .plugin import *  # noqa: F403 - the plugin's hooks and fixtures, as this conftest's
