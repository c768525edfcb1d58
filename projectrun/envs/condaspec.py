"""Read a conda environment file (conda.yaml) as ``conda env create`` and ``mlflow run`` accept it.

Every problem is reported as ``file:line: message``, all of them at once. Match specs are checked
here because rattler parses nonsense such as ``foo bar baz qux`` without complaint and a typo
would otherwise surface as a baffling solve failure. Files named by ``-r`` / ``-c`` in the pip
section are followed and hashed relative to the conda.yaml's directory, as conda's pip step does.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun.envs.pythonspec import FileRef, _follow
from projectrun.errors import SpecError
from projectrun.yamlfile import YamlDoc, load_yaml, schema_problems

#: the top-level keys conda reads (conda/env/env.py VALID_KEYS); it ignores others with a warning
KEYS = ("name", "channels", "dependencies", "prefix", "variables")
#: a lock file written by conda-lock (or projectrun) beside the conda.yaml
LOCK_NAME = "conda-lock.yml"

_OPERATORS = ("~=", "==", "!=", "<=", ">=", "<", ">", "=")
_OPERATOR_FIXES = {"=>": ">=", "=<": "<=", "=!": "!=", "=~": "~=", "<>": "!=", "===": "=="}
_NAME = re.compile(r"\*|[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[0-9A-Za-z_.+!*-]+")
_BUILD = re.compile(r"[0-9A-Za-z_.+!*]+")
_CHANNEL = re.compile(r"[A-Za-z0-9_.+~/:@%-]+")
#: the '=' between version and build in 'name=1.2=py39_0': it follows a version character
_BUILD_EQUALS = re.compile(r"(?<=[0-9A-Za-z_.*+])=(?!=)")
_BRACKETS = re.compile(r"(?P<body>[^\[\]]*)\[(?P<inner>[^\[\]]*)\](?P<tail>.*)")
_BRACKET_ITEM = re.compile(
    r"\s*(?P<key>\w+)\s*=\s*(?:'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\"|(?P<bare>[^,'\"\s]+))\s*(?:,|$)")
_BRACKET_KEYS = ("version", "build", "build_number", "channel", "subdir", "md5", "sha256", "url",
                 "fn", "license", "features", "track_features", "namespace", "name")
_PACKAGE_FILE = re.compile(r"\.(?:conda|tar\.bz2)$")
_PIP_HINT = "; pip requirements go under '- pip:'"

Problem = tuple[int, str]


@dataclass(frozen=True)
class CondaEnvSpec:
    """What a conda environment file asks for, normalised, with the files it depends on."""

    path: Path
    name: str | None
    #: as written, in order ("defaults", "conda-forge", URLs); empty means conda's defaults
    channels: tuple[str, ...]
    #: conda match specs, whitespace-normalised, in order; may be 'channel::name ...'
    specs: tuple[str, ...]
    #: the '- pip:' lines, stripped, comments and empty lines dropped
    pip: tuple[str, ...]
    #: -r / -c files of the pip section (nested too), resolved relative to the conda.yaml
    files: tuple[FileRef, ...]
    #: conda-lock.yml beside the conda.yaml, if there is one
    lock: Path | None
    #: 'variables:' conda sets on activation (values as strings, as conda writes them)
    variables: dict[str, str] = field(default_factory=dict)
    #: 'file:line: ...' lines worth showing but not fatal (keys conda ignores)
    warnings: tuple[str, ...] = ()

    def key_inputs(self) -> dict[str, Any]:
        """Content that decides what gets installed: not the path or name (moving or renaming a
        project must reuse its environment), and neither comments nor layout, which are gone
        after parsing. The lock file and variables are left to the caller."""
        return {"channels": list(self.channels), "specs": list(self.specs), "pip": list(self.pip),
                "files": [[ref.written, ref.sha256] for ref in self.files]}


def load_conda_env(path: Path) -> CondaEnvSpec:
    """Parse and check a conda environment file; raise SpecError listing every problem."""
    doc = load_yaml(path)
    _check_root(doc)
    problems, warnings = _key_problems(doc)
    problems += _schema_problems(doc)
    problems += _channel_problems(doc)
    specs, pip, pip_index, dep_problems = _dependencies(doc)
    problems += dep_problems
    files, file_problems = _pip_files(doc, pip_index)
    problems += file_problems
    if problems:
        raise SpecError([message for _, message in sorted(problems)])
    data = doc.data
    lock = path.parent / LOCK_NAME
    return CondaEnvSpec(
        path=path, name=None if data.get("name") is None else str(data["name"]),
        channels=tuple(str(c).strip() for c in data.get("channels") or ()), specs=tuple(specs),
        pip=tuple(pip), files=tuple(files), lock=lock if lock.is_file() else None,
        variables={str(k): str(v) for k, v in (data.get("variables") or {}).items()},
        warnings=tuple(message for _, message in sorted(warnings)))


def _check_root(doc: YamlDoc) -> None:
    """An empty file or a non-mapping cannot be checked further: say so and stop."""
    if doc.data is None:
        raise SpecError([(f"{doc.path}:1: the file is empty; a conda environment file needs "
                          f"'dependencies:' (and usually 'channels:')")])
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        hint = ""
        if isinstance(doc.data, str) and "/" in doc.data and " " not in doc.data.strip():
            hint = f" ('{doc.data.strip()}': a git symlink checked out as a plain file?)"
        raise SpecError([(f"{doc.where()}: expected a mapping with name, channels and "
                          f"dependencies, got {_WORDS.get(kind, kind)}{hint}")])


_WORDS = {"str": "a string", "list": "a list", "int": "a number", "float": "a number",
          "bool": "a boolean", "dict": "a mapping", "NoneType": "nothing"}


def _key_problems(doc: YamlDoc) -> tuple[list[Problem], list[Problem]]:
    """conda ignores unknown keys with a warning, so we do too; but a misspelt known key would
    silently give an environment without its packages, so that one is an error."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for key in doc.data:
        if str(key) in KEYS:
            continue
        line = doc.line((str(key),))
        missing = [k for k in KEYS if k not in doc.data]
        close = difflib.get_close_matches(str(key), missing, n=1, cutoff=0.75)
        if close:
            problems.append((line, (f"{doc.path}:{line}: unknown key '{key}'; did you mean "
                                    f"'{close[0]}'? (conda would ignore it)")))
        else:
            warnings.append((line, (f"{doc.path}:{line}: unknown key '{key}' is ignored (conda "
                                    f"reads only {', '.join(KEYS)})")))
    return problems, warnings


def _schema_problems(doc: YamlDoc) -> list[Problem]:
    """Types of the top-level values; dependency items are checked by hand for better messages."""
    known = {k: v for k, v in doc.data.items() if k in KEYS}
    if isinstance(known.get("dependencies"), list):
        known["dependencies"] = []
    found = schema_problems(YamlDoc(doc.path, known, doc.lines), "conda_env.schema.json")
    return [(_line_of(message, doc.path), message) for message in found]


def _line_of(message: str, path: Path) -> int:
    number = message[len(str(path)) + 1:].split(":", 1)[0]
    return int(number) if number.isdigit() else 0


def _channel_problems(doc: YamlDoc) -> list[Problem]:
    channels = doc.data.get("channels")
    if not isinstance(channels, list):
        return []
    problems = []
    for index, channel in enumerate(channels):
        line = doc.line(("channels", index))
        if not isinstance(channel, str):
            continue  # the schema reports it
        if not channel.strip():
            problems.append((line, f"{doc.path}:{line}: empty channel name; remove the line"))
        elif len(channel.split()) > 1:
            problems.append((line, (f"{doc.path}:{line}: channel '{channel.strip()}' contains a "
                                    f"space; put each channel on its own '- ' line")))
    return problems


def _dependencies(doc: YamlDoc) -> tuple[list[str], list[str], int | None, list[Problem]]:
    """(conda specs, pip lines, index of the pip item, problems) of the dependencies list."""
    deps = doc.data.get("dependencies")
    specs: list[str] = []
    pip: list[str] = []
    pip_index: int | None = None
    problems: list[Problem] = []
    for index, dep in enumerate(deps if isinstance(deps, list) else ()):
        line = doc.line(("dependencies", index))
        where = f"{doc.path}:{line}"
        if isinstance(dep, str):
            spec = _normalise(dep)
            reason = check_match_spec(spec) if spec else None
            if reason:
                problems.append((line, f"{where}: invalid conda package spec '{spec}': {reason}"))
            elif spec:
                specs.append(spec)
        elif isinstance(dep, dict) and list(dep) == ["pip"]:
            if pip_index is not None:
                problems.append((line, (f"{where}: a second '- pip:' list (conda uses only the "
                                        f"last); merge it with the one on line "
                                        f"{doc.line(('dependencies', pip_index))}")))
                continue
            pip_index = index
            pip, pip_problems = _pip_lines(doc, index)
            problems += pip_problems
        else:
            problems.append((line, f"{where}: {_bad_dependency(dep)}"))
    return specs, pip, pip_index, problems


def _normalise(spec: str) -> str:
    """conda drops a '#' comment inside a spec; runs of spaces mean one space."""
    return " ".join(spec.split("#", 1)[0].split())


def _bad_dependency(dep: Any) -> str:
    """Why a dependency item is neither a spec string nor {pip: [...]}, and how to write it."""
    if dep is None:
        return "empty dependency item; remove the '-' line or write a package spec"
    if isinstance(dep, dict):
        keys = ", ".join(f"'{k}'" for k in dep)
        if len(dep) == 1:
            key, value = next(iter(dep.items()))
            if not isinstance(value, (dict, list)) and value is not None:
                return (f"a dependency must be a package spec string, got the mapping "
                        f"{{{key}: {value}}}; write '- {key}={value}'")
        return (f"a dependency must be a package spec string (e.g. 'numpy=1.26') or a "
                f"'pip:' list, got a mapping with key(s) {keys}")
    kind = type(dep).__name__
    return (f"a dependency must be a package spec string (e.g. 'numpy=1.26') or a 'pip:' list, "
            f"got {_WORDS.get(kind, kind)} ({dep!r})")


def _pip_lines(doc: YamlDoc, index: int) -> tuple[list[str], list[Problem]]:
    entries = doc.data["dependencies"][index]["pip"]
    line = doc.line(("dependencies", index, "pip"))
    if not isinstance(entries, list):
        return [], [(line, (f"{doc.path}:{line}: 'pip:' must be a list of requirement lines "
                            f"(e.g. '- numpy==1.26'), got {_WORDS.get(type(entries).__name__)}"))]
    lines, problems = [], []
    for number, entry in enumerate(entries):
        at = doc.line(("dependencies", index, "pip", number))
        if isinstance(entry, str):
            if entry.strip() and not entry.strip().startswith("#"):
                lines.append(entry.strip())
        elif entry is None:
            problems.append((at, (f"{doc.path}:{at}: empty pip entry; remove the '-' line or "
                                  f"write a requirement")))
        else:
            kind = _WORDS.get(type(entry).__name__, type(entry).__name__)
            problems.append((at, (f"{doc.path}:{at}: a pip entry must be a requirement string "
                                  f"(e.g. 'numpy==1.26'), got {kind} ({entry!r}); quote it")))
    return lines, problems


def _pip_files(doc: YamlDoc, pip_index: int | None) -> tuple[list[FileRef], list[Problem]]:
    """Follow -r / -c lines; each unreadable file is its own problem, so all are reported."""
    found: list[FileRef] = []
    problems: list[Problem] = []
    if pip_index is None or not isinstance(doc.data["dependencies"][pip_index]["pip"], list):
        return found, problems
    for number, entry in enumerate(doc.data["dependencies"][pip_index]["pip"]):
        line = doc.line(("dependencies", pip_index, "pip", number))
        if isinstance(entry, str):
            try:
                _follow(entry, doc.path.parent, f"{doc.path}:{line}", found)
            except SpecError as exc:
                problems += [(line, message) for message in exc.problems]
    return found, problems


# --- match specs ------------------------------------------------------------------------------


def check_match_spec(text: str) -> str | None:
    """None if ``text`` is a conda match spec conda would accept, else a short reason.

    Accepts conda's forms: 'name', 'name=1.2', 'name 1.2.* build', 'name=1.2=build',
    'name>=1,<2|>3', 'name[version=">=1"]', 'channel[/subdir]::name ...', a package URL. Where
    rattler is installed it parses the spec too, so what passes here also solves there."""
    spec = _normalise(text)
    if not spec:
        return "empty package spec"
    if _PACKAGE_FILE.search(spec) and ("://" in spec or spec.startswith(("/", "./", "../", "~"))):
        return None  # an explicit package file, as 'conda install URL' takes
    reason = _spec_reason(spec)
    if reason is None and not spec.split("::")[-1].startswith("*"):
        reason = _rattler_reason(spec)  # rattler only takes exact names, conda also takes '*'
    return reason


def _spec_reason(spec: str) -> str | None:
    rest, reason = _strip_channel(spec)
    body, inner, bracket_problem = _split_brackets(rest)
    reason = reason or bracket_problem
    if reason is None:
        match = re.match(r"([^\s=<>!~]*)(.*)", body)
        assert match is not None  # the pattern matches every string
        name, remainder = match[1], match[2].strip()
        reason = _name_reason(name, remainder) or _version_build_reason(remainder)
    if reason is None and inner is not None:
        reason = _bracket_reason(inner)
    if reason and _looks_like_pip(spec):
        reason += _PIP_HINT
    return reason


def _strip_channel(spec: str) -> tuple[str, str | None]:
    """(the spec without 'channel::', problem with the channel part or None)."""
    channel, sep, rest = spec.partition("::")
    if not sep:
        return spec, None
    if not channel:
        return rest, "nothing before '::'; write 'channel::name'"
    if not _CHANNEL.fullmatch(channel):
        return rest, f"'{channel}' is not a channel name"
    if "::" in rest:
        return rest, "more than one '::'"
    return rest, None


def _split_brackets(spec: str) -> tuple[str, str | None, str | None]:
    """(text before '[...]', text inside it or None, problem or None)."""
    if "[" not in spec and "]" not in spec:
        return spec, None, None
    match = _BRACKETS.fullmatch(spec)
    if match is None or match["tail"].strip():
        return spec, None, "a '[...]' part must come once, at the end"
    return match["body"], match["inner"], None


def _name_reason(name: str, remainder: str) -> str | None:
    if not name:
        start = remainder.split()[0] if remainder else ""
        return f"no package name before '{start}'"
    if _NAME.fullmatch(name):
        return None
    if name.startswith("-"):
        return f"'{name}' is an option, not a package name"
    if "://" in name:
        return "a URL is not a package spec (a package file URL ends in .conda or .tar.bz2)"
    if re.search(r"\w:\w", name):
        return f"'{name}': write '::' between channel and package name"
    return _name_chars_reason(name)


def _name_chars_reason(name: str) -> str:
    bad = "".join(sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))}))
    if bad:
        return f"'{bad}' is not allowed in a package name (letters, digits, '_', '-' and '.')"
    return f"'{name}' is not a package name (it must start with a letter, digit or '_')"


def _version_build_reason(remainder: str) -> str | None:
    """Check 'VERSION [BUILD]' (space form) or '=VERSION=BUILD' (equals form)."""
    tokens = _merge_operators(remainder.split())
    if len(tokens) + 1 > 3:
        return (f"{len(tokens) + 1} space-separated parts, but a spec is 'name [version "
                f"[build]]'; put separate packages on separate '- ' lines")
    if not tokens:
        return None
    if len(tokens) == 1:
        version, *builds = _BUILD_EQUALS.split(tokens[0], maxsplit=1)
    else:
        version, builds = tokens[0], tokens[1:]
    reason = _version_reason(version)
    if reason is None and builds:
        reason = _build_reason(builds[0])
    return reason


def _merge_operators(tokens: list[str]) -> list[str]:
    """'>= 1.0' and '>=1,  <2' are one version each: a token ending in an operator or a
    separator continues into the next, as conda reads them."""
    merged: list[str] = []
    for token in tokens:
        if merged and merged[-1][-1] in "=<>!~,|":
            merged[-1] += token
        else:
            merged.append(token)
    return merged


def _version_reason(version: str) -> str | None:
    """A conda version spec: constraints joined by ',' (and) and '|' (or), parentheses allowed."""
    if version.count("(") != version.count(")"):
        return f"unbalanced parentheses in version '{version}'"
    for atom in re.split(r"[,|]", version.replace("(", "").replace(")", "")):
        if not atom:
            return f"empty constraint in version '{version}' (a stray ',' or '|')"
        reason = _constraint_reason(atom)
        if reason:
            return reason
    return None


def _constraint_reason(atom: str) -> str | None:
    operator = re.match(r"[=<>!~]*", atom)
    op = operator[0] if operator else ""
    value = atom[len(op):]
    if op and op not in _OPERATORS:
        fix = _OPERATOR_FIXES.get(op)
        hint = f"; did you mean '{fix}'?" if fix else " (use ==, !=, <, <=, >, >=, ~= or =)"
        return f"'{op}' is not a version operator{hint}"
    if not value:
        return f"'{op}' has no version after it"
    if not _VERSION.fullmatch(value):
        bad = "".join(sorted({c for c in value if not _VERSION.fullmatch(c)}))
        return f"'{bad}' is not allowed in version '{value}'"
    if re.search(r"\.\.|^\.|\.$", value):
        return f"version '{value}' has an empty part between dots"
    return None


def _build_reason(build: str) -> str | None:
    if not build:
        return "nothing after the last '='; remove it or add a build string"
    if "=" in build:
        return "too many '=' (the form is 'name=version=build')"
    if build[0] in "<>!~":
        return f"'{build}' looks like a second version constraint; join them with ',' ('>=1,<2')"
    if not _BUILD.fullmatch(build):
        bad = "".join(sorted({c for c in build if not _BUILD.fullmatch(c)}))
        return f"'{bad}' is not allowed in build string '{build}'"
    return None


def _bracket_reason(inner: str) -> str | None:
    """'[version=">=1.0", build=py_0]': known keys, and the version checked like any other."""
    items = _bracket_items(inner)
    if isinstance(items, str):
        return items
    for key, value in items:
        if key not in _BRACKET_KEYS:
            return (f"unknown key '{key}' in '[...]' (conda knows "
                    f"{', '.join(_BRACKET_KEYS[:6])}, ...)")
        reason = _version_reason(value.replace(" ", "")) if key == "version" else None
        if reason:
            return reason
    return None


def _bracket_items(inner: str) -> list[tuple[str, str]] | str:
    """The key=value pairs inside '[...]', or why there are none."""
    position, items = 0, []
    while position < len(inner.rstrip()):
        match = _BRACKET_ITEM.match(inner, position)
        if match is None or match.end() == position:
            return (f"'[{inner}]' is not conda's [key=value, ...] form (pip extras like "
                    f"'pkg[extra]' do not exist in conda)")
        items.append((match["key"], match["sq"] or match["dq"] or match["bare"] or ""))
        position = match.end()
    return items or "empty '[]'"


def _looks_like_pip(spec: str) -> bool:
    return ("://" in spec or " @ " in spec or spec.startswith(("-", "git+", ".", "/"))
            or bool(re.search(r"\[[^=\]]+\]", spec)))


def _rattler_reason(spec: str) -> str | None:
    """A second opinion from rattler when it is installed (it is what solves the spec); its
    first error line is specific enough. Imported here: it costs ~0.1 s and is optional."""
    try:
        from rattler import MatchSpec
    except ImportError:
        return None
    try:
        MatchSpec(spec)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - no common base; a Rust panic is one
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None
