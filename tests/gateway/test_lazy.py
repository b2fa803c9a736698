"""gateway.lazy: a module imported by a dependency is loaded only when something uses it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.lazy import lazy_module


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_mqtt_uplink_does_not_load_urllib_request_or_http_client() -> None:
    out = _run("import sys, gateway.uplinks.mqtt, paho.mqtt.client\n"
               "print(sorted(m for m in ('http.client', 'email.message', 'urllib.request') if m in sys.modules\n"
               "             and type(sys.modules[m]).__name__ == 'module'))")
    assert out == "[]"


def test_first_use_loads_the_real_module_everywhere() -> None:
    out = _run("import sys, gateway\n"
               "import urllib.request as r\n"
               "from urllib.request import getproxies\n"  # from-import also loads it
               "import urllib\n"
               "real = sys.modules['urllib.request']\n"
               "print(type(real).__name__, urllib.request is real, callable(getproxies),\n"
               "      'http.client' in sys.modules, r.Request is real.Request)")
    assert out == "module True True True True"


def test_already_imported_or_missing_modules() -> None:
    assert lazy_module("json") is sys.modules["json"]
    with pytest.raises(ModuleNotFoundError):
        lazy_module("no_such_module_here")
