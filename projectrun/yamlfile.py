"""Read a YAML file once into data plus a map from key paths to line numbers, for `file:line` errors."""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from projectrun.errors import SpecError
from projectrun.yamlhints import syntax_message, value_message

PathKey = tuple[Any, ...]

#: Largest YAML file read (bytes): project, env and sweep files are a few KB; the bound keeps a
#: 50 MB file or a device from taking minutes or all memory.
MAX_BYTES = 5_000_000
#: Deepest nesting of lists and mappings (PyYAML itself would recurse until RecursionError).
MAX_DEPTH = 100
#: Most YAML values (nodes) in one file: bounds time and memory (~1 KB each once indexed).
MAX_NODES = 100_000
#: Most values that aliases may repeat in total (what an alias bomb multiplies).
MAX_ALIASED = 100_000
#: Files up to this size (5x the largest of 199 real project files) use PyYAML's pure-Python
#: parser, as MLflow does; larger ones use libyaml, ~5x faster (a dense 32 KB file takes ~2 s
#: in pure Python on a busy CI machine).
PURE_PYTHON_BYTES = 32_000
_NON_PRINTABLE = Reader.NON_PRINTABLE


@dataclass
class YamlDoc:
    """Parsed YAML with the line (1-based) where every mapping key / list item starts."""

    path: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, key_path: PathKey) -> int:
        """The line of the deepest known node on ``key_path``: errors point as close as we can."""
        key_path = tuple(key_path)
        while key_path and key_path not in self.lines:
            key_path = key_path[:-1]
        return self.lines.get(key_path, 1)

    def where(self, key_path: PathKey = ()) -> str:
        return f"{self.path}:{self.line(key_path)}"


def _index_lines(node: yaml.Node, prefix: PathKey, out: dict[PathKey, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
            out.setdefault(prefix + (key,), key_node.start_mark.line + 1)
            _index_lines(value_node, prefix + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault(prefix + (i,), item.start_mark.line + 1)
            _index_lines(item, prefix + (i,), out)


def load_yaml(path: Path) -> YamlDoc:
    """Parse as ``yaml.safe_load`` does (MLflow's loader, so values type the same way) and index
    lines; hostile input (devices, pipes, huge or deep files, alias bombs) is refused in one line."""
    try:
        raw = read_regular(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise SpecError([f"{path}:1: cannot read file: {getattr(exc, 'strerror', None) or exc}"]) from None
    data, lines = _parse(path, _decode(path, raw), fast=len(raw) > PURE_PYTHON_BYTES)
    return YamlDoc(path=path, data=data, lines=lines)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _refuse_irregular(path: Path, mode: int) -> None:
    """Only regular files are read: a FIFO would block forever and /dev/zero never ends."""
    if stat.S_ISREG(mode):
        return
    kind = next((word for test, word in _KINDS if test(mode)), "not a file")
    via = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise OSError(errno.EINVAL, f"it is {kind}{via}, not a regular file")


def read_regular(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is an OSError whose
    ``strerror`` says why. Opened non-blocking so that a FIFO swapped in after the stat cannot
    hang, and read with a bound so that a file growing meanwhile cannot exhaust memory."""
    _refuse_irregular(path, os.stat(path).st_mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        _refuse_irregular(path, info.st_mode)
        if info.st_size > limit:
            raise OSError(errno.EFBIG, _too_big(info.st_size, limit))
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, _too_big(size, limit))
    return b"".join(chunks)


def _too_big(size: int, limit: int) -> str:
    return (f"it is {size / 1e6:.1f} MB; projectrun reads files of at most {limit / 1e6:g} MB "
            f"here (MLproject, env and sweep files are a few KB)")


def _decode(path: Path, raw: bytes) -> str:
    """Strict UTF-8, pointing at the first bad byte; control characters YAML forbids likewise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([(f"{path}:{line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at "
                          f"offset {exc.start} (column {column}); save the file as UTF-8")]) from None
    if bad := _NON_PRINTABLE.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        raise SpecError([(f"{path}:{line}: invalid YAML: control character "
                          f"U+{ord(bad.group()):04X} is not allowed in YAML; remove it")])
    return text


class _Refused(Exception):
    """A limit was hit while composing: (line, message)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _LimitedComposer(Composer):
    """PyYAML's composer with limits it lacks: nesting depth (PyYAML recurses, so deep input is
    a RecursionError), node count (time and memory), and how many nodes aliases repeat (every
    consumer of the data walks an alias's subtree again: the billion-laughs bomb)."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._aliased = 0
        #: anchors of the collections being composed: an alias to one of them is a cycle
        self._open: set[str] = set()
        #: id(node) -> nodes in its subtree with aliases expanded, for aliased nodes only
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return self._alias(parent, index, event)
        line = event.start_mark.line + 1
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(line, f"more than {MAX_NODES} YAML values; projectrun reads files of "
                                 f"at most {MAX_NODES} (MLproject, env and sweep files have a few "
                                 f"hundred)")
        if self._depth >= MAX_DEPTH:
            raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep; flatten the file")
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._open.discard(anchor)
        return node

    def _alias(self, parent: yaml.Node | None, index: Any, event: yaml.AliasEvent) -> yaml.Node:
        line = event.start_mark.line + 1
        if event.anchor in self._open:
            raise _Refused(line, f"alias '*{event.anchor}' is used inside the node it names; "
                                 f"a recursive structure cannot be an MLflow value")
        node = super().compose_node(parent, index)  # PyYAML reports an undefined alias
        self._aliased += _expanded_size(node, self._sizes)
        if self._aliased > MAX_ALIASED:
            raise _Refused(line, f"YAML aliases here repeat more than {MAX_ALIASED} values "
                                 f"(aliases of aliases multiply: an alias bomb?); write the "
                                 f"values out or use fewer aliases")
        return node


def _expanded_size(root: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes under ``root`` counting every alias in full; memoised, so a bomb costs the size of
    its text, not of its expansion. Iterative: nesting is bounded, but this is cheap to make so."""
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


class _Constructor(SafeConstructor):
    """SafeConstructor that remembers the node it is on, so errors outside PyYAML's own (a bad
    date, ``!!int x``, a 5000-digit number) can name a line."""

    def __init__(self) -> None:
        super().__init__()
        self.current: yaml.Node | None = None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        self.current = node
        return super().construct_object(node, deep)


class _PyLoader(Reader, Scanner, Parser, _LimitedComposer, _Constructor, Resolver):
    """``yaml.SafeLoader`` (MLflow's) with the limits above."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _LimitedComposer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)


_FAST = False
try:  # libyaml's parser with the same composer, resolver and constructor
    from yaml._yaml import CParser

    class _CLoader(_LimitedComposer, CParser, _Constructor, Resolver):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _LimitedComposer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)

    _FAST = True
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    pass


def _parse(path: Path, text: str, fast: bool = False) -> tuple[Any, dict[PathKey, int]]:
    """(data, line index). Small files go through PyYAML's pure-Python parser, exactly what
    MLflow's ``safe_load`` accepts; large ones through libyaml (``fast``), which parses ~5x
    faster (MLflow would take minutes on them anyway). Same composer, resolver and constructor."""
    lines: dict[PathKey, int] = {}
    loader: Any = None
    try:
        loader = _CLoader(text) if fast and _FAST else _PyLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None, lines
        lines[()] = root.start_mark.line + 1
        _index_lines(root, (), lines)  # before constructing: merge keys (<<) rewrite the nodes
        return loader.construct_document(root), lines
    except _Refused as exc:
        raise SpecError([f"{path}:{exc.line}: {exc}"]) from None
    except yaml.MarkedYAMLError as exc:
        raise SpecError([syntax_message(path, text, exc)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}:1: invalid YAML: {' '.join(str(exc).split())}"]) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as exc:
        # SafeConstructor's converters fail this way on values such as 2001-02-30 or !!int x
        raise SpecError([value_message(path, loader and loader.current, exc)]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _schema_dir() -> Path:
    """Schemas ship inside the wheel; in a source checkout they are the repo's top-level schemas/."""
    packaged = Path(__file__).parent / "schemas"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    with open(_schema_dir() / name, encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


def _jsonable(value: Any) -> Any:
    """YAML allows non-string keys and dates; JSON Schema wants JSON, so convert for checking only."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number",
               "integer": "a whole number", "boolean": "true or false", "null": "empty"}
_VALUE_WORDS = {"str": "a string", "dict": "a mapping", "list": "a list", "NoneType": "nothing",
                "int": "a number", "float": "a number", "bool": "a boolean"}


def _expected(error: Any) -> list[str]:
    """What a type or enum error wanted, in words ('a mapping', 'empty', ...)."""
    if error.validator == "enum":
        return ["empty"]
    wanted = error.validator_value
    return [str(_TYPE_WORDS.get(t, t)) for t in (wanted if isinstance(wanted, list) else [wanted])]


def _focus(error: Any) -> list[Any]:
    """For oneOf/anyOf, the errors inside the branch the value was meant for (its type matched),
    so that '{image: 5}' says what is wrong with the image rather than listing every branch."""
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return [error]
    branches: dict[Any, list[Any]] = {}
    for c in error.context:
        branches.setdefault(c.schema_path[0], []).append(c)
    meant = [errs for errs in branches.values()
             if not any(not c.relative_path and c.validator in ("type", "enum") for c in errs)]
    if len(meant) != 1:
        return [error]
    return [focused for c in meant[0] for focused in _focus(c)]


def _type_hint(path: tuple[Any, ...], value: Any) -> str:
    """How to write the value that had the wrong type, for the shapes real files get wrong."""
    if not path:
        if isinstance(value, str) and "/" in value and not any(c.isspace() for c in value.strip()):
            return f" ('{value.strip()}': a git symlink checked out as a plain file?)"
        return "; it needs keys such as 'name:' and 'entry_points:'"
    if path == ("docker_env",) and isinstance(value, str):
        return f"; write 'docker_env: {{image: {value}}}'"
    if path in (("python_env",), ("conda_env",)) and isinstance(value, dict):
        return f"; put those keys in a file and name it here ({path[0]}: {path[0]}.yaml)"
    if len(path) == 4 and path[0] == "entry_points" and path[2] == "parameters":
        return f"; write '{path[3]}: float' or '{path[3]}: {{type: float, default: 0.5}}'"
    if len(path) == 2 and path[0] == "entry_points":
        return f"; write '{path[1]}: {{command: ...}}'"
    return ""


def _describe(error: Any) -> str:
    """A short human sentence for one (focused) jsonschema error."""
    path = tuple(error.absolute_path)
    name = ".".join(str(p) for p in path)
    label = f"'{name}'" if path else "the MLproject file"
    got = _VALUE_WORDS.get(type(error.instance).__name__, type(error.instance).__name__)
    validator = error.validator
    if validator == "type":
        wanted = " or ".join(_expected(error))
        return f"{label} must be {wanted}, got {got}{_type_hint(path, error.instance)}"
    if validator in ("oneOf", "anyOf") and error.context:
        if all(c.validator in ("type", "enum") for c in error.context):
            wanted = " or ".join(dict.fromkeys(w for c in error.context for w in _expected(c)))
            return f"{label} must be {wanted}, got {got}{_type_hint(path, error.instance)}"
        return f"{label} is not valid: " + "; ".join(sorted({c.message for c in error.context}))
    if validator == "additionalProperties":
        return f"{error.message} under {label}"
    return f"{label}: {error.message}"


def _valid_marker(data: Any, schema_name: str) -> Path | None:
    """Where "this document passed this schema" is remembered: importing jsonschema and checking
    cost more than the rest of a cached launch, and the same MLproject is launched again and again."""
    import hashlib

    try:
        from projectrun import cachedir

        schema = (_schema_dir() / schema_name).read_bytes()
        body = json.dumps(data, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(schema + b"\0" + body).hexdigest()[:32]
        return cachedir.VALIDATED.path(digest)
    except (OSError, TypeError, ValueError):
        return None


def _known_valid(marker: Path) -> bool:
    """The marker exists; its mtime becomes now, so ``cache prune`` ages markers by last use."""
    try:
        os.utime(marker)
    except FileNotFoundError:
        return False
    except OSError:  # a read-only cache: the marker still counts
        return marker.exists()
    return True


def schema_problems(doc: YamlDoc, schema_name: str) -> list[str]:
    """Every schema violation as ``file:line: message``, in file order."""
    data = _jsonable(doc.data)
    marker = _valid_marker(data, schema_name)
    if marker is not None and _known_valid(marker):
        return []
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_schema(schema_name))
    validator = validator_cls(load_schema(schema_name))
    found = []
    for top in validator.iter_errors(data):
        for error in _focus(top):
            path = tuple(error.absolute_path)
            found.append((doc.line(path), f"{doc.where(path)}: {_describe(error)}"))
    if not found and marker is not None:
        try:
            from projectrun import cachedir

            cachedir.VALIDATED.ensure()
            marker.touch()
        except OSError:
            pass  # a read-only cache only costs speed
    return [msg for _, msg in sorted(found)]
