"""gateway.entrypoints reads the same entry points as importlib.metadata, without its imports."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.entrypoints import entry_points, parse
from gateway.registry import GROUP


def _pairs(eps: object) -> set[tuple[str, str]]:
    return {(ep.name, ep.value) for ep in eps}  # type: ignore[attr-defined]


def test_same_as_importlib_metadata_for_every_group_here() -> None:
    groups = {ep.group for dist in metadata.distributions() for ep in dist.entry_points}
    assert GROUP in groups and "console_scripts" in groups
    for group in groups:
        assert _pairs(entry_points(group)) == _pairs(metadata.entry_points(group=group)), group


def test_first_distribution_on_the_path_wins_and_bad_dirs_are_skipped(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, target in ((a, "first:M"), (b, "second:M")):
        meta = root / "Sensegate_Thing-1.0.dist-info"
        meta.mkdir(parents=True)
        (meta / "entry_points.txt").write_text(f"[{GROUP}]\nthing = {target}\n")
    (b / "other-2.dist-info").mkdir()  # no entry_points.txt
    (b / "huge-1.dist-info").mkdir()
    (b / "huge-1.dist-info" / "entry_points.txt").write_text(f"[{GROUP}]\n" + "x" * (2 * 1024 * 1024))
    found = entry_points(GROUP, [str(tmp_path / "missing"), str(a), str(b)])
    assert [(ep.name, ep.value, ep.dist) for ep in found] == [("thing", "first:M", "sensegate_thing")]


def test_load_walks_module_and_attributes_and_ignores_extras() -> None:
    ep = parse(f"[{GROUP}]\nsim = drivers.sim:MANIFEST.config [extra1]\n")[0]
    from drivers.sim import MANIFEST

    assert ep.load() is MANIFEST.config


def test_the_daemon_does_not_import_importlib_metadata() -> None:
    code = "import sys, gateway.daemon, gateway.cli; from gateway.registry import Registry; Registry.discover(); " \
        "print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_without_raising(text: str) -> None:
    for ep in parse(text):
        assert ep.name and ep.value and ep.group
