"""`sensegate driver new NAME`: a new driver from the template driver (``drivers/example``).

Two shapes:

* in-tree (default), for a sensegate checkout at ``--out`` (default: the current folder):
  ``drivers/NAME/``, ``hil/devices/NAME_device.py`` (the simulated device),
  ``tests/drivers/NAME/test_NAME.py``, and the entry point line added to ``setup.cfg``;
* ``--package``: a separately installable project ``sensegate-NAME/`` with
  ``pyproject.toml`` (the ``sensegate.drivers`` entry point), the package ``sensegate_NAME/``
  (driver, simulated device ``sim_device.py``, README, sample) and ``tests/``.

The sources are the installed ``drivers/example`` and ``hil/devices/example_device.py`` with the
name substituted everywhere, plus the templates in ``gateway/sdk/templates`` (package data),
so the command works from an installed sensegate, not only from a checkout. The generated
tests pass against the generated simulated device as they are.
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAME = "example"
PACKAGE_WHEELS = Path("/usr/share/sensegate/wheels")  # what the Debian package ships
DRIVER_FILES = ("__init__.py", "config.py", "protocol.py", "driver.py", "sample.yaml")


class ScaffoldError(Exception):
    """The driver cannot be generated (bad name, target exists, template missing)."""


@dataclass
class Result:
    """What was generated, and what the author does next."""

    name: str
    created: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"created {p}" for p in self.created] + self.notes
        return "\n".join(lines)


def camel(name: str) -> str:
    """``boiler_meter`` -> ``BoilerMeter`` (class name prefix)."""
    return "".join(part.capitalize() for part in name.split("_") if part)


def check_name(name: str) -> None:
    """A driver name is an identifier in lower case that shadows nothing importable."""
    if not NAME_RE.match(name) or name.endswith("_") or "__" in name:
        raise ScaffoldError(
            f"driver name {name!r}: use 2-31 lower-case letters, digits and single underscores, starting with a letter"
        )
    if keyword.iskeyword(name) or name in sys.stdlib_module_names or name == TEMPLATE_NAME:
        raise ScaffoldError(f"driver name {name!r} is taken (a Python keyword, a standard module or the template)")


def _template_sources() -> tuple[Path, Path]:
    """The installed template driver folder and its simulated device."""
    import drivers.example
    import hil.devices.example_device

    folder = Path(drivers.example.__file__).parent
    device = Path(hil.devices.example_device.__file__)
    missing = [p for p in [*(folder / f for f in DRIVER_FILES), device] if not p.exists()]
    if missing:
        raise ScaffoldError(f"template files missing from this sensegate install: {', '.join(map(str, missing))}")
    return folder, device


def substitute(text: str, name: str, module: str, device_module: str) -> str:
    """The template's text with the new name everywhere (modules, paths, classes, names)."""
    cls = camel(name)
    replacements = [
        ("hil.devices.example_device", device_module),
        ("hil/devices/example_device.py", device_module.replace(".", "/") + ".py"),
        ("drivers.example", module),
        ("drivers/example", module.replace(".", "/")),
        ("tests/drivers/example/", f"tests/drivers/{name}/" if module.startswith("drivers.") else "tests/"),
        ("Template: a thermometer", "A thermometer"),
        ("a fully commented template driver; copy this folder to start a new one", "TODO: what it reads"),
    ]
    for old, new in replacements:
        text = text.replace(old, new)
    text = re.sub(r"\bExample(?=[A-Z]|\b)", cls, text)
    return re.sub(r"\bexample\b", name, text)


def _imports_host_first(text: str, module: str) -> str:
    """In a separate package ``gateway`` is a third-party import: put it before the package's own."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        run_end = i
        while run_end < len(lines) and re.match(rf"^from ({module}|gateway)[\w.]* import ", lines[run_end]):
            run_end += 1
        if run_end == i:
            out.append(lines[i])
            i += 1
            continue
        run = lines[i:run_end]
        host = [line for line in run if line.startswith("from gateway")]
        own = [line for line in run if not line.startswith("from gateway")]
        out += host + (["\n"] if host and own else []) + own
        i = run_end
    return "".join(out)


def _render(template: str, **values: str) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    return text


def sensegate_source() -> str:
    """Where this sensegate can be installed from by a driver author: its checkout, or the package's wheels."""
    import gateway

    root = Path(gateway.__file__).resolve().parents[1]
    if (root / "setup.cfg").is_file() and (root / "gateway").is_dir():
        return str(root)
    if any(PACKAGE_WHEELS.glob("sensegate-*.whl")):
        return str(PACKAGE_WHEELS)
    return ""


def _source_words(source: str) -> str:
    if not source:
        return "the checkout or folder of wheels you name"
    if source == str(PACKAGE_WHEELS):
        return f"the package's wheels in `{source}`"
    return f"your checkout `{source}`"


def _sample_body(sample: str) -> str:
    return "\n".join(line for line in sample.splitlines() if not line.startswith("#")).strip()


def _write(result: Result, path: Path, text: str) -> None:
    if path.exists():
        raise ScaffoldError(f"{path} already exists; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    result.created.append(path)


def _ensure_package(result: Result, folder: Path) -> None:
    """Make ``folder`` a package when it is not one yet (scaffolding outside a checkout)."""
    init = folder / "__init__.py"
    if not init.exists():
        _write(result, init, "")


def scaffold(name: str, out: Path, *, package: bool = False) -> Result:
    """Generate a new driver called ``name`` under ``out``; see the module docstring."""
    check_name(name)
    folder, device = _template_sources()
    result = Result(name)
    out = Path(out)
    cls = camel(name)
    if package:
        project = out / f"sensegate-{name.replace('_', '-')}"
        module = f"sensegate_{name}"
        device_module = f"{module}.sim_device"
        if project.exists():
            raise ScaffoldError(f"{project} already exists")
        pkg = project / module
        tests_file = project / "tests" / f"test_{name}.py"
        device_file = pkg / "sim_device.py"
        tests_path = "tests/"
    else:
        project = out
        module = f"drivers.{name}"
        device_module = f"hil.devices.{name}_device"
        pkg = out / "drivers" / name
        if pkg.exists():
            raise ScaffoldError(f"{pkg} already exists")
        tests_file = out / "tests" / "drivers" / name / f"test_{name}.py"
        device_file = out / "hil" / "devices" / f"{name}_device.py"
        tests_path = f"tests/drivers/{name}/"

    def sub(text: str) -> str:
        text = substitute(text, name, module, device_module)
        if not package:
            return text
        return _imports_host_first(text.replace("named in setup.cfg", "named in pyproject.toml"), module)

    for fname in DRIVER_FILES:
        _write(result, pkg / fname, sub((folder / fname).read_text(encoding="utf-8")))
    sample = (pkg / "sample.yaml").read_text(encoding="utf-8")
    device_path = str(device_file.relative_to(project))
    _write(
        result,
        pkg / "README.md",
        _render(
            "README.md.tmpl", NAME=name, SAMPLE=_sample_body(sample), DEVICE_PATH=device_path, TESTS_PATH=tests_path
        ),
    )
    _write(result, device_file, sub(device.read_text(encoding="utf-8")))
    tests_text = _render("test_driver.py.tmpl", NAME=name, Name=cls, MODULE=module, DEVICE_MODULE=device_module)
    _write(result, tests_file, _imports_host_first(tests_text, module) if package else tests_text)
    if package:
        dashed = name.replace("_", "-")
        _write(
            result, project / "pyproject.toml", _render("pyproject.toml.tmpl", NAME=name, DASHED=dashed, MODULE=module)
        )
        source = sensegate_source()
        _write(
            result,
            project / "README.md",
            _render("project_README.md.tmpl", NAME=name, DASHED=dashed, MODULE=module,
                    SOURCE_WORDS=_source_words(source)),
        )
        _write(result, project / "dev-setup.sh", _render("dev-setup.sh.tmpl", NAME=name, SOURCE=source))
        (project / "dev-setup.sh").chmod(0o755)
        result.notes += [
            f"next: cd {project} && ./dev-setup.sh   (a .venv with sensegate from "
            f"{source or 'the checkout you name'} and this driver, registered through its entry point)",
            "      . .venv/bin/activate && sensegate driver check . && pytest",
        ]
        return result
    for marker in (out / "drivers", out / "hil", out / "hil" / "devices"):
        _ensure_package(result, marker)
    entry = f"{name} = {module}:MANIFEST"
    if _add_entry_point(out / "setup.cfg", entry):
        result.notes.append(f"added to setup.cfg: {entry}  (run `pip install -e .` to register it)")
    else:
        result.notes.append(f"next: add `{entry}` under `sensegate.drivers =` in setup.cfg, then `pip install -e .`")
    result.notes += [f"      sensegate driver check {pkg}", f"      pytest {tests_file.parent}"]
    return result


def _add_entry_point(setup_cfg: Path, entry: str) -> bool:
    """Append ``entry`` to the ``sensegate.drivers =`` list of a setup.cfg; False if there is none."""
    if not setup_cfg.exists():
        return False
    lines = setup_cfg.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().replace(" ", "") == "sensegate.drivers=":
            end = i + 1
            while end < len(lines) and lines[end].startswith((" ", "\t")) and lines[end].strip():
                end += 1
            indent = re.match(r"^\s*", lines[end - 1]).group(0) if end > i + 1 else "    "  # type: ignore[union-attr]
            lines.insert(end, f"{indent}{entry}\n")
            setup_cfg.write_text("".join(lines), encoding="utf-8")
            return True
    return False
