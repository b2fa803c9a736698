"""Every built-in driver folder follows the conventions (the hassfest idea), checked by the same
code as `sensegate driver check` (gateway/sdk/checker.py): one name everywhere, a manifest the
host accepts, a README embedding a sample that validates, no module-level mutable state, no
blocking calls in coroutines, a protocol layer that does not import the host, tests of its own.
On top of the checker's static entry-point check, this also asserts the driver is *installed*
under its folder name (the entry point is registered in this environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.registry import Registry, check_manifest
from gateway.sdk.checker import check_driver

ROOT = Path(__file__).parents[2]
DRIVER_DIRS = sorted(p for p in (ROOT / "drivers").iterdir() if (p / "__init__.py").exists())
REGISTRY = Registry.discover()


@pytest.fixture(params=DRIVER_DIRS, ids=[p.name for p in DRIVER_DIRS])
def folder(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


def test_driver_check(folder: Path) -> None:
    problems = [p.format() for p in check_driver(folder)]
    assert problems == [], "sensegate driver check found:\n" + "\n".join(problems)


def test_registered_under_its_folder_name(folder: Path) -> None:
    assert folder.name in REGISTRY.manifests, f"no sensegate.drivers entry point named {folder.name!r} is installed"
    manifest = REGISTRY.manifests[folder.name]
    assert check_manifest(folder.name, manifest) is None
    assert manifest.factory.startswith(f"drivers.{folder.name}."), "factory must live in the driver's folder"


def test_no_broken_entry_points() -> None:
    assert REGISTRY.broken == []


def test_cli_checks_every_builtin_driver() -> None:
    """The command a developer runs (also what CI runs through this test): exit 0, one ok per driver."""
    sensegate = Path(sys.executable).parent / "sensegate"
    res = subprocess.run(
        [str(sensegate), "driver", "check", *map(str, DRIVER_DIRS)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(DRIVER_DIRS)} of {len(DRIVER_DIRS)} driver(s) ok" in res.stdout


def test_sample_passes_sensegate_check(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sample as a user pastes it into a gateway's config: `sensegate check` accepts it."""
    import yaml

    from gateway.cli import main

    sections = yaml.safe_load((folder / "sample.yaml").read_text())
    config = tmp_path / "sensegate.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"id": "gw-1", "state_dir": str(tmp_path / "state")},
                                      "drivers": sections}))
    assert main(["check", str(config)]) == 0, capsys.readouterr().out
