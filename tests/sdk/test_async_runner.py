"""The one async test runner (gateway/testing/plugin.py), as a driver package's suite gets it:
each ``async def`` test in a fresh loop, a leaked task fails its test, and asyncio's debug mode
is off unless the environment asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = '''
import asyncio

async def test_debug_mode_as_the_environment_says():
    want = {want!r}
    assert asyncio.get_running_loop().get_debug() is want

async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(60), name="forgotten")
'''


def _run(tmp_path: Path, debug: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE.format(want=debug))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    if debug:
        env["PYTHONASYNCIODEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("debug", [False, True])
def test_the_runner_runs_async_tests_and_fails_a_leaked_task(tmp_path: Path, debug: bool) -> None:
    done = _run(tmp_path, debug)
    out = done.stdout + done.stderr
    assert "1 failed, 1 passed" in out, out
    assert "test left asyncio tasks running: forgotten" in out, out
