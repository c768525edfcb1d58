"""Read a YAML file once into data plus a map from key paths to line numbers, for `file:line` errors."""
from __future__ import annotations

import json
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
        raise SpecError([f"{path}:{line}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}:1: invalid YAML: {exc}"]) from None
    lines: dict[PathKey, int] = {}
    if root is not None:
        lines[()] = root.start_mark.line + 1
        _index_lines(root, (), lines)
    return YamlDoc(path=path, data=data, lines=lines)


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


def _describe(error: Any) -> str:
    """A short human sentence for one jsonschema error."""
    name = ".".join(str(p) for p in error.absolute_path) or "the file"
    validator = error.validator
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        got = type(error.instance).__name__ if error.instance is not None else "nothing"
        got = {"str": "a string", "dict": "a mapping", "list": "a list", "NoneType": "nothing",
               "int": "a number", "float": "a number", "bool": "a boolean"}.get(got, got)
        return f"'{name}' must be {expected.replace('object', 'a mapping').replace('array', 'a list')}, got {got}"
    if validator == "additionalProperties":
        return f"{error.message} under '{name}'"
    if validator == "oneOf" and error.context:
        return f"'{name}' is not valid: " + "; ".join(sorted({c.message for c in error.context}))
    return f"'{name}': {error.message}"


def schema_problems(doc: YamlDoc, schema_name: str) -> list[str]:
    """Every schema violation as ``file:line: message``, in file order."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_schema(schema_name))
    validator = validator_cls(load_schema(schema_name))
    found = []
    for error in validator.iter_errors(_jsonable(doc.data)):
        path = tuple(error.absolute_path)
        found.append((doc.line(path), f"{doc.where(path)}: {_describe(error)}"))
    return [msg for _, msg in sorted(found)]
