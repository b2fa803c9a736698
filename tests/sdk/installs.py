"""Helpers for the SDK tests that install packages and run commands in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"{res.args} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def pip_install_target(project: Path, target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    ok(run([*cmd, "--target", str(target), str(project)], cwd=project.parent))


def passed(out: str) -> int:
    m = re.search(r"(\d+) passed", out)
    assert m and not re.search(r"\d+ (failed|errors?)\b", out), out
    return int(m[1])


def fill_in_todos(files: list[Path]) -> int:
    """Do what the author does after `driver new`: write real words where the scaffold left TODOs."""
    n = 0
    for f in files:
        text = f.read_text()
        n += text.count("TODO")
        f.write_text(re.sub(r"TODO:[^\n]*", "Reads a thermometer's temperature over TCP.", text))
    return n
