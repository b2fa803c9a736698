"""Entry points of installed distributions, read straight from their metadata directories.

``importlib.metadata`` does this too, but importing it pulls in zipfile, csv, email parsing
and importlib.resources: about 1 MB of resident memory in a daemon that needs one group of
entry points once at start. This reads the same files the same way: every directory on
``sys.path`` is searched for ``*.dist-info`` and ``*.egg-info`` directories, the first
distribution of a name wins (as with ``importlib.metadata``), and ``entry_points.txt`` is the
INI-style file that packaging tools write (``[group]`` then ``name = module:attr [extras]``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_NORMALIZE = re.compile(r"[-_.]+")
_MAX_FILE = 1024 * 1024  # an entry_points.txt larger than this is not one


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = value`` line of a group; ``load()`` imports what it names."""

    name: str
    value: str
    group: str
    dist: str

    def load(self) -> Any:
        """Import the module and walk the attribute path (``pkg.mod:obj.attr``)."""
        target = self.value.split("[", 1)[0].strip()  # drop "[extras]"
        module, _, attrs = target.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in filter(None, attrs.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _dist_name(dirname: str) -> str:
    stem = dirname.rsplit(".", 1)[0]  # foo_bar-1.0.dist-info -> foo_bar-1.0
    return _NORMALIZE.sub("_", stem.split("-", 1)[0]).lower()


def parse(text: str, dist: str = "") -> list[EntryPoint]:
    """Entry points of one ``entry_points.txt``; malformed lines are skipped, not fatal."""
    out: list[EntryPoint] = []
    group = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        name, sep, value = line.partition("=")
        if sep and group and name.strip() and value.strip():
            out.append(EntryPoint(name.strip(), value.strip(), group, dist))
    return out


def _metadata_dirs(paths: Iterable[str]) -> Iterable[tuple[str, str]]:
    for entry in paths:
        base = entry or os.getcwd()
        try:
            names = sorted(os.listdir(base))
        except OSError:  # a zip file, a missing directory, no permission
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                yield _dist_name(name), os.path.join(base, name)


def entry_points(group: str, paths: Iterable[str] | None = None) -> list[EntryPoint]:
    """The entry points of ``group`` of every distribution found on ``paths`` (``sys.path``)."""
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for dist, where in _metadata_dirs(sys.path if paths is None else paths):
        if dist in seen:
            continue
        seen.add(dist)
        path = os.path.join(where, "entry_points.txt")
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_FILE + 1)
        except OSError:
            continue
        if len(raw) > _MAX_FILE:
            continue
        out.extend(ep for ep in parse(raw.decode("utf-8", "replace"), dist) if ep.group == group)
    return out
