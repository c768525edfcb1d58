"""Read a YAML file once into data plus a map from key paths to line numbers, for `file:line` errors."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from projectrun.errors import SpecError

PathKey = tuple[Any, ...]


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
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            out.setdefault(prefix + (key,), key_node.start_mark.line + 1)
            _index_lines(value_node, prefix + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault(prefix + (i,), item.start_mark.line + 1)
            _index_lines(item, prefix + (i,), out)


def load_yaml(path: Path) -> YamlDoc:
    """Parse with ``yaml.safe_load`` (MLflow's loader, so values type the same way) and index lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}:1: not UTF-8 text ({exc.reason})"]) from None
    except OSError as exc:
        raise SpecError([f"{path}:1: cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        start = exc.context_mark.line + 1 if exc.context_mark else line
        line, hint = _yaml_hint(text.splitlines(), start, line, problem, exc.context or "")
        raise SpecError([f"{path}:{line}: invalid YAML: {problem}{hint}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}:1: invalid YAML: {exc}"]) from None
    lines: dict[PathKey, int] = {}
    if root is not None:
        lines[()] = root.start_mark.line + 1
        _index_lines(root, (), lines)
    return YamlDoc(path=path, data=data, lines=lines)


_NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:- )?([A-Za-z_][\w.-]*):(?=[^\s/:])")


def _yaml_hint(lines: list[str], start: int, line: int, problem: str,
               context: str) -> tuple[int, str]:
    """The likely cause of a PyYAML error, as (line, '; hint'), for the mistakes seen in real
    MLproject files; PyYAML often points a line or more after the real culprit."""
    if "quoted scalar" in context and "end of stream" in problem:
        return start, "; the quote opened on this line is never closed"
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    if "{%" in text or "{{" in text or "'%'" in problem:
        return line, "; this looks like a Jinja/cookiecutter template: render it first"
    if '"""' in text or "'''" in text:
        return line, "; YAML has no triple quotes: write a block instead, 'command: |' or '>'"
    for n in range(max(start, 1), min(line, len(lines)) + 1):
        body = lines[n - 1].split(" #", 1)[0]
        if not body.lstrip().startswith("#") and (m := _NO_SPACE_AFTER_COLON.match(body)):
            return n, f"; put a space after '{m.group(1)}:'"
    if "mapping values are not allowed" in problem:
        return line, "; a plain value may not contain ': ', so quote the whole value"
    previous = next((lines[n].strip() for n in range(line - 2, -1, -1) if lines[n].strip()), "")
    if previous.startswith("#") and not text.lstrip().startswith("#"):
        return line, "; this line follows a comment: if it continues the comment, start it with '#'"
    if "\t" in problem or "\t" in text:
        return line, "; indent with spaces, not tabs"
    return line, ""


def _schema_dir() -> Path:
    """Schemas ship inside the wheel; in a source checkout they are the repo's top-level schemas/."""
    packaged = Path(__file__).parent / "schemas"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schemas"


@lru_cache(maxsize=None)
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
    return [_TYPE_WORDS.get(t, t) for t in (wanted if isinstance(wanted, list) else [wanted])]


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
        from projectrun import cache

        schema = (_schema_dir() / schema_name).read_bytes()
        body = json.dumps(data, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(schema + b"\0" + body).hexdigest()[:32]
        return cache.root() / "validated" / digest
    except (OSError, TypeError, ValueError):
        return None


def schema_problems(doc: YamlDoc, schema_name: str) -> list[str]:
    """Every schema violation as ``file:line: message``, in file order."""
    data = _jsonable(doc.data)
    marker = _valid_marker(data, schema_name)
    if marker is not None and marker.exists():
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
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # a read-only cache only costs speed
    return [msg for _, msg in sorted(found)]
