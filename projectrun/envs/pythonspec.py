"""Read a project's Python environment spec: python_env.yaml, or conda.yaml converted as MLflow does.

Every problem is reported as ``file:line: message``. Requirement and constraint files named by
``-r`` / ``-c`` lines are followed (nested ones too) and their contents hashed, because editing
requirements.txt must give a new environment.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun.errors import SpecError
from projectrun.spec import CONDA_ENV, PYTHON_ENV, Project
from projectrun.yamlfile import YamlDoc, load_yaml, read_regular, schema_problems

#: MLflow's ``_CONDA_DEPENDENCY_REGEX`` (mlflow/utils/environment.py), plus ``python=3.10.*``.
_CONDA_DEP = re.compile(r"^(?P<package>python|pip|setuptools|wheel)"
                        r"(?P<operator><|>|<=|>=|=|==|!=)?(?P<version>[\d.]+?)?(?:\.\*)?$")
_KEYS = ("python", "build_dependencies", "dependencies")
#: Most -r / -c files followed for one environment (they nest, and each level recurses).
MAX_FILES = 100
_FILE_OPTIONS = {"-r": "requirements", "--requirement": "requirements",
                 "-c": "constraints", "--constraint": "constraints"}


@dataclass(frozen=True)
class FileRef:
    """A requirements or constraints file an environment depends on."""

    path: Path
    #: the path as written, for cache-key inputs that do not depend on where the project lives
    written: str
    sha256: str


@dataclass(frozen=True)
class PythonEnvSpec:
    #: requested version ("3.11", "3.11.7"); None means the interpreter running projectrun
    python: str | None
    build_dependencies: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    files: tuple[FileRef, ...] = ()
    source: Path | None = None
    warnings: tuple[str, ...] = ()


def spec_for(project: Project) -> PythonEnvSpec:
    """The spec a virtualenv/uv manager builds for this project (MLflow's ``_PythonEnv`` choice)."""
    if project.env_type == PYTHON_ENV and project.env_file:
        return load_python_env(project.env_file, project.directory)
    if project.env_type == CONDA_ENV and project.env_file:
        return from_conda_yaml(project.env_file, project.directory)
    return PythonEnvSpec(python=None)  # no env file: a bare venv with the current Python


def load_python_env(path: Path, base: Path) -> PythonEnvSpec:
    """Parse MLflow's python_env.yaml; relative ``-r`` / ``-c`` paths are relative to ``base``."""
    doc = load_yaml(path)
    if doc.data is None:
        raise SpecError([(f"{path}:1: the file is empty; give at least 'python: \"X.Y\"' "
                          f"(and optionally build_dependencies and dependencies)")])
    if not isinstance(doc.data, dict):
        raise SpecError([(f"{path}:1: expected a mapping with python, build_dependencies and "
                          f"dependencies, got {type(doc.data).__name__}")])
    problems = _python_number_problems(doc) + _unknown_key_problems(doc)
    # Check the rest with the problems above taken out, so each is reported once, at its line.
    known = {k: v for k, v in doc.data.items() if k in _KEYS}
    if problems and "python" in known:
        known["python"] = str(known["python"])
    problems += schema_problems(YamlDoc(doc.path, known, doc.lines), "python_env.schema.json")
    if problems:
        raise SpecError(sorted(problems, key=lambda p: _line_of(p, doc.path)))
    data = doc.data
    build = _lines(data.get("build_dependencies"))
    deps = _lines(data.get("dependencies"))
    files = _files_of(doc, ("build_dependencies", "dependencies"), base)
    python = data.get("python")
    return PythonEnvSpec(python=str(python).strip() if python else None, build_dependencies=build,
                         dependencies=deps, files=tuple(files), source=path)


def _line_of(problem: str, path: Path) -> int:
    number = problem[len(str(path)) + 1:].split(":", 1)[0]
    return int(number) if number.isdigit() else 0


def _unknown_key_problems(doc: YamlDoc) -> list[str]:
    """MLflow fails on an unknown key with a TypeError; point at the key and list the known ones."""
    return [f"{doc.where((str(key),))}: unknown key '{key}' (python_env.yaml has only "
            f"{', '.join(_KEYS)})" for key in doc.data if key not in _KEYS]


def _python_number_problems(doc: YamlDoc) -> list[str]:
    """``python: 3.10`` is the float 3.1 in YAML; say how to write what was meant."""
    value = doc.data.get("python")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    line = doc.line(("python",))
    written = _raw_value(doc.path, line) or str(value)
    return [(f"{doc.where(('python',))}: 'python' must be a string, but YAML reads {written} as "
             f"the number {value!r}; quote it: python: \"{written}\"")]


def _raw_value(path: Path, line: int) -> str | None:
    try:
        text = read_regular(path).decode("utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    match = re.search(r"python\s*:\s*([^\s#]+)", text)
    return match.group(1) if match else None


def _lines(value: Any) -> tuple[str, ...]:
    return tuple(str(v).strip() for v in value or () if str(v).strip())


def _files_of(doc: YamlDoc, keys: tuple[str, ...], base: Path) -> list[FileRef]:
    found: list[FileRef] = []
    for key in keys:
        for index, line in enumerate(doc.data.get(key) or ()):
            _follow(str(line), base, doc.where((key, index)), found)
    return found


def _follow(line: str, base: Path, where: str, found: list[FileRef]) -> None:
    """Record the file a ``-r`` / ``-c`` line names, then the files it names in turn."""
    for option, written in _file_options(line):
        try:
            target = (base / written).resolve()
            if any(ref.path == target for ref in found):
                continue  # already counted (or a cycle)
            data = read_regular(target)
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL in the name, a symlink loop
            reason = getattr(exc, "strerror", None) or exc
            raise SpecError([(f"{where}: {_FILE_OPTIONS[option]} file '{written}' cannot be read "
                              f"({reason}); it is looked for relative to {base}")]) from None
        if len(found) >= MAX_FILES:
            raise SpecError([(f"{where}: more than {MAX_FILES} requirements and constraints "
                              f"files are named (nested -r/-c lines); merge some of them")])
        found.append(FileRef(target, written, hashlib.sha256(data).hexdigest()))
        text = data.decode("utf-8", errors="replace").replace("\\\n", "")
        for number, nested in enumerate(text.splitlines(), start=1):
            # pip resolves a nested -r relative to the file that contains it
            _follow(nested, target.parent, f"{target}:{number}", found)


def _file_options(line: str) -> list[tuple[str, str]]:
    """``-r x.txt``, ``-rx.txt``, ``--requirement=x.txt`` (and ``-c`` alike) in one line."""
    stripped = line.strip()
    if not stripped.startswith("-"):
        return []
    try:
        tokens = shlex.split(stripped, comments=True)
    except ValueError:
        return []
    out = []
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in _FILE_OPTIONS and eq and value:
            out.append((name, value))
        elif token in _FILE_OPTIONS and i + 1 < len(tokens):
            out.append((token, tokens[i + 1]))
        elif token[:2] in ("-r", "-c") and len(token) > 2 and not token.startswith("--"):
            out.append((token[:2], token[2:]))
    return out


def from_conda_yaml(path: Path, base: Path) -> PythonEnvSpec:
    """MLflow's ``_PythonEnv.from_conda_yaml``: python pinned; pip/setuptools/wheel -> build deps;
    the ``pip:`` list -> dependencies; every other conda package dropped with a warning."""
    doc = load_yaml(path)
    data = doc.data if isinstance(doc.data, dict) else {}
    listed = data.get("dependencies") or []
    if not isinstance(listed, list):
        raise SpecError([(f"{doc.where(('dependencies',))}: 'dependencies' must be a list of "
                          f"conda packages and {{pip: [...]}}, got {type(listed).__name__}")])
    split = _CondaDeps.of(doc, listed)
    files = _files_of(YamlDoc(doc.path, {"pip": split.pip}, {("pip", i): doc.line(
        ("dependencies", split.pip_index, i)) for i in range(len(split.pip))}), ("pip",), base) \
        if split.pip_index is not None else []
    return PythonEnvSpec(python=split.python, build_dependencies=tuple(split.build),
                         dependencies=_lines(split.pip), files=tuple(files), source=path,
                         warnings=split.warnings(path))


@dataclass
class _CondaDeps:
    """A conda.yaml's dependencies as the virtualenv manager sees them."""

    python: str | None = None
    build: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    pip_index: int | None = None
    dropped: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, doc: YamlDoc, listed: list[Any]) -> _CondaDeps:
        out, problems = cls(), []
        for index, dep in enumerate(listed):
            where = doc.where(("dependencies", index))
            if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
                out.pip, out.pip_index = [str(d) for d in dep["pip"]], index
            elif not isinstance(dep, str):
                problems.append(f"{where}: a conda dependency must be a string or {{pip: [...]}}, "
                                f"got {dep!r}")
            else:
                out._add(dep, where, problems)
        if problems:
            raise SpecError(problems)
        return out

    def _add(self, dep: str, where: str, problems: list[str]) -> None:
        if (match := _CONDA_DEP.match(dep.strip())) is None:
            self.dropped.append(dep)
        elif match["package"] == "python" and self.python is None:
            self.python = _conda_python(match, dep, where, problems)
        elif match["package"] != "python":
            op = "==" if match["operator"] == "=" else match["operator"] or ""
            self.build.append(f"{match['package']}{op}{match['version'] or ''}")

    def warnings(self, path: Path) -> tuple[str, ...]:
        out = []
        if self.python is None:
            out.append(f"{path}: no python version pinned (e.g. python=3.11); using the current "
                       f"interpreter's version")
        if self.dropped:
            out.append(f"{path}: conda packages {', '.join(self.dropped)} are not installed by the "
                       f"virtualenv/uv manager (only 'pip:' entries are); use --env-manager conda "
                       f"or list them under pip:")
        return tuple(out)


def _conda_python(match: re.Match[str], dep: str, where: str, problems: list[str]) -> str | None:
    if match["operator"] is None or not match["version"]:
        problems.append(f"{where}: '{dep}': python must be pinned for the virtualenv/uv manager "
                        f"(e.g. python=3.11)")
        return None
    if match["operator"] in ("<", ">", "!="):
        problems.append(f"{where}: '{dep}': the python version must use =, ==, <= or >= "
                        f"(MLflow rejects {match['operator']})")
        return None
    return str(match["version"])
