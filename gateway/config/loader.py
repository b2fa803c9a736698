"""Read YAML safely and remember where every value came from (for FILE:LINE:COL errors).

Only ``yaml.SafeLoader`` is used. Hostile input is refused before it costs memory: a size cap
on the raw bytes, strict UTF-8, a cap on nesting depth, and a cap on the number of nodes
reached when aliases are expanded (the "billion laughs" bomb). Duplicate keys are errors,
since PyYAML would silently keep the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, placed at a line and column (1-based)."""

    line: int
    col: int
    message: str
    file: str = ""  # set when the config is merged from several files (drop-ins)

    def format(self, filename: str) -> str:
        """The `FILE:LINE:COL: message` form that editors and CI annotations understand."""
        return f"{self.file or filename}:{self.line}:{self.col}: {self.message}"


class LoadError(Exception):
    """The document could not be read at all; carries the problems found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass
class Document:
    """Parsed YAML plus the position of each key path, for error messages."""

    data: Any
    positions: dict[Loc, tuple[int, int]]
    sources: dict[Loc, str] = field(default_factory=dict)  # file of each position, when merged

    def where(self, loc: Loc) -> tuple[int, int]:
        """Line/column of the deepest known prefix of ``loc`` (validation error locations)."""
        for n in range(len(loc), -1, -1):
            pos = self.positions.get(tuple(loc[:n]))
            if pos is not None:
                return pos
        return (1, 1)

    def source(self, loc: Loc) -> str:
        """The file the value at ``loc`` came from ("" for a single-file document)."""
        for n in range(len(loc), -1, -1):
            src = self.sources.get(tuple(loc[:n]))
            if src is not None:
                return src
        return ""

    def problem(self, loc: Loc, message: str) -> Problem:
        """A problem placed at ``loc``: file, line and column of where that value was written."""
        return Problem(*self.where(loc), message, self.source(loc))


def named(doc: Document, name: str) -> Document:
    """The same document with every position marked as coming from file ``name``."""
    return Document(doc.data, doc.positions, {loc: name for loc in doc.positions})


def merge(base: Document, over: Document) -> Document:
    """``over`` laid on ``base``: mappings merge key by key, anything else (lists too) replaces.

    Positions follow the values, so an error names the file and line that set the value.
    """
    replaced: list[Loc] = []

    def walk(a: Any, b: Any, loc: Loc) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = walk(a[k], v, (*loc, k)) if k in a else v
            return out
        replaced.append(loc)
        return b

    data = walk(base.data, over.data, ())

    def kept(loc: Loc) -> bool:
        return not any(loc[: len(r)] == r for r in replaced)

    positions = {loc: p for loc, p in base.positions.items() if kept(loc)}
    sources = {loc: s for loc, s in base.sources.items() if kept(loc)}
    for loc, p in over.positions.items():
        if loc == () and () in positions:
            continue  # the top level stays where the first file put it
        positions[loc] = p
        sources[loc] = over.sources.get(loc, "")
    return Document(data, positions, sources)


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _check_and_map(root: Node) -> dict[Loc, tuple[int, int]]:
    """Walk the node graph with a budget; record positions; refuse duplicates and bombs."""
    positions: dict[Loc, tuple[int, int]] = {}
    budget = MAX_NODES
    stack: list[tuple[Node, Loc, int]] = [(root, (), 0)]
    while stack:
        node, loc, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise LoadError(
                [
                    Problem(
                        *_mark(root),
                        f"document expands to more than {MAX_NODES} nodes (aliases nested too deep?); refused",
                    )
                ]
            )
        if depth > MAX_DEPTH:
            raise LoadError([Problem(*_mark(node), f"nesting deeper than {MAX_DEPTH} levels; refused")])
        positions.setdefault(loc, _mark(node))
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    raise LoadError([Problem(*_mark(key_node), "mapping keys must be plain scalars")])
                key = key_node.value
                if key == "<<":  # merge key: the merged mapping's keys land here
                    stack.append((value_node, loc, depth + 1))
                    continue
                if key in seen:
                    line, _ = _mark(seen[key])
                    raise LoadError([Problem(*_mark(key_node), f"duplicate key {key!r} (first given on line {line})")])
                seen[key] = key_node
                positions[(*loc, key)] = _mark(key_node)
                stack.append((value_node, (*loc, key), depth + 1))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, (*loc, i), depth + 1))
    return positions


def load_yaml(raw: bytes | str) -> Document:
    """Parse one YAML document from untrusted bytes; raise LoadError with positions."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_BYTES:
        raise LoadError([Problem(1, 1, f"file is {len(raw)} bytes; the limit is {MAX_BYTES}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise LoadError(
            [Problem(line, col, f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8")]
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise LoadError([Problem(line, col, f"character U+{e.character:04X} is not allowed in YAML")]) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise LoadError([Problem(line, col, f"YAML syntax error: {e.problem or e}")]) from None
        except yaml.YAMLError as e:
            raise LoadError([Problem(1, 1, f"YAML error: {e}")]) from None
        except RecursionError:
            raise LoadError([Problem(1, 1, f"nesting deeper than {MAX_DEPTH} levels; refused")]) from None
        if root is None:
            return Document(None, {(): (1, 1)})
        positions = _check_and_map(root)
        try:
            data = loader.construct_document(root)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise LoadError([Problem(line, col, f"YAML error: {e.problem or e}")]) from None
        except (yaml.YAMLError, ValueError, TypeError) as e:
            raise LoadError([Problem(1, 1, f"YAML error: {e}")]) from None
    finally:
        loader.dispose()
    return Document(data, positions)
