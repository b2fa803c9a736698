"""`sensegate driver check PATH`: the conventions every driver folder must follow (the hassfest idea).

PATH is a driver folder (``drivers/<name>/`` in a checkout, or the ``sensegate_<name>/``
package of an out-of-tree project) or an out-of-tree project folder (with pyproject.toml or
setup.cfg). Each rule is a function returning ``Problem``s placed at ``PATH:LINE``:

* ``names``: folder = manifest name = ``sensegate.drivers`` entry point name; the factory lives
  in the driver's own package (in-tree folder ``drivers/<name>``, out-of-tree ``sensegate_<name>``);
* ``manifest``: ``MANIFEST`` imports, is a ``Manifest`` the host accepts (supported api_version,
  a DriverConfig schema, a ``module:Class`` factory);
* ``docs``: README.md and sample.yaml exist, the sample is a list of sections of this driver
  that validates against the schema, and the README embeds it verbatim (without comment lines);
* ``state``: no module-level mutable state (see ``mutable_state``);
* ``blocking``: no blocking calls inside ``async def`` (see ``blocking_calls``), plus ruff's
  ASYNC rules when ruff is installed;
* ``layering``: protocol modules (all but ``__init__``, ``config`` and the factory's module)
  never import ``gateway``;
* ``todo``: no TODO left in the driver's files and READMEs (the scaffold leaves some to fill in);
* ``tests``: ``test_*.py`` files exist (in-tree ``tests/drivers/<name>/``, out-of-tree ``tests/``).
"""

from __future__ import annotations

import ast
import builtins
import configparser
import importlib
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.driver_api import Manifest

ENTRY_POINT_GROUP = "sensegate.drivers"
PACKAGE_PREFIX = "sensegate_"


@dataclass(frozen=True, order=True)
class Problem:
    """One convention broken, at a file and line (1-based)."""

    path: Path
    line: int
    message: str

    def format(self) -> str:
        """``PATH:LINE: message``, the path relative to the current folder when inside it."""
        try:
            shown = self.path.relative_to(Path.cwd())
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Layout:
    """Where a driver's parts are, in a checkout or in an out-of-tree project."""

    folder: Path  # the driver's package folder
    name: str  # the name the folder implies
    module: str  # its import name: drivers.<name> or sensegate_<name>
    import_root: Path  # the sys.path entry it imports from
    project: Path  # where setup.cfg / pyproject.toml declare the entry point
    tests: Path  # where its tests live
    in_tree: bool


def locate(path: Path) -> Layout | Problem:
    """Work out the layout from a driver folder or an out-of-tree project folder."""
    path = path.resolve()
    if not path.is_dir():
        return Problem(path, 1, "not a folder")
    if not (path / "__init__.py").exists():
        if not ((path / "pyproject.toml").exists() or (path / "setup.cfg").exists()):
            return Problem(path, 1, "neither a driver folder (__init__.py) nor a project (pyproject.toml/setup.cfg)")
        found = sorted(
            p.parent
            for p in path.glob("*/__init__.py")
            if p.parent.name != "tests" and "MANIFEST" in p.read_text(encoding="utf-8", errors="replace")
        )
        if len(found) != 1:
            what = ", ".join(p.name for p in found) or "none"
            return Problem(
                path, 1, f"expected one driver package (a folder whose __init__.py has MANIFEST), found {what}"
            )
        path = found[0]
    parent = path.parent
    if parent.name == "drivers" and (parent / "__init__.py").exists():
        root = parent.parent
        return Layout(path, path.name, f"drivers.{path.name}", root, root, root / "tests" / "drivers" / path.name, True)
    name = path.name.removeprefix(PACKAGE_PREFIX)
    return Layout(path, name, path.name, parent, parent, parent / "tests", False)


def check_driver(path: Path, *, use_ruff: bool = True) -> list[Problem]:
    """Every problem with the driver at ``path`` (empty when it follows the conventions)."""
    layout = locate(Path(path))
    if isinstance(layout, Problem):
        return [layout]
    problems: list[Problem] = []
    manifest, why = load_manifest(layout)
    init = layout.folder / "__init__.py"
    if manifest is None:
        problems.append(Problem(init, 1, why))
    else:
        problems += check_manifest_rules(layout, manifest)
        problems += check_docs(layout, manifest)
        problems += check_layering(layout, manifest)
    problems += check_entry_point(layout, manifest)
    sources = sorted(layout.folder.rglob("*.py"))
    trees: dict[Path, ast.Module] = {}
    for py in sources:
        try:
            trees[py] = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        except (SyntaxError, UnicodeDecodeError, ValueError) as e:
            problems.append(Problem(py, getattr(e, "lineno", None) or 1, f"cannot parse: {e}"))
    for py, tree in trees.items():
        problems += mutable_state(py, tree)
        problems += blocking_calls(py, tree)
    if use_ruff:
        seen = {(p.path, p.line) for p in problems}
        problems += [p for p in ruff_async(layout.folder) if (p.path, p.line) not in seen]
    problems += check_todo(layout)
    problems += check_tests(layout)
    return sorted(set(problems))


# -- manifest and names -----------------------------------------------------------------------


def load_manifest(layout: Layout) -> tuple[Manifest | None, str]:
    """Import the package and return its MANIFEST, or None and why not."""
    root = str(layout.import_root)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    importlib.invalidate_caches()
    try:
        mod = importlib.import_module(layout.module)
    except Exception as e:  # the author's code: anything can happen on import
        return None, f"cannot import {layout.module}: {type(e).__name__}: {e}"
    finally:
        if added:
            sys.path.remove(root)
    where = Path(mod.__file__ or "").resolve().parent
    if where != layout.folder:
        return None, f"`import {layout.module}` finds {where}, not this folder (another package of that name is first)"
    obj = getattr(mod, "MANIFEST", None)
    if not isinstance(obj, Manifest):
        return None, f"{layout.module}.MANIFEST must be a gateway.driver_api.Manifest, not {type(obj).__name__}"
    return obj, ""


def _manifest_lines(init: Path) -> dict[str, int]:
    """Line of each keyword of the ``Manifest(...)`` call in __init__.py."""
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _qualname(node.func, {}).endswith("Manifest"):
            return {kw.arg: kw.lineno for kw in node.keywords if kw.arg}
    return {}


def check_manifest_rules(layout: Layout, manifest: Manifest) -> list[Problem]:
    """Manifest name = folder name, accepted by the host, factory inside the package."""
    from gateway.registry import check_manifest

    init = layout.folder / "__init__.py"
    lines = _manifest_lines(init)
    out: list[Problem] = []
    if manifest.name != layout.name:
        expected = f"drivers/{manifest.name}" if layout.in_tree else f"{PACKAGE_PREFIX}{manifest.name}"
        out.append(
            Problem(
                init,
                lines.get("name", 1),
                f"manifest name {manifest.name!r} does not match the folder {layout.folder.name!r} "
                f"(one name everywhere: rename the folder to {expected} or the manifest to {layout.name!r})",
            )
        )
    why = check_manifest(manifest.name, manifest)
    if why:
        key = "api_version" if "API version" in why else "config" if "config" in why else "factory"
        out.append(Problem(init, lines.get(key, 1), why))
    if not manifest.factory.startswith(layout.module + "."):
        out.append(
            Problem(
                init,
                lines.get("factory", 1),
                f"factory {manifest.factory!r} must live in the driver's package ({layout.module}.<module>:<Class>)",
            )
        )
    return out


def _entry_points(project: Path) -> tuple[Path | None, dict[str, str]]:
    """The ``sensegate.drivers`` entry points declared by the project (name -> target)."""
    pyproject = project / "pyproject.toml"
    if pyproject.exists():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        eps = data.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP)
        if isinstance(eps, dict):
            return pyproject, {str(k): str(v) for k, v in eps.items()}
    setup_cfg = project / "setup.cfg"
    if setup_cfg.exists():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(setup_cfg, encoding="utf-8")
            raw = parser.get("options.entry_points", ENTRY_POINT_GROUP, fallback="")
        except configparser.Error:
            raw = ""
        found: dict[str, str] = {}
        for line in raw.splitlines():
            name, eq, target = line.partition("=")
            if eq:
                found[name.strip()] = target.strip()
        return setup_cfg, found
    return (pyproject if pyproject.exists() else None), {}


def _line_of(path: Path, needle: str) -> int:
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if needle in line:
                return n
    except OSError:
        pass
    return 1


def check_entry_point(layout: Layout, manifest: Manifest | None) -> list[Problem]:
    """An entry point named like the folder and the manifest points at ``<package>:MANIFEST``."""
    where, eps = _entry_points(layout.project)
    target = f"{layout.module}:MANIFEST"
    if where is None:
        return [
            Problem(layout.project, 1, f"no setup.cfg or pyproject.toml declares the {ENTRY_POINT_GROUP} entry point")
        ]
    mine = {name: t for name, t in eps.items() if t.replace(" ", "").split(":")[0] == layout.module}
    if not mine:
        line = f"{layout.name} = {target}" if where.name == "setup.cfg" else f'{layout.name} = "{target}"'
        return [Problem(where, 1, f"no {ENTRY_POINT_GROUP} entry point for this driver; add: {line}")]
    out = []
    for name, t in mine.items():
        wanted = manifest.name if manifest is not None else layout.name
        if name != wanted or name != layout.name:
            out.append(
                Problem(
                    where,
                    _line_of(where, t),
                    f"entry point name {name!r} does not match the driver name {wanted!r} "
                    f"(folder {layout.folder.name!r})",
                )
            )
        if t.replace(" ", "") != target:
            out.append(Problem(where, _line_of(where, t), f"entry point must name {target}, not {t}"))
    return out


# -- README and sample --------------------------------------------------------------------------


def check_docs(layout: Layout, manifest: Manifest) -> list[Problem]:
    """README.md and sample.yaml exist, the sample validates, the README embeds it."""
    from gateway.config import ConfigInvalid, load_config_bytes
    from gateway.registry import Registry

    readme, sample = layout.folder / "README.md", layout.folder / "sample.yaml"
    out: list[Problem] = []
    if not readme.exists():
        out.append(Problem(readme, 1, "README.md is missing (say what the driver reads and embed sample.yaml)"))
    if not sample.exists():
        out.append(Problem(sample, 1, "sample.yaml is missing (a list of example sections of this driver)"))
        return out
    text = sample.read_text(encoding="utf-8")
    try:
        sections = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [*out, Problem(sample, mark.line + 1 if mark else 1, f"not valid YAML: {e}")]
    if not (isinstance(sections, list) and sections and all(isinstance(s, dict) for s in sections)):
        return [*out, Problem(sample, 1, "sample.yaml must be a non-empty list of driver sections")]
    for s in sections:
        if s.get("driver") != manifest.name:
            out.append(
                Problem(
                    sample,
                    _line_of(sample, "driver:"),
                    f"section names driver {s.get('driver')!r}, not {manifest.name!r}",
                )
            )
    # Validate as a config would be: the sample's lines moved under `drivers:`, 3 lines down.
    doc = "gateway:\n  id: gw-sample\ndrivers:\n" + textwrap.indent(text, "  ", lambda _line: True)
    registry = Registry({manifest.name: manifest}, [])
    try:
        load_config_bytes(doc.encode(), registry, str(sample))
    except ConfigInvalid as e:
        out += [Problem(sample, max(1, p.line - 3), f"invalid: {p.message}") for p in e.problems]
    if readme.exists():
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
        if body not in readme.read_text(encoding="utf-8"):
            out.append(Problem(readme, 1, "README.md must embed sample.yaml verbatim (its lines without comments)"))
    return out


# -- module-level mutable state -------------------------------------------------------------------

MUTABLE_CALLS = frozenset(
    {
        "list", "dict", "set", "bytearray",
        "collections.deque", "collections.defaultdict", "collections.OrderedDict", "collections.Counter",
        "asyncio.Queue", "asyncio.Event", "asyncio.Lock", "asyncio.Condition", "asyncio.Semaphore",
        "threading.Lock", "threading.RLock", "threading.Event", "queue.Queue",
        "weakref.WeakValueDictionary", "weakref.WeakKeyDictionary", "weakref.WeakSet",
    }
)  # fmt: skip
MUTATORS = frozenset(
    {
        "append", "extend", "insert", "pop", "popleft", "appendleft", "remove", "clear", "add", "discard",
        "update", "setdefault", "popitem", "sort", "reverse", "put_nowait", "set",
    }
)  # fmt: skip
_CONSTANT = re.compile(r"^_*[A-Z][A-Z0-9_]*$")


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name, from every import in the module."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qualname(expr: ast.expr, aliases: dict[str, str]) -> str:
    """``time.sleep`` for ``t.sleep`` after ``import time as t``; ``self.x.read`` stays as is."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        parts.append(aliases.get(expr.id, expr.id))
    elif isinstance(expr, ast.Call):
        parts.append(_qualname(expr.func, aliases) + "()")
    else:
        return ""
    return ".".join(reversed(parts))


def _is_mutable(value: ast.expr | None, aliases: dict[str, str]) -> str | None:
    """What mutable thing an expression builds (for the message), or None."""
    kinds = {ast.List: "a list", ast.Dict: "a dict", ast.Set: "a set", ast.ListComp: "a list", ast.DictComp: "a dict"}
    kinds[ast.SetComp] = "a set"
    for kind, what in kinds.items():
        if isinstance(value, kind):
            return what
    if isinstance(value, ast.Call):
        name = _qualname(value.func, aliases)
        if name in MUTABLE_CALLS:
            return f"a {name}()"
    return None


def _module_bindings(body: list[ast.stmt]) -> Iterator[tuple[str, ast.expr | None, int]]:
    """(name, value, line) of module-level assignments, looking into if/try/with blocks."""
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    yield target.id, stmt.value, stmt.lineno
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            yield stmt.target.id, stmt.value, stmt.lineno
        elif isinstance(stmt, ast.With):
            yield from _module_bindings(stmt.body)
        elif isinstance(stmt, ast.If | ast.For | ast.While):
            yield from _module_bindings(stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            blocks = stmt.body + stmt.orelse + stmt.finalbody + [s for h in stmt.handlers for s in h.body]
            yield from _module_bindings(blocks)


def _mutated_names(tree: ast.Module) -> dict[str, int]:
    """Names mutated inside functions (``X.append(..)``, ``X[k] = v``, ``del X[k]``, ``X += ..``).

    Statements at module level only build a table while importing, which is fine."""
    found: dict[str, int] = {}
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
    for node in (sub for f in funcs for sub in ast.walk(f)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            if isinstance(node.func.value, ast.Name):
                found.setdefault(node.func.value.id, node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            if isinstance(node.value, ast.Name):
                found.setdefault(node.value.id, node.lineno)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            found.setdefault(node.target.id, node.lineno)
    return found


def _is_driver_class(cls: ast.ClassDef) -> bool:
    return any(_qualname(b, {}).split(".")[-1].endswith("Driver") for b in cls.bases)


def mutable_state(path: Path, tree: ast.Module) -> list[Problem]:
    """Module-level mutable state, which two instances of the driver would share.

    Flagged: (1) a module-level name bound to a list/dict/set literal or comprehension, or to
    a call of a mutable constructor (``MUTABLE_CALLS``), unless the name is an UPPER_CASE
    constant (``TYPES = {...}``, a read-only lookup table by convention) or a dunder
    (``__all__``); (2) any module-level name, constant or not, that the module mutates
    inside a function (``X.append(...)``, ``X[k] = v``, ``del X[k]``); (3) ``global`` statements;
    (4) a lower-case class attribute of a ``...Driver`` class bound to a mutable value
    (shared by every instance). Tuples, frozensets, strings, numbers, ``MANIFEST`` and other
    calls (``logging.getLogger``, ``re.compile``) are fine.
    """
    aliases = _aliases(tree)
    mutated = _mutated_names(tree)
    out: list[Problem] = []
    module_names: set[str] = set()
    for name, value, line in _module_bindings(tree.body):
        module_names.add(name)
        what = _is_mutable(value, aliases)
        if name.startswith("__") and name.endswith("__"):
            continue
        if what and not _CONSTANT.match(name):
            out.append(
                Problem(
                    path,
                    line,
                    f"module-level mutable state: {name!r} is {what} that every instance of the driver "
                    "would share; keep it on self (or make it an UPPER_CASE constant tuple/frozenset)",
                )
            )
        elif name in mutated:
            out.append(
                Problem(
                    path,
                    mutated[name],
                    f"module-level mutable state: {name!r} (line {line}) is changed here; "
                    "two instances of the driver would share it; keep it on self",
                )
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            out.append(
                Problem(path, node.lineno, f"`global {', '.join(node.names)}`: module-level state; keep it on self")
            )
        elif isinstance(node, ast.ClassDef) and _is_driver_class(node):
            for name, value, line in _module_bindings(node.body):
                what = _is_mutable(value, aliases)
                if what and not _CONSTANT.match(name):
                    out.append(
                        Problem(
                            path,
                            line,
                            f"class attribute {node.name}.{name} is {what} shared by every instance; "
                            "create it in __init__",
                        )
                    )
    return out


# -- blocking calls in coroutines -------------------------------------------------------------------

BLOCKING = {
    "time.sleep": "use `await asyncio.sleep(...)` (or better: let the host schedule polls)",
    "open": "file I/O blocks the loop; use `await self.ctx.run_blocking(fn, ...)`",
    "io.open": "file I/O blocks the loop; use `await self.ctx.run_blocking(fn, ...)`",
    "input": "never read stdin in a driver",
    "os.system": "use `asyncio.create_subprocess_exec`",
    "os.popen": "use `asyncio.create_subprocess_exec`",
    "subprocess.run": "use `asyncio.create_subprocess_exec`",
    "subprocess.call": "use `asyncio.create_subprocess_exec`",
    "subprocess.check_call": "use `asyncio.create_subprocess_exec`",
    "subprocess.check_output": "use `asyncio.create_subprocess_exec`",
    "subprocess.getoutput": "use `asyncio.create_subprocess_exec`",
    "subprocess.getstatusoutput": "use `asyncio.create_subprocess_exec`",
    "socket.create_connection": "use `asyncio.open_connection`",
    "socket.getaddrinfo": "use `loop.getaddrinfo`",
    "socket.gethostbyname": "use `loop.getaddrinfo`",
    "socket.gethostbyaddr": "use `loop.getnameinfo`",
    "urllib.request.urlopen": "use an asyncio HTTP client or `ctx.run_blocking`",
    "serial.Serial": "opening a serial port blocks; use `ctx.run_blocking` or gateway.serial_stream",
    "serial.serial_for_url": "opening a serial port blocks; use `ctx.run_blocking` or gateway.serial_stream",
}
BLOCKING_PREFIXES = {"requests.": "requests blocks the loop; use an asyncio client or `ctx.run_blocking`"}
PATH_IO = frozenset({"read_text", "read_bytes", "write_text", "write_bytes"})
DEVICE_IO = {
    "serial.Serial": frozenset({"read", "read_until", "readline", "readlines", "write", "flush", "readinto"}),
    "serial.serial_for_url": frozenset({"read", "read_until", "readline", "readlines", "write", "flush"}),
    "socket.socket": frozenset({"recv", "recvfrom", "recv_into", "send", "sendall", "sendto", "accept", "connect"}),
    "socket.create_connection": frozenset({"recv", "recvfrom", "recv_into", "send", "sendall", "sendto"}),
}


def _device_handles(tree: ast.Module, aliases: dict[str, str]) -> dict[str, frozenset[str]]:
    """Expressions (``port``, ``self._serial``) bound to a serial port or blocking socket."""
    handles: dict[str, frozenset[str]] = {}
    nonblocking: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            kind = _qualname(node.value.func, aliases)
            if kind in DEVICE_IO:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    handles[_qualname(t, {})] = DEVICE_IO[kind]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setblocking":
            nonblocking.add(_qualname(node.func.value, {}))
    return {k: v for k, v in handles.items() if k and k not in nonblocking}


def _coroutine_calls(fn: ast.AsyncFunctionDef) -> Iterator[ast.Call]:
    """Calls made by the coroutine itself (not by nested functions it may hand to an executor)."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.Call):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def blocking_calls(path: Path, tree: ast.Module) -> list[Problem]:
    """Blocking calls made directly inside ``async def`` bodies.

    Flagged: the functions in ``BLOCKING`` (``time.sleep``, ``open``, ``subprocess.run``,
    blocking ``socket`` helpers, ``urllib``, opening ``serial.Serial``), anything under
    ``requests.``, pathlib-style ``.read_text()/.read_bytes()/.write_text()/.write_bytes()``,
    and ``read``/``write``/``recv``/``send``... on a name or attribute the module binds to
    ``serial.Serial(...)`` or a ``socket`` it never makes non-blocking. Imports are resolved
    (``from time import sleep``). Nested plain functions are not searched: they are what a
    coroutine hands to ``ctx.run_blocking``.
    """
    aliases = _aliases(tree)
    local_defs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    handles = _device_handles(tree, aliases)
    out: list[Problem] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.AsyncFunctionDef):
            continue
        for call in _coroutine_calls(fn):
            name = _qualname(call.func, aliases)
            if not name or (name in local_defs and "." not in name):
                continue
            if name in ("open", "input") and (name in aliases or not hasattr(builtins, name)):
                continue
            hint = BLOCKING.get(name) or next((h for p, h in BLOCKING_PREFIXES.items() if name.startswith(p)), None)
            base, _, method = name.rpartition(".")
            if hint is None and method in PATH_IO and base:
                hint = "file I/O blocks the loop; use `await self.ctx.run_blocking(path.read_text)`"
            if hint is None and base in handles and method in handles[base]:
                hint = "device I/O blocks the loop; use `ctx.run_blocking`, loop.add_reader or gateway.serial_stream"
            if hint:
                out.append(Problem(path, call.lineno, f"blocking call {name}() in coroutine {fn.name}(): {hint}"))
    return out


def ruff_async(folder: Path) -> list[Problem]:
    """Ruff's ASYNC rules over the folder, when ruff is installed (next to python or on PATH)."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, "check", "--isolated", "--no-cache", "--select", "ASYNC", "--output-format", "concise", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in res.stdout.splitlines():
        m = re.match(r"^(.+?):(\d+):\d+: (ASYNC\d+) (.*)$", line)
        if m:
            out.append(Problem(Path(m[1]).resolve(), int(m[2]), f"{m[3]} {m[4]} (ruff)"))
    return out


# -- layering and tests ------------------------------------------------------------------------


def check_layering(layout: Layout, manifest: Manifest) -> list[Problem]:
    """Protocol modules (all but __init__, config and the factory's module) never import gateway."""
    glue_module = manifest.factory.split(":")[0].rsplit(".", 1)[-1]
    glue = {"__init__.py", "config.py", f"{glue_module}.py"}
    out = []
    for py in sorted(layout.folder.glob("*.py")):
        if py.name in glue:
            continue
        try:
            tree = ast.parse(py.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # reported by check_driver
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            hosts = [n for n in names if n == "gateway" or n.startswith("gateway.")]
            if hosts and isinstance(node, ast.Import | ast.ImportFrom):
                out.append(
                    Problem(
                        py,
                        node.lineno,
                        f"{py.name} is protocol code and must not import gateway "
                        f"(only __init__.py, config.py and {glue_module}.py may)",
                    )
                )
    return out


def check_todo(layout: Layout) -> list[Problem]:
    """Nothing the scaffold left for the author to write is still a TODO (the README is what users read)."""
    files = [layout.folder / "README.md", *sorted(layout.folder.glob("*.py")), layout.folder / "sample.yaml"]
    if not layout.in_tree:
        files.append(layout.project / "README.md")
    out: list[Problem] = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue  # check_docs reports a missing README or sample
        out += [
            Problem(f, n, f"still a TODO: {line.strip()[:80]!r}; write what the driver really does (`sensegate "
                    "driver new` leaves these for you)")
            for n, line in enumerate(lines, 1)
            if re.search(r"\bTODO\b", line)
        ]
    return out


def check_tests(layout: Layout) -> list[Problem]:
    """The driver has tests of its own."""
    if any(layout.tests.rglob("test_*.py")) if layout.tests.is_dir() else False:
        return []
    return [Problem(layout.tests, 1, f"no tests: add test_*.py files in {layout.tests}")]


def main(paths: list[str], use_ruff: bool = True) -> int:
    """Check each path; print ``PATH:LINE: message`` per problem; 0 when all are clean."""
    bad = 0
    for p in paths:
        problems = check_driver(Path(p), use_ruff=use_ruff)
        for problem in problems:
            print(problem.format())
        if problems:
            bad += 1
        else:
            print(f"{p}: ok")
    if len(paths) > 1:
        print(f"{len(paths) - bad} of {len(paths)} driver(s) ok")
    return 1 if bad else 0
