"""Modules that a dependency imports but rarely uses: loaded on first attribute access.

``lazy_module(name)`` puts a stand-in module under ``name`` in ``sys.modules``; an ``import``
of that name then finds it and does nothing, and the first attribute read imports the real
module and puts it in the stand-in's place (also as the parent package's attribute, so later
reads go straight to it). Used where a library imports a heavy module at its top for a
feature we do not use, so the gateway does not pay for it on every start.

(``importlib.util.LazyLoader`` would be the textbook tool, but on Python 3.11 the import
statement itself reads ``__spec__`` of a module found in ``sys.modules``, which makes a
LazyLoader module load at once.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module until something reads one of its attributes."""

    def __getattr__(self, attr: str) -> Any:  # only for attributes the stand-in lacks
        return getattr(_load(self), attr)


def _load(stub: _Deferred) -> types.ModuleType:
    name = stub.__name__
    with _lock:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        return importlib.import_module(name)


def lazy_module(name: str) -> types.ModuleType:
    """Register ``name`` to be imported on first use, unless it is imported already."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)  # imports the parent package; fails early if absent
    if spec is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    stub = _Deferred(name)
    stub.__spec__ = spec
    stub.__package__ = spec.parent
    sys.modules[name] = stub
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, stub)
    return stub
