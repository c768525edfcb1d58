"""Channel names to URLs, as conda does, with the user's condarc and PROJECTRUN_CONDA_CHANNELS.

Why: users behind a mirror have it in their condarc, and offline users and tests must be able to
point conda-forge/defaults at a local channel without editing the project. Config files are
real files under tmp_path (home and '/' are parameters), so nothing on this machine leaks in.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from projectrun.envs.condachannels import (
    DEFAULT_CHANNELS,
    ENV_VAR,
    ChannelConfig,
    load_config,
    resolve_channel,
    resolve_channels,
    search_path,
    split_channel_spec,
)
from projectrun.errors import SpecError, UsageError

MAIN, R = DEFAULT_CHANNELS


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def config_from(tmp_path: Path, environ: dict[str, str] | None = None) -> ChannelConfig:
    return load_config(environ or {}, home=tmp_path / "home", root=tmp_path / "root")


# --- conda's rules ---------------------------------------------------------------------------


def test_names_urls_and_paths_with_conda_defaults(tmp_path: Path) -> None:
    config = ChannelConfig()
    assert resolve_channel("conda-forge", config) == ["https://conda.anaconda.org/conda-forge"]
    assert resolve_channel("pytorch/label/nightly", config) == [
        "https://conda.anaconda.org/pytorch/label/nightly"]
    assert resolve_channel("defaults", config) == [MAIN, R]
    assert resolve_channel("pkgs/main", config) == [MAIN]  # a default channel by its name
    assert resolve_channel("https://mirror.example/conda-forge/", config) == [
        "https://mirror.example/conda-forge"]
    channel = tmp_path / "local channel"
    assert resolve_channel(str(channel), config) == [channel.as_uri()]
    assert resolve_channel(f"file:{channel}", config) == [channel.as_uri()]
    assert resolve_channel("file:///srv/chan/", config) == ["file:///srv/chan"]
    assert resolve_channel("nodefaults", config) == []


def test_channel_lists_keep_order_drop_duplicates_and_empty_means_defaults() -> None:
    config = ChannelConfig()
    assert resolve_channels([], config) == [MAIN, R]
    assert resolve_channels(["conda-forge", "defaults", "pkgs/main", "conda-forge"], config) == [
        "https://conda.anaconda.org/conda-forge", MAIN, R]
    assert resolve_channels(["conda-forge", "nodefaults"], config) == [
        "https://conda.anaconda.org/conda-forge"]


def test_custom_channels_and_alias() -> None:
    config = ChannelConfig(channel_alias="https://mirror.example/conda/",
                           custom_channels={"pytorch": "https://pt.example"})
    assert resolve_channel("conda-forge", config) == ["https://mirror.example/conda/conda-forge"]
    assert resolve_channel("pytorch", config) == ["https://pt.example/pytorch"]
    assert resolve_channel("pytorch/label/dev", config) == ["https://pt.example/pytorch/label/dev"]


def test_split_channel_spec() -> None:
    assert split_channel_spec("conda-forge::numpy >=1.26") == ("conda-forge", "numpy >=1.26")
    assert split_channel_spec("conda-forge/linux-64::numpy") == ("conda-forge/linux-64", "numpy")
    assert split_channel_spec("https://mirror.example/cf::numpy") == (
        "https://mirror.example/cf", "numpy")
    assert split_channel_spec(" numpy=1.26 ") == (None, "numpy=1.26")
    assert split_channel_spec("::numpy") == (None, "numpy")


# --- condarc files ---------------------------------------------------------------------------


def test_condarc_files_in_conda_order_later_ones_win(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    system = write(root / "etc" / "conda" / ".condarc", """\
        channel_alias: https://system.example
        default_channels: [https://system.example/main]
        custom_channels: {pytorch: https://pt-system.example, bioconda: https://bio.example}
        show_channel_urls: true   # conda's other settings are not ours to check
        """)
    dropin = write(root / "etc" / "conda" / "condarc.d" / "10-mirror.yml",
                   "default_channels: [https://dropin.example/main]\n")
    user = write(home / ".condarc", """\
        channel_alias: https://user.example/
        custom_channels:
          pytorch: https://pt-user.example
        """)
    config = config_from(tmp_path)
    assert config.sources == (str(system), str(dropin), str(user))
    assert config.channel_alias == "https://user.example"
    assert config.default_channels == ("https://dropin.example/main",)
    assert config.custom_channels == {"pytorch": "https://pt-user.example",
                                      "bioconda": "https://bio.example"}
    assert resolve_channels(["conda-forge", "pytorch", "defaults"], config) == [
        "https://user.example/conda-forge", "https://pt-user.example/pytorch",
        "https://dropin.example/main"]


def test_condarc_variable_comes_last_and_conda_variables_beat_files(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".condarc", "channel_alias: https://user.example\n")
    explicit = write(tmp_path / "elsewhere.yml", "channel_alias: https://explicit.example\n")
    config = config_from(tmp_path, {"CONDARC": str(explicit)})
    assert config.channel_alias == "https://explicit.example"
    config = config_from(tmp_path, {"CONDARC": str(explicit),
                                    "CONDA_CHANNEL_ALIAS": "https://var.example",
                                    "CONDA_DEFAULT_CHANNELS": "https://a.example, https://b.example"})
    assert config.channel_alias == "https://var.example"
    assert config.default_channels == ("https://a.example", "https://b.example")
    assert config.sources[-2:] == ("$CONDA_CHANNEL_ALIAS", "$CONDA_DEFAULT_CHANNELS")


def test_condarc_strings_expand_environment_variables(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".conda" / "condarc",
          "channel_alias: https://${MIRROR_HOST}/t/$TOKEN/conda\n")
    config = config_from(tmp_path, {"MIRROR_HOST": "mirror.example", "TOKEN": "abc"})
    assert config.channel_alias == "https://mirror.example/t/abc/conda"


def test_search_path_is_condas(tmp_path: Path) -> None:
    home, root = Path("/h"), Path("/r")
    paths = search_path({"XDG_CONFIG_HOME": "/h/.config", "CONDA_PREFIX": "/env",
                         "CONDARC": "/x/rc.yml"}, home, root)
    assert [str(p) for p in paths] == [
        "/r/etc/conda/.condarc", "/r/etc/conda/condarc",
        "/r/var/lib/conda/.condarc", "/r/var/lib/conda/condarc",
        "/h/.config/conda/.condarc", "/h/.config/conda/condarc",  # XDG and ~/.config: read once
        "/h/.conda/.condarc", "/h/.conda/condarc", "/h/.condarc",
        "/env/.condarc", "/env/condarc", "/x/rc.yml"]


def test_malformed_condarc_names_the_file_and_line(tmp_path: Path) -> None:
    rc = write(tmp_path / "home" / ".condarc", """\
        channel_alias: conda.example
        default_channels: https://a.example
        custom_channels:
          ok: https://ok.example
          pytorch: [https://pt.example]
        """)
    with pytest.raises(SpecError) as info:
        config_from(tmp_path)
    assert info.value.problems == [
        (f"{rc}:1: 'channel_alias' must be a URL such as https://conda.anaconda.org, got "
         f"'conda.example'"),
        f"{rc}:2: 'default_channels' must be a list of channel URLs, got 'https://a.example'",
        (f"{rc}:5: custom channel 'pytorch' must map to a base URL (the channel is BASE/pytorch), "
         f"got ['https://pt.example']"),
    ]


def test_condarc_that_is_not_yaml_or_not_a_mapping(tmp_path: Path) -> None:
    rc = write(tmp_path / "home" / ".condarc", "channels:\n  - conda-forge\n - defaults\n")
    with pytest.raises(SpecError) as info:
        config_from(tmp_path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{rc}:3: invalid YAML: ")
    write(rc, "- conda-forge\n")
    with pytest.raises(SpecError) as info:
        config_from(tmp_path)
    assert info.value.problems == [
        (f"{rc}:1: a condarc must be a mapping of settings (such as 'channel_alias: "
         f"https://conda.anaconda.org'), got list")]


def test_empty_condarc_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".condarc", "# nothing\n")
    assert config_from(tmp_path) == ChannelConfig()


# --- PROJECTRUN_CONDA_CHANNELS ---------------------------------------------------------------


def test_override_variable_maps_names_and_replaces_the_defaults_expansion(
        tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    config = config_from(tmp_path, {ENV_VAR: f"conda-forge={mirror}/conda-forge/, "
                                             f"defaults=http://mirror/main,pytorch=http://pt"})
    assert config.overrides == {"conda-forge": (mirror / "conda-forge").as_uri(),
                                "defaults": "http://mirror/main", "pytorch": "http://pt"}
    assert config.sources == (f"${ENV_VAR}",)
    assert resolve_channels(["conda-forge", "defaults", "pytorch/label/nightly", "bioconda"],
                            config) == [
        (mirror / "conda-forge").as_uri(), "http://mirror/main", "http://pt/label/nightly",
        "https://conda.anaconda.org/bioconda"]


def test_override_star_replaces_every_unmapped_name_but_not_explicit_urls(
        tmp_path: Path) -> None:
    config = config_from(tmp_path, {ENV_VAR: "*=file:///srv/chan,pytorch=http://pt"})
    assert resolve_channels(["conda-forge", "defaults", "pytorch", "https://other.example/x"],
                            config) == ["file:///srv/chan", "http://pt", "https://other.example/x"]
    assert resolve_channels([], config) == ["file:///srv/chan"]


def test_override_beats_condarc(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".condarc", "custom_channels: {conda-forge: https://cf.example}\n")
    config = config_from(tmp_path, {ENV_VAR: "conda-forge=http://local/cf"})
    assert resolve_channel("conda-forge", config) == ["http://local/cf"]
    assert config.sources == (str(tmp_path / "home" / ".condarc"), f"${ENV_VAR}")


EXPECTED = (f"expected comma-separated pairs such as {ENV_VAR}=conda-forge=file:///srv/mirror/"
            f"conda-forge,defaults=http://mirror/main (or '*=URL' for every channel not listed)")


@pytest.mark.parametrize(("value", "message"), [
    ("conda-forge", f"{ENV_VAR}: 'conda-forge' is not NAME=URL; {EXPECTED}"),
    ("=http://x", f"{ENV_VAR}: '=http://x' is not NAME=URL; {EXPECTED}"),
    ("conda-forge=", f"{ENV_VAR}: 'conda-forge=' is not NAME=URL; {EXPECTED}"),
    ("conda-forge=mirror/cf", (f"{ENV_VAR}: 'mirror/cf' (for 'conda-forge') is not a URL or an "
                               f"absolute path; expected e.g. {ENV_VAR}=conda-forge=file:///srv/"
                               f"mirror/conda-forge,defaults=http://mirror/main (or '*=URL' for "
                               f"every channel not listed)")),
    ("a=http://x,a=http://y", (f"{ENV_VAR}: 'a' is mapped twice; keep one of 'a=http://x' and "
                               f"'a=http://y'")),
])
def test_malformed_override_variable_is_a_usage_error(tmp_path: Path, value: str,
                                                      message: str) -> None:
    with pytest.raises(UsageError) as info:
        config_from(tmp_path, {ENV_VAR: value})
    assert str(info.value) == message


def test_empty_items_in_the_variable_are_ignored(tmp_path: Path) -> None:
    assert config_from(tmp_path, {ENV_VAR: " , a=http://x, "}).overrides == {"a": "http://x"}
    assert config_from(tmp_path, {ENV_VAR: ""}).overrides == {}


# --- cache key -------------------------------------------------------------------------------


def test_key_inputs_cover_what_changes_urls_not_where_it_was_read(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".condarc", "custom_channels: {b: http://b, a: http://a}\n")
    from_file = config_from(tmp_path)
    same = ChannelConfig(custom_channels={"a": "http://a", "b": "http://b"})
    assert from_file.key_inputs() == same.key_inputs()
    assert list(from_file.key_inputs()["custom_channels"]) == ["a", "b"]
    assert ChannelConfig(overrides={"*": "file:///x"}).key_inputs() != ChannelConfig().key_inputs()
    assert ChannelConfig(channel_alias="http://m").key_inputs() != ChannelConfig().key_inputs()
