"""A simulated thermal sysfs tree for tests and demos: real files in a temporary folder.

``FakeThermal()`` makes the tree (``.path`` is the driver's ``base_path``); ``add(type, Cel)``
adds a zone; ``set``, ``corrupt`` and ``remove`` change it while the driver runs; ``close()``
deletes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile


class FakeThermal:
    """Zones as ``thermal_zoneN/{type,temp}`` files, written the way the kernel shows them."""

    def __init__(self, path: str | None = None) -> None:
        self._owned = path is None
        self.path = path or tempfile.mkdtemp(prefix="sensegate-thermal-")
        self._folders: dict[str, str] = {}

    def add(self, zone_type: str, celsius: float) -> str:
        """A new zone; returns its folder name."""
        folder = f"thermal_zone{len(self._folders)}"
        os.makedirs(os.path.join(self.path, folder))
        self._folders[zone_type] = folder
        self._write(zone_type, "type", zone_type + "\n")
        self.set(zone_type, celsius)
        return folder

    def set(self, zone_type: str, celsius: float) -> None:
        """The zone's temperature, as millidegrees."""
        self._write(zone_type, "temp", f"{round(celsius * 1000)}\n")

    def corrupt(self, zone_type: str, text: str = "garbage\n") -> None:
        """Put something that is not a temperature in the zone's temp file."""
        self._write(zone_type, "temp", text)

    def remove(self, zone_type: str) -> None:
        """The zone's temp file disappears (a driver unloaded)."""
        os.unlink(os.path.join(self.path, self._folders[zone_type], "temp"))

    def close(self) -> None:
        """Delete the tree if this object made it."""
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def _write(self, zone_type: str, name: str, text: str) -> None:
        target = os.path.join(self.path, self._folders[zone_type], name)
        tmp = target + ".new"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, target)  # readers never see a half-written file
