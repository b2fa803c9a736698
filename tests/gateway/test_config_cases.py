"""Data-driven config cases: tests/gateway/config_cases/<name>/{config.yaml, expected.err}.

A case without expected.err must validate. The error text is compared line by line, exactly
as `sensegate check` prints it (FILE:LINE:COL: message), so wording and positions are pinned.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigInvalid, load_config
from gateway.registry import Registry

CASES = sorted(p for p in (Path(__file__).parent / "config_cases").iterdir() if p.is_dir())


def _normalise(text: str) -> list[str]:
    return [re.sub(r"\(installed: [^)]*\)", "(installed: ...)", line) for line in text.strip().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(case)
    expected = case / "expected.err"
    rc = main(["check", "config.yaml"])
    out = capsys.readouterr().out
    if expected.exists():
        assert rc == 1
        assert _normalise(out) == _normalise(expected.read_text())
    else:
        assert rc == 0, out
        assert out.startswith("config.yaml: ok")


def test_cases_cover_at_least_ten_kinds_of_mistake() -> None:
    assert sum((c / "expected.err").exists() for c in CASES) >= 10


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("gateway: {id: gw-1, colour: red}\nbuffer: {policy: x}\ndrivers:\n  - driver: nosuch\n")
    with pytest.raises(ConfigInvalid) as exc:
        load_config(f, Registry.discover())
    lines = [p.line for p in exc.value.problems]
    assert lines == [1, 2, 4]


def test_anchors_and_merge_keys_resolve() -> None:
    cfg = load_config(Path(__file__).parent / "config_cases/ok_anchors/config.yaml", Registry.discover())
    a, b = cfg.instance("a").config, cfg.instance("b").config
    assert (a.interval, b.interval) == (2.0, 2.0)
    assert b.model_dump(exclude={"name"}) == a.model_dump(exclude={"name"})


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as exc:
        load_config(tmp_path / "absent.yaml", Registry.discover())
    assert "cannot read config" in str(exc.value)


def test_schema_export_covers_drivers(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["check", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    branches = schema["properties"]["drivers"]["items"]["oneOf"]
    names = {b["properties"]["driver"]["const"] for b in branches}
    assert {"sim", "example"} <= names
    sim = next(b for b in branches if b["properties"]["driver"]["const"] == "sim")
    assert sim["additionalProperties"] is False
    for b in branches:  # every option documented
        for key, prop in b["properties"].items():
            assert prop.get("description"), f"{b['title']}.{key} has no description"
