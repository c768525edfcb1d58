"""Load an MLflow project directory into typed objects, accepting what MLflow accepts.

MLflow's own loader (mlflow/projects/_project_spec.py) never validates structure and crashes with
AttributeError on many malformed files; here the same files are checked against
schemas/mlproject.schema.json first, so every problem is reported at once with file and line.
"""
from __future__ import annotations

import os
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun.errors import ParameterError, SpecError
from projectrun.yamlfile import YamlDoc, load_yaml, schema_problems

PYTHON_ENV = "python_env"
CONDA_ENV = "conda_env"
DOCKER_ENV = "docker_env"
ENV_KEYS = (DOCKER_ENV, PYTHON_ENV, CONDA_ENV)
DEFAULT_PYTHON_ENV_FILE = "python_env.yaml"
DEFAULT_CONDA_FILE = "conda.yaml"
KNOWN_TOP_LEVEL = {"name", "entry_points", "databricks_spark_job", *ENV_KEYS}
#: Types MLflow gives meaning to; any other string is accepted and treated like ``string``.
KNOWN_PARAM_TYPES = ("string", "float", "int", "path", "uri")
SCRIPT_EXTENSIONS = (".py", ".sh")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any = None
    line: int = 0

    @property
    def required(self) -> bool:
        """MLflow's rule: a parameter is required iff its default is None (so ``default: 0`` is optional)."""
        return self.default is None


@dataclass(frozen=True)
class EntryPoint:
    name: str
    parameters: dict[str, Parameter]
    command: str | None
    declared: bool = True
    line: int = 0


@dataclass(frozen=True)
class DockerEnv:
    #: the base image by name; empty when it is built from ``dockerfile``
    image: str
    volumes: tuple[str, ...] = ()
    #: str = copy from host; (name, value) = set.
    environment: tuple[str | tuple[str, str], ...] = ()
    #: projectrun extension: build the base image from this Dockerfile in the project
    dockerfile: Path | None = None


@dataclass(frozen=True)
class Project:
    directory: Path
    file: Path | None
    name: str | None
    entry_points: dict[str, EntryPoint]
    #: "python_env", "conda_env", "docker_env", or None when there is no env file at all
    #: (MLflow then means "a bare virtualenv with the current Python").
    env_type: str | None
    env_file: Path | None
    docker_env: DockerEnv | None = None
    warnings: tuple[str, ...] = ()
    #: entry point name -> problems that stop that entry point (not the whole file) from running.
    entry_point_problems: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def entry_point(self, name: str) -> EntryPoint:
        """The declared entry point, or a script path run the way MLflow runs undeclared ones."""
        if name in self.entry_points:
            ep = self.entry_points[name]
            if name in self.entry_point_problems:
                raise SpecError(list(self.entry_point_problems[name]))
            return ep
        ext = os.path.splitext(name)[1]
        if ext == ".py":
            return EntryPoint(name, {}, f"python {shlex.quote(name)}", declared=False)
        if ext == ".sh":
            shell = os.environ.get("SHELL", "bash")
            return EntryPoint(name, {}, f"{shell} {shlex.quote(name)}", declared=False)
        if ext == ".R":
            cmd = f"Rscript -e \"mlflow::mlflow_source('{shlex.quote(name)}')\" --args"
            return EntryPoint(name, {}, cmd, declared=False)
        valid = ", ".join(self.entry_points) or "none declared"
        where = self.file or self.directory
        raise ParameterError(
            f"unknown entry point '{name}' in {where}; valid entry points: {valid} "
            f"(or a script path ending in .py or .sh)"
        )


def find_mlproject(directory: Path) -> Path | None:
    """MLflow matches any case of 'mlproject'; MLproject.yaml / .yml are accepted too (MLflow ignores them)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for wanted in ("mlproject", "mlproject.yaml", "mlproject.yml"):
        exact = [n for n in names if n.lower() == wanted]
        if exact:
            preferred = [n for n in exact if n.startswith("MLproject")]
            return directory / (preferred or exact)[0]
    return None


def load_project(directory: str | os.PathLike[str]) -> Project:
    """Parse and validate the project in ``directory``; raise SpecError listing every problem."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise SpecError([f"{directory}: not a directory"])
    file = find_mlproject(directory)
    if file is None:
        doc = YamlDoc(path=directory / "MLproject", data={})
    else:
        doc = load_yaml(file)
        if doc.data is None:
            raise SpecError([(f"{file}:1: the MLproject file is empty; it needs at least "
                             f"'entry_points:' (see MLflow's MLproject format)")])
    problems = schema_problems(doc, "mlproject.schema.json") if file else []
    if problems:
        raise SpecError(problems)
    data: dict[str, Any] = doc.data
    warnings: list[str] = []
    for key in data:
        if key not in KNOWN_TOP_LEVEL:
            warnings.append(f"{doc.where((str(key),))}: unknown top-level key '{key}' is ignored "
                            f"(known: {', '.join(sorted(KNOWN_TOP_LEVEL))})")

    env_keys = [k for k in ENV_KEYS if k in data]
    if len(env_keys) > 1:
        raise SpecError([(f"{doc.where((env_keys[1],))}: only one environment may be given, found "
                         f"{', '.join(env_keys)}; keep one of them")])

    entry_points, ep_problems = _entry_points(doc, warnings)
    name = data.get("name")
    name = None if name is None else str(name)
    env_type, env_file, docker = _environment(doc, directory, entry_points)
    return Project(
        directory=directory, file=file, name=name, entry_points=entry_points,
        env_type=env_type, env_file=env_file, docker_env=docker,
        warnings=tuple(warnings), entry_point_problems=ep_problems,
    )


def _entry_points(doc: YamlDoc, warnings: list[str]) -> tuple[dict[str, EntryPoint], dict[str, tuple[str, ...]]]:
    entry_points: dict[str, EntryPoint] = {}
    problems: dict[str, tuple[str, ...]] = {}
    for raw_name, body in (doc.data.get("entry_points") or {}).items():
        name = str(raw_name)
        path = ("entry_points", name)
        params: dict[str, Parameter] = {}
        for pname, pspec in (body.get("parameters") or {}).items():
            ppath = path + ("parameters", str(pname))
            if isinstance(pspec, str):
                ptype, default = pspec, None
            else:
                ptype, default = str(pspec.get("type", "string")), _plain(pspec.get("default"))
            if ptype not in KNOWN_PARAM_TYPES:
                warnings.append(f"{doc.where(ppath)}: parameter '{pname}' has unknown type '{ptype}'; "
                                f"treated as string (known: {', '.join(KNOWN_PARAM_TYPES)})")
            params[str(pname)] = Parameter(str(pname), ptype, default, doc.line(ppath))
        command = body.get("command")
        ep_problems = _command_problems(doc, path, name, command, params)
        if ep_problems:
            problems[name] = tuple(ep_problems)
        if not isinstance(command, str):  # reported above; keep EntryPoint.command a str or None
            command = None
        entry_points[name] = EntryPoint(name, params, command, True, doc.line(path))
    return entry_points, problems


def _plain(value: Any) -> Any:
    """A default as JSON can hold it. MLflow substitutes ``str(default)``; for YAML values JSON
    lacks (dates, sets, binary) that string is kept instead, which renders identically."""
    def jsonable(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, (str, int, float, bool)) and jsonable(x) for k, x in v.items())
        if isinstance(v, list):
            return all(jsonable(x) for x in v)
        return v is None or isinstance(v, (str, int, float, bool))

    return value if jsonable(value) else str(value)


def _command_problems(doc: YamlDoc, path: tuple[str, ...], name: str, command: Any,
                      params: dict[str, Parameter]) -> list[str]:
    """Problems MLflow only hits when it runs the entry point (a KeyError or AttributeError there),
    so they stop that entry point, not the file: MLflow still runs the others."""
    if command is None:
        return [f"{doc.where(path)}: entry point '{name}' has no 'command'; add one"]
    where = doc.where(path + ("command",))
    if not isinstance(command, str):
        kind = {"dict": "a mapping", "list": "a list"}.get(type(command).__name__, type(command).__name__)
        return [(f"{where}: entry point '{name}': command must be a string, got {kind}; "
                f"quote it or use a block scalar (command: |)")]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(command) if f is not None]
    except ValueError as exc:
        return [(f"{where}: entry point '{name}': command is not a valid template ({exc}); "
                f"write literal braces as {{{{ and }}}}")]
    found = []
    for f in fields:
        base = f.split(".", 1)[0].split("[", 1)[0]
        if base == "" or base.isdigit():
            found.append(f"{where}: entry point '{name}': '{{{f}}}' in the command is positional; "
                         f"name a declared parameter, or write literal braces as {{{{ }}}}")
        elif base not in params:
            declared = ", ".join(params) or "none"
            found.append(f"{where}: entry point '{name}': command uses '{{{base}}}' but no parameter "
                         f"'{base}' is declared (declared: {declared}); declare it, or write "
                         f"shell variables as $VAR, not ${{VAR}}")
    if not found:
        try:  # conversions and format specs ({x!z}, {x:d}) fail for any value MLflow substitutes
            command.format(**{p: shlex.quote("a b" * 100) for p in params})
        except IndexError:  # {x[9]} depends on the value's length: only the run can tell
            pass
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            found.append(f"{where}: entry point '{name}': command cannot be filled in "
                         f"({type(exc).__name__}: {exc}); write literal braces as {{{{ and }}}}")
    return found


def _environment(doc: YamlDoc, directory: Path,
                 entry_points: dict[str, EntryPoint]) -> tuple[str | None, Path | None, DockerEnv | None]:
    """Same precedence as MLflow: docker_env, python_env, conda_env, then python_env.yaml / conda.yaml."""
    data = doc.data
    if (spark := data.get("databricks_spark_job")) is not None:
        _check_spark_job(doc, spark, entry_points)
        return None, None, None
    if docker := data.get(DOCKER_ENV):
        env = tuple(e if isinstance(e, str) else (str(e[0]), str(e[1]))
                    for e in docker.get("environment") or ())
        image = str(docker.get("image") or "")
        dockerfile = _dockerfile(doc, directory, docker.get("dockerfile"), image)
        return DOCKER_ENV, None, DockerEnv(image, tuple(docker.get("volumes") or ()), env, dockerfile)
    for key in (PYTHON_ENV, CONDA_ENV):
        if value := data.get(key):
            return key, _env_file(doc.where((key,)), directory, key, str(value)), None
    for key, name in ((PYTHON_ENV, DEFAULT_PYTHON_ENV_FILE), (CONDA_ENV, DEFAULT_CONDA_FILE)):
        if (directory / name).exists():
            return key, _env_file(str(directory / name), directory, key, name), None
    return None, None, None


def _env_file(where: str, directory: Path, key: str, written: str) -> Path:
    """The env file an MLproject names. An absolute path is taken as written (MLflow joins with
    os.path.join, so it works there), but a relative one must stay inside the project once
    symlinks are followed: a project (maybe a git URL) must not make us read ``../../etc/...``."""
    env_file = directory / written
    try:
        target = os.path.realpath(env_file)
        exists = env_file.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        raise SpecError([f"{where}: {key} file {written!r} is not a usable path ({exc})"]) from None
    if not os.path.isabs(written) and not _inside(target, directory):
        raise SpecError([(f"{where}: {key} file '{written}' is outside the project {directory} "
                          f"(it resolves to {target}); keep it in the project, or write its "
                          f"absolute path if you mean that file")])
    if not exists:
        raise SpecError([(f"{where}: {key} file '{written}' was not found in {directory}; "
                          f"create it or fix the path")])
    return env_file


def _inside(target: str, directory: Path) -> bool:
    top = os.path.realpath(directory)
    return target == top or target.startswith(top.rstrip(os.sep) + os.sep)


def _dockerfile(doc: YamlDoc, directory: Path, written: Any, image: str) -> Path | None:
    """docker_env's ``dockerfile`` (projectrun's extension) or ``image``: exactly one of them."""
    where = doc.where((DOCKER_ENV,))
    if not written:
        if not image:
            raise SpecError([f"{where}: docker_env needs an 'image' (e.g. image: python:3.11-slim)"])
        return None
    if image:
        raise SpecError([f"{where}: give docker_env either 'image' or 'dockerfile', not both"])
    path = (directory / str(written)).resolve()
    if not path.is_relative_to(directory.resolve()) or not path.is_file():
        raise SpecError([(f"{doc.where((DOCKER_ENV, 'dockerfile'))}: dockerfile '{written}' is not a "
                         f"file inside the project {directory}")])
    return path


def _check_spark_job(doc: YamlDoc, spark: dict[str, Any], entry_points: dict[str, EntryPoint]) -> None:
    where = doc.where(("databricks_spark_job",))
    if spark.get("python_file") is None and not entry_points:
        raise SpecError([f"{where}: databricks_spark_job needs 'python_file' or entry_points"])
    if spark.get("python_file") is not None and entry_points:
        raise SpecError([f"{where}: databricks_spark_job cannot have both 'python_file' and entry_points"])
    for key in ENV_KEYS:
        if key in doc.data:
            raise SpecError([f"{where}: databricks_spark_job cannot be combined with {key}"])
    for ep in entry_points.values():
        for p in ep.parameters.values():
            if p.type == "path":
                raise SpecError([(f"{where}: databricks_spark_job does not support 'path' parameters "
                                 f"('{p.name}' in entry point '{ep.name}')")])
