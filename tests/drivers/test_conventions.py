"""Every built-in driver folder follows the conventions (the hassfest idea):
one name everywhere, a manifest the host accepts, a README embedding a sample that validates,
a protocol layer that does not import the host, and tests of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from gateway.config import load_config_bytes
from gateway.registry import Registry, check_manifest

ROOT = Path(__file__).parents[2]
DRIVER_DIRS = sorted(p for p in (ROOT / "drivers").iterdir() if (p / "__init__.py").exists())
REGISTRY = Registry.discover()


@pytest.fixture(params=DRIVER_DIRS, ids=[p.name for p in DRIVER_DIRS])
def folder(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


def test_registered_under_its_folder_name(folder: Path) -> None:
    assert folder.name in REGISTRY.manifests, f"no sensegate.drivers entry point named {folder.name!r} in setup.cfg"
    manifest = REGISTRY.manifests[folder.name]
    assert check_manifest(folder.name, manifest) is None
    assert manifest.factory.startswith(f"drivers.{folder.name}."), "factory must live in the driver's folder"


def test_no_broken_entry_points() -> None:
    assert REGISTRY.broken == []


def test_sample_validates_and_readme_embeds_it(folder: Path) -> None:
    sample = (folder / "sample.yaml").read_text()
    sections = yaml.safe_load(sample)
    assert isinstance(sections, list) and sections, "sample.yaml is a list of driver sections"
    assert all(s["driver"] == folder.name for s in sections)
    doc = yaml.safe_dump({"gateway": {"id": "gw-sample"}, "drivers": sections}).encode()
    cfg = load_config_bytes(doc, REGISTRY, f"{folder.name}/sample.yaml")
    assert len(cfg.instances) == len(sections)
    readme = (folder / "README.md").read_text()
    body = "\n".join(line for line in sample.splitlines() if not line.startswith("#")).strip()
    assert body in readme, "README.md must embed sample.yaml verbatim"


def test_protocol_modules_do_not_import_the_host(folder: Path) -> None:
    manifest = REGISTRY.manifests[folder.name]
    glue = {"__init__.py", "config.py", manifest.factory.split(":")[0].rsplit(".", 1)[-1] + ".py"}
    for py in folder.glob("*.py"):
        if py.name in glue:
            continue
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "gateway" or n.startswith("gateway.") for n in names), (
                f"{py.relative_to(ROOT)} is protocol code and must not import gateway"
            )


def test_has_tests(folder: Path) -> None:
    tests = ROOT / "tests" / "drivers" / folder.name
    assert list(tests.glob("test_*.py")), f"tests/drivers/{folder.name}/ has no tests"
