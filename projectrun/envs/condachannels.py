"""Turn conda channel names into URLs as conda does, honouring the user's condarc and an override.

Users behind a mirror set ``channel_alias`` / ``default_channels`` / ``custom_channels`` in a
condarc; conda reads those, so we must too or their environments would not build. Offline users
and tests map names straight to URLs with ``PROJECTRUN_CONDA_CHANNELS``, e.g.
``conda-forge=file:///srv/mirror/conda-forge,defaults=http://mirror/main`` or ``*=URL`` for every
channel not listed, without editing the project's conda.yaml.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun.errors import SpecError, UsageError
from projectrun.yamlfile import YamlDoc, load_yaml

ENV_VAR = "PROJECTRUN_CONDA_CHANNELS"
DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org"
DEFAULT_CHANNELS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
DEFAULTS = "defaults"
#: listed in a conda.yaml to tell conda not to add the user's default channels; not a channel
NODEFAULTS = "nodefaults"
#: in the override variable: every channel name that has no mapping of its own
ANY = "*"
_EXAMPLE = (f"{ENV_VAR}=conda-forge=file:///srv/mirror/conda-forge,defaults=http://mirror/main "
            f"(or '*=URL' for every channel not listed)")
_ENV_VAR_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class ChannelConfig:
    """The settings that decide where a channel name points, merged from every source."""

    channel_alias: str = DEFAULT_CHANNEL_ALIAS
    #: what 'defaults' expands to
    default_channels: tuple[str, ...] = DEFAULT_CHANNELS
    #: name -> base URL; the channel's URL is base/name, as in conda
    custom_channels: dict[str, str] = field(default_factory=dict)
    #: from PROJECTRUN_CONDA_CHANNELS: name (or '*') -> URL, used as is
    overrides: dict[str, str] = field(default_factory=dict)
    #: the files and variables that were read, to say where a URL came from
    sources: tuple[str, ...] = ()

    def key_inputs(self) -> dict[str, Any]:
        """Everything that changes a URL, in a stable order; not where it was read from."""
        return {"channel_alias": self.channel_alias,
                "default_channels": list(self.default_channels),
                "custom_channels": dict(sorted(self.custom_channels.items())),
                "overrides": dict(sorted(self.overrides.items()))}


def load_config(environ: Mapping[str, str] | None = None, home: Path | None = None,
                root: Path | None = None) -> ChannelConfig:
    """Read condarc files in conda's search order (later ones win), then conda's
    CONDA_CHANNEL_ALIAS / CONDA_DEFAULT_CHANNELS variables, then PROJECTRUN_CONDA_CHANNELS.
    ``root`` stands in for '/' (for /etc/conda and /var/lib/conda), for tests."""
    env = os.environ if environ is None else environ
    home = home if home is not None else Path(env.get("HOME") or Path.home())
    settings: dict[str, Any] = {"channel_alias": DEFAULT_CHANNEL_ALIAS,
                                "default_channels": DEFAULT_CHANNELS, "custom_channels": {}}
    sources: list[str] = []
    for path in search_path(env, home, root or Path("/")):
        if path.is_file() and _merge(settings, _read_condarc(path, env)):
            sources.append(str(path))
    sources += _conda_variables(settings, env)
    overrides = parse_overrides(env.get(ENV_VAR, ""))
    if overrides:
        sources.append(f"${ENV_VAR}")
    return ChannelConfig(channel_alias=settings["channel_alias"],
                         default_channels=tuple(settings["default_channels"]),
                         custom_channels=settings["custom_channels"], overrides=overrides,
                         sources=tuple(sources))


def _conda_variables(settings: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """conda's own CONDA_<KEY> variables beat every condarc; sequences are comma-separated."""
    used = []
    if environ.get("CONDA_CHANNEL_ALIAS"):
        settings["channel_alias"] = environ["CONDA_CHANNEL_ALIAS"].strip().rstrip("/")
        used.append("$CONDA_CHANNEL_ALIAS")
    if environ.get("CONDA_DEFAULT_CHANNELS"):
        settings["default_channels"] = tuple(
            c.strip() for c in environ["CONDA_DEFAULT_CHANNELS"].split(",") if c.strip())
        used.append("$CONDA_DEFAULT_CHANNELS")
    return used


def search_path(environ: Mapping[str, str], home: Path, root: Path = Path("/")) -> list[Path]:
    """conda's SEARCH_PATH (conda/base/constants.py) on POSIX, lowest priority first."""
    dirs = [root / "etc" / "conda", root / "var" / "lib" / "conda"]
    dirs += [Path(environ[v]) for v in ("CONDA_ROOT",) if environ.get(v)]
    if environ.get("XDG_CONFIG_HOME"):
        dirs.append(Path(environ["XDG_CONFIG_HOME"]) / "conda")
    dirs += [home / ".config" / "conda", home / ".conda"]
    paths = [p for d in dirs for p in _rc_files(d)] + [home / ".condarc"]
    if environ.get("CONDA_PREFIX"):
        paths += _rc_files(Path(environ["CONDA_PREFIX"]))
    if environ.get("CONDARC"):
        condarc = Path(environ["CONDARC"]).expanduser()
        paths += _rc_d(condarc) if condarc.is_dir() else [condarc]
    return list(dict.fromkeys(paths))  # XDG_CONFIG_HOME is often ~/.config: read each once


def _rc_files(directory: Path) -> list[Path]:
    return [directory / ".condarc", directory / "condarc", *_rc_d(directory / "condarc.d")]


def _rc_d(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yml", ".yaml"))


def _read_condarc(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """The three channel settings of one condarc, checked; every other key is conda's business."""
    doc = load_yaml(path)
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        raise SpecError([(f"{doc.where()}: a condarc must be a mapping of settings (such as "
                          f"'channel_alias: https://conda.anaconda.org'), got "
                          f"{type(doc.data).__name__}")])
    problems: list[str] = []
    values: dict[str, Any] = {}
    readers = (("channel_alias", _alias), ("default_channels", _channel_list),
               ("custom_channels", _channel_map))
    for key, reader in readers:
        if doc.data.get(key) is not None:
            value = reader(doc, key, problems)
            values[key] = _expand(value, environ)
    if problems:
        raise SpecError(problems)
    return values


def _alias(doc: YamlDoc, key: str, problems: list[str]) -> str:
    value = doc.data[key]
    if not isinstance(value, str) or "://" not in value:
        problems.append(f"{doc.where((key,))}: '{key}' must be a URL such as "
                        f"{DEFAULT_CHANNEL_ALIAS}, got {value!r}")
        return DEFAULT_CHANNEL_ALIAS
    return value.strip().rstrip("/")


def _channel_list(doc: YamlDoc, key: str, problems: list[str]) -> tuple[str, ...]:
    value = doc.data[key]
    if not isinstance(value, list):
        problems.append(f"{doc.where((key,))}: '{key}' must be a list of channel URLs, "
                        f"got {value!r}")
        return DEFAULT_CHANNELS
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            problems.append(f"{doc.where((key, index))}: '{key}' entries must be channel URLs "
                            f"such as {DEFAULT_CHANNELS[0]}, got {item!r}")
    return tuple(str(item).strip() for item in value)


def _channel_map(doc: YamlDoc, key: str, problems: list[str]) -> dict[str, str]:
    value = doc.data[key]
    if not isinstance(value, dict):
        problems.append(f"{doc.where((key,))}: '{key}' must map channel names to base URLs "
                        f"(e.g. 'conda-forge: https://mirror.example'), got {value!r}")
        return {}
    for name, base in value.items():
        if not isinstance(base, str) or not _is_location(base.strip()):
            problems.append(f"{doc.where((key, str(name)))}: custom channel '{name}' must map "
                            f"to a base URL (the channel is BASE/{name}), got {base!r}")
    return {str(name).strip(): str(base).strip().rstrip("/") for name, base in value.items()}


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    """conda expands $VAR and ${VAR} in condarc strings (tokens in mirror URLs); unknown stay."""
    if isinstance(value, str):
        return _ENV_VAR_REF.sub(lambda m: environ.get(m[1] or m[2], m[0]), value)
    if isinstance(value, tuple):
        return tuple(_expand(v, environ) for v in value)
    if isinstance(value, dict):
        return {k: _expand(v, environ) for k, v in value.items()}
    return value


def _merge(settings: dict[str, Any], values: dict[str, Any]) -> bool:
    """Later files replace the alias and default_channels, and add to custom_channels."""
    for key, value in values.items():
        if key == "custom_channels":
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return bool(values)


def parse_overrides(value: str) -> dict[str, str]:
    """``name=URL,name=URL`` (or ``*=URL``) from PROJECTRUN_CONDA_CHANNELS; paths become file://."""
    overrides: dict[str, str] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, equals, url = (part.strip() for part in item.partition("="))
        if not equals or not name or not url:
            raise UsageError(f"{ENV_VAR}: '{item}' is not NAME=URL; expected comma-separated "
                             f"pairs such as {_EXAMPLE}")
        if not _is_location(url):
            raise UsageError(f"{ENV_VAR}: '{url}' (for '{name}') is not a URL or an absolute "
                             f"path; expected e.g. {_EXAMPLE}")
        if name in overrides:
            raise UsageError(f"{ENV_VAR}: '{name}' is mapped twice; keep one of "
                             f"'{name}={overrides[name]}' and '{item}'")
        overrides[name] = _location_url(url)
    return overrides


def _is_location(value: str) -> bool:
    """A URL or a path, as opposed to a channel name."""
    return "://" in value or value.startswith(("file:", "/", "~"))


def _location_url(value: str) -> str:
    """A URL as is (no trailing slash); a path, ``file:/x`` or ``~/x``, as a file:// URL."""
    if "://" in value:
        return value.rstrip("/")
    value = value.removeprefix("file:")
    return Path(value).expanduser().resolve().as_uri()


def resolve_channel(name: str, config: ChannelConfig) -> list[str]:
    """The URL(s) a channel means: 'defaults' gives several, 'nodefaults' none.

    Order of rules: a URL or path is used as is; then PROJECTRUN_CONDA_CHANNELS (the name, a
    parent such as 'pytorch' for 'pytorch/label/nightly', then '*'); then 'defaults' ->
    default_channels; then custom_channels (base/name); then channel_alias/name."""
    name = name.strip().rstrip("/")
    if name == NODEFAULTS:
        return []
    if _is_location(name) or name.startswith(("./", "../")):
        return [_location_url(name)]
    override = _override(name, config.overrides)
    if override is not None:
        return [override]
    if name == DEFAULTS:
        return [_default_url(channel, config) for channel in config.default_channels]
    return [_named_url(name, config)]


def resolve_channels(names: Sequence[str], config: ChannelConfig) -> list[str]:
    """URLs for a conda.yaml's channel list, in priority order, each once.

    An empty list means 'defaults', as in conda. 'nodefaults' is dropped. Unlike ``conda env
    create`` we do not append the condarc's own channel list (usually 'defaults') to a non-empty
    list: a conda-forge-only file would then need repo.anaconda.com, which mirrors and offline
    machines do not have, and pixi and rattler do not append it either."""
    urls: list[str] = []
    for name in names or (DEFAULTS,):
        for url in resolve_channel(name, config):
            if url not in urls:
                urls.append(url)
    return urls


def split_channel_spec(spec: str) -> tuple[str | None, str]:
    """'conda-forge::numpy >=1' -> ('conda-forge', 'numpy >=1'); 'numpy' -> (None, 'numpy').
    The channel part may carry a subdir ('conda-forge/linux-64') and needs resolve_channel."""
    channel, sep, rest = spec.strip().partition("::")
    if not sep:
        return None, spec.strip()
    return channel.strip() or None, rest.strip()


def _override(name: str, overrides: Mapping[str, str]) -> str | None:
    """The override for the name or its nearest parent ('pytorch' for 'pytorch/label/dev',
    keeping the rest of the path), else the '*' catch-all."""
    parts = name.split("/")
    for cut in range(len(parts), 0, -1):
        prefix = "/".join(parts[:cut])
        if prefix in overrides:
            return "/".join([overrides[prefix], *parts[cut:]])
    return overrides.get(ANY)


def _default_url(channel: str, config: ChannelConfig) -> str:
    """A default_channels entry: normally a URL; a name resolves without overrides."""
    if _is_location(channel):
        return _location_url(channel)
    return _named_url(channel.strip().rstrip("/"), config)


def _named_url(name: str, config: ChannelConfig) -> str:
    """custom_channels (the name or a parent), a default channel of that name ('pkgs/main'),
    else channel_alias/name, as conda's Channel does."""
    parts = name.split("/")
    for cut in range(len(parts), 0, -1):
        base = config.custom_channels.get("/".join(parts[:cut]))
        if base is not None:
            return f"{base.rstrip('/')}/{name}"
    for url in config.default_channels:
        if _is_location(url) and url.rstrip("/").endswith("/" + name):
            return _location_url(url)
    return f"{config.channel_alias.rstrip('/')}/{name}"
