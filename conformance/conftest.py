"""pytest entry of the suite's folder: registers the suite's plugin (:mod:`.plugin`).

``python -m pytest conformance --backend NAME`` in a checkout, ``python -m
polykeops.conformance --backend NAME`` where polykeops is installed (see the
suite's README).  When the plugin is already registered (named with ``-p``, as in
``python -m pytest -p polykeops.conformance.plugin --pyargs polykeops.conformance``,
possibly under the other name of this folder in an editable install), it is not
registered twice: its hooks must run once.
"""

from pathlib import Path


def pytest_addoption(parser, pluginmanager):
    from . import plugin

    here = Path(plugin.__file__).resolve()
    for registered in pluginmanager.get_plugins():
        path = getattr(registered, "__file__", None)
        if path and Path(path).resolve() == here:
            return
    pluginmanager.register(plugin, plugin.__name__)
