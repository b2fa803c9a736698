"""The daemon process keeps its environment unchanged once it runs threads (setenv is not thread-safe)."""

from __future__ import annotations

import subprocess
import sys

# imports a driver library that would load readline, then asks the C library (as getenv in
# another thread would) whether readline's set-up wrote LINES/COLUMNS into the environment
PROBE = """
import ctypes, sys
{guard}
import bacpypes3  # its console module imports readline
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
print(repr(sys.modules.get("readline")), libc.getenv(b"LINES"), libc.getenv(b"COLUMNS"))
"""


def probe(guard: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": "/nonexistent"}  # no LINES/COLUMNS given
    r = subprocess.run([sys.executable, "-c", PROBE.format(guard=guard)], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_daemon_keeps_readline_and_its_setenv_out() -> None:
    assert probe("from gateway.daemon import no_terminal_libraries; no_terminal_libraries()") == "None None None"


def test_without_the_guard_readline_writes_the_environment() -> None:
    """What the guard is for: without it, importing the driver library changes the environment."""
    out = probe("")
    assert "module 'readline'" in out and not out.endswith("None None"), out
