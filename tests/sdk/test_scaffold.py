"""`sensegate driver new`: the generated driver installs, passes `sensegate driver check`, and
its generated tests pass against its generated simulated device.

How "installs" is done here, offline and fast: `pip install --no-deps --no-build-isolation
--no-index --target DIR PROJECT` builds a real wheel with the venv's setuptools and installs it
into DIR; with DIR on PYTHONPATH, importlib.metadata sees its dist-info, so the daemon and
`sensegate drivers` find the driver through its `sensegate.drivers` entry point, and pytest
loads sensegate's plugin (the `pytest11` entry point of the editable sensegate install). A
fresh venv would have to install sensegate's dependencies from an index; a target dir needs
no network and takes about two seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.sdk.scaffold import ScaffoldError, scaffold
from tests.sdk.installs import BIN, ROOT, fill_in_todos, ok, passed, pip_install_target, run


def test_package_scaffold_installs_and_its_tests_pass(tmp_path: Path) -> None:
    out = ok(
        run([str(BIN / "sensegate"), "driver", "new", "water_meter", "--package", "--out", str(tmp_path)], tmp_path)
    )
    project = tmp_path / "sensegate-water-meter"
    assert f"created {project / 'pyproject.toml'}" in out
    # the scaffold's TODOs fail the check until the author has written them
    todo = run([str(BIN / "sensegate"), "driver", "check", str(project)], tmp_path)
    pkg = project / "sensegate_water_meter"
    shown = "sensegate-water-meter/sensegate_water_meter"  # relative to the folder it ran in
    assert todo.returncode == 1 and f"{shown}/README.md:3: still a TODO" in todo.stdout
    assert f"{shown}/__init__.py:1: still a TODO" in todo.stdout
    assert fill_in_todos([pkg / "README.md", pkg / "__init__.py"]) == 2
    assert ok(run([str(BIN / "sensegate"), "driver", "check", str(project)], tmp_path)).strip().endswith(": ok")

    site = tmp_path / "site"
    pip_install_target(project, site)
    assert (site / "sensegate_water_meter" / "sample.yaml").exists(), "package data is installed"
    # Only the installed copy may be importable from now on.
    shutil.move(project / "sensegate_water_meter", tmp_path / "moved-away")

    listing = json.loads(ok(run([str(BIN / "sensegate"), "drivers", "--json"], tmp_path, [site])))
    mine = [d for d in listing["drivers"] if d["name"] == "water_meter"]
    assert mine and mine[0]["api_version"] == 1 and listing["broken"] == []

    res = run([str(BIN / "pytest"), "-q"], project, [site])
    assert passed(ok(res)) >= 10


@pytest.mark.slow
def test_package_scaffold_sets_up_a_fresh_venv_with_sensegate_from_the_checkout(tmp_path: Path) -> None:
    """sensegate is on no package index: the generated dev-setup.sh installs it from where the author has it
    (here this checkout, found by `driver new`), then the driver with its test tools, in a fresh venv."""
    out = ok(run([str(BIN / "sensegate"), "driver", "new", "tank_level", "--package", "--out", str(tmp_path)],
                 tmp_path))
    project = tmp_path / "sensegate-tank-level"
    assert f"cd {project} && ./dev-setup.sh" in out and str(ROOT) in out
    readme = (project / "README.md").read_text()
    assert f"your checkout `{ROOT}`" in readme and "not on a package index" in readme and "pypi" not in readme
    bad = run([str(project / "dev-setup.sh"), str(tmp_path / "nowhere")], tmp_path)
    assert bad.returncode == 2 and "neither a sensegate checkout nor a folder with sensegate-*.whl" in bad.stderr
    res = subprocess.run([str(project / "dev-setup.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert res.returncode == 0 and "ready:" in res.stdout, res.stderr[-3000:]
    venv = project / ".venv" / "bin"
    listing = json.loads(ok(run([str(venv / "sensegate"), "drivers", "--json"], project)))
    assert "tank_level" in [d["name"] for d in listing["drivers"]]
    assert passed(ok(run([str(venv / "pytest"), "-q"], project))) >= 10


def test_in_tree_scaffold_checks_and_its_tests_pass(tmp_path: Path) -> None:
    """In a checkout: drivers/NAME, hil/devices/NAME_device.py, tests/drivers/NAME, setup.cfg entry."""
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("drivers", "hil"):
        shutil.copytree(ROOT / part, checkout / part, ignore=ignore)
    shutil.copy(ROOT / "setup.cfg", checkout / "setup.cfg")
    path = [checkout]  # this copy's `drivers` and `hil` packages come first, as in a checkout
    out = ok(run([str(BIN / "sensegate"), "driver", "new", "boiler", "--out", "."], checkout, path))
    assert "added to setup.cfg: boiler = drivers.boiler:MANIFEST" in out
    assert "    boiler = drivers.boiler:MANIFEST\n" in (checkout / "setup.cfg").read_text()
    for f in ("drivers/boiler/driver.py", "hil/devices/boiler_device.py", "tests/drivers/boiler/test_boiler.py"):
        assert (checkout / f).exists(), f
    readme = (checkout / "drivers/boiler/README.md").read_text()
    assert "- driver: boiler\n" in readme and "example" not in (checkout / "drivers/boiler/driver.py").read_text()
    todo = run([str(BIN / "sensegate"), "driver", "check", "drivers/boiler"], checkout, path)
    assert todo.returncode == 1 and todo.stdout.count("still a TODO") == 2, todo.stdout
    fill_in_todos([checkout / "drivers/boiler/README.md", checkout / "drivers/boiler/__init__.py"])
    assert (
        ok(run([str(BIN / "sensegate"), "driver", "check", "drivers/boiler"], checkout, path)) == "drivers/boiler: ok\n"
    )
    res = run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "tests/drivers/boiler"], checkout, path)
    assert passed(ok(res)) >= 10


def test_scaffold_works_from_an_installed_sensegate(tmp_path: Path) -> None:
    """The templates are package data: a non-editable install of sensegate can scaffold."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("gateway", "drivers", "hil"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    site = tmp_path / "site"
    pip_install_target(src, site)
    shutil.rmtree(src)
    work = tmp_path / "work"
    work.mkdir()
    out = ok(run([sys.executable, "-m", "gateway", "driver", "new", "tank_level", "--package"], work, [site]))
    assert "created" in out
    where = ok(run([sys.executable, "-c", "import gateway.sdk.scaffold as m; print(m.__file__)"], work, [site]))
    assert where.startswith(str(site)), "the scaffold ran from the installed copy"
    assert (work / "sensegate-tank-level" / "tests" / "test_tank_level.py").exists()


@pytest.mark.parametrize("name", ["Bad", "x", "has-dash", "json", "class", "example", "trailing_", "a__b"])
def test_refuses_bad_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError):
        scaffold(name, tmp_path, package=True)


def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["driver", "new", "pump", "--package", "--out", str(tmp_path)]) == 0
    assert main(["driver", "new", "pump", "--package", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_names_substituted_everywhere(tmp_path: Path) -> None:
    scaffold("air_gauge", tmp_path, package=True)
    project = tmp_path / "sensegate-air-gauge"
    code = [p for p in project.rglob("*") if p.suffix in (".py", ".toml", ".yaml")]  # READMEs may cite the template
    text = "\n".join(p.read_text() for p in code)
    assert re.search(r"\bexample\b|Example|drivers\.|hil\.devices", text) is None
    assert 'air_gauge = "sensegate_air_gauge:MANIFEST"' in (project / "pyproject.toml").read_text()
    assert "class AirGaugeDriver(Driver)" in (project / "sensegate_air_gauge" / "driver.py").read_text()
    assert "class AirGaugeDevice" in (project / "sensegate_air_gauge" / "sim_device.py").read_text()
