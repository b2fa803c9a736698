"""`sensegate driver check` flags each kind of mistake it knows, in the broken fixture drivers of
tests/sdk/fixtures/ (each an out-of-tree project with one mistake), at the right file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.sdk.checker import Problem, check_driver

FIXTURES = Path(__file__).parent / "fixtures"


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def problems(case: str) -> list[Problem]:
    return check_driver(FIXTURES / case)


def test_good_fixture_is_clean() -> None:
    assert problems("good") == []


def expect(found: list[Problem], file: Path, line: int, fragment: str) -> None:
    hits = [p for p in found if p.path == file.resolve() and p.line == line and fragment in p.message]
    shown = "\n".join(p.format() for p in found)
    assert hits, f"expected {file}:{line}: ...{fragment}... among:\n{shown}"


# (case, file inside the fixture, text on the line the problem is placed at or None for line 1, message fragment)
CASES = [
    ("badname", "sensegate_badname/__init__.py", 'name="other"', "manifest name 'other' does not match the folder"),
    ("badname", "pyproject.toml", "sensegate_badname:MANIFEST", "entry point name 'badname' does not match"),
    ("badentry", "pyproject.toml", "wrongentry =", "entry point name 'wrongentry' does not match the driver name"),
    ("badapi", "sensegate_badapi/__init__.py", "api_version=99", "driver API version 99 is not supported"),
    ("noreadme", "sensegate_noreadme/README.md", None, "README.md is missing"),
    ("stalereadme", "sensegate_stalereadme/README.md", None, "must embed sample.yaml verbatim"),
    ("nosample", "sensegate_nosample/sample.yaml", None, "sample.yaml is missing"),
    ("badsample", "sensegate_badsample/sample.yaml", "level: -3", "greater than or equal to 0"),
    ("badsample", "sensegate_badsample/sample.yaml", "colour: blue", "unknown key 'colour'"),
    ("mutable", "sensegate_mutable/driver.py", "_cache = {}", "'_cache' is a dict"),
    ("mutable", "sensegate_mutable/driver.py", "_queue = collections.deque()", "collections.deque()"),
    ("mutable", "sensegate_mutable/driver.py", "SEEN.append", "'SEEN' (line 7) is changed here"),
    ("mutable", "sensegate_mutable/driver.py", "history: list[float] = []", "FixtureDriver.history is a list"),
    ("mutable", "sensegate_mutable/driver.py", "global _count", "`global _count`"),
    ("blocking", "sensegate_blocking/driver.py", "time.sleep(0.1)\n", "time.sleep()"),
    ("blocking", "sensegate_blocking/driver.py", "nap(0.1)", "blocking call time.sleep()"),
    ("blocking", "sensegate_blocking/driver.py", 'with open("/etc/hostname")', "blocking call open()"),
    ("blocking", "sensegate_blocking/driver.py", "subprocess.run(", "subprocess.run()"),
    ("blocking", "sensegate_blocking/driver.py", "requests.get(", "requests.get()"),
    ("blocking", "sensegate_blocking/driver.py", "self._port.read(10)", "self._port.read()"),
    ("blocking", "sensegate_blocking/driver.py", "subprocess.Popen(", "ASYNC220"),
    ("layering", "sensegate_layering/proto.py", "from gateway", "protocol code and must not import gateway"),
    ("notests", "tests", None, "no tests"),
]


@pytest.mark.parametrize(("case", "file", "marker", "fragment"), CASES, ids=[f"{c[0]}:{c[3][:30]}" for c in CASES])
def test_flags(case: str, file: str, marker: str | None, fragment: str) -> None:
    path = FIXTURES / case / file
    if marker is None:
        line = 1
    elif marker.endswith("\n"):  # the first line that is exactly this statement
        line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if t.strip() == marker.strip())
    else:
        line = line_of(path, marker)
    expect(problems(case), path, line, fragment)


def test_each_fixture_has_only_its_own_kind_of_problem() -> None:
    """A fixture shows one mistake: nothing else about it is reported (no false positives)."""
    kinds = {
        "badname": ("does not match",),
        "badentry": ("does not match",),
        "badapi": ("API version",),
        "noreadme": ("README.md is missing",),
        "stalereadme": ("embed sample.yaml",),
        "nosample": ("sample.yaml is missing",),
        "badsample": ("invalid:",),
        "mutable": ("mutable state", "shared by every instance", "global"),
        "blocking": ("blocking call", "(ruff)"),
        "layering": ("must not import gateway",),
        "notests": ("no tests",),
    }
    for case, allowed in kinds.items():
        found = problems(case)
        assert found, f"{case}: nothing flagged"
        stray = [p.format() for p in found if not any(a in p.message for a in allowed)]
        assert stray == [], f"{case}: unexpected problems {stray}"


def test_in_executor_helpers_are_not_flagged() -> None:
    """Plain functions nested in a coroutine (handed to run_blocking) may block."""
    path = FIXTURES / "blocking" / "sensegate_blocking" / "driver.py"
    inner = line_of(path, "time.sleep(0.1)  # fine")
    assert not [p for p in problems("blocking") if p.line in (inner, inner + 1)]


def test_cli_output_and_exit_codes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    assert main(["driver", "check", "--no-ruff", "good", "layering"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "good: ok" in out
    line = line_of(FIXTURES / "layering" / "sensegate_layering" / "proto.py", "from gateway")
    assert any(o.startswith(f"layering/sensegate_layering/proto.py:{line}: proto.py is protocol code") for o in out)
    assert out[-1] == "1 of 2 driver(s) ok"
    assert main(["driver", "check", "good"]) == 0
    assert capsys.readouterr().out.strip() == "good: ok"


def test_not_a_driver(tmp_path: Path) -> None:
    (found,) = check_driver(tmp_path)
    assert "neither a driver folder" in found.message
