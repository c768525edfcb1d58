"""The test conda channel (tests/condachannel.py) is a real channel: rattler solves it, installs
from it, and the installed python, pip and tools run."""
from __future__ import annotations

import asyncio
import gc
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import condachannel
import pytest
from condachannel import (
    EXTRA_TOOL_VERSION,
    LEGACY_TOOL_PYTHON,
    PACKAGES,
    PIP_VERSION,
    PY_XY,
    PYTHON_VERSION,
    SITE_PACKAGES,
    TINYPKG_VERSION,
    build_channel,
    serve,
)


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built where conftest's session fixture builds it, so a test session builds it once."""
    yield build_channel(tmp_path_factory.getbasetemp() / "conda-channels")
    gc.collect()  # a process that used rattler's Gateway can crash at exit without this


def solve(channels: list[str], specs: list[str], cache: Path) -> list[Any]:
    import rattler

    gateway = rattler.Gateway(cache_dir=cache)
    return asyncio.run(rattler.solve(
        sources=[rattler.Channel(c) for c in channels], specs=specs, gateway=gateway,
        platforms=["linux-64", "noarch"], virtual_packages=rattler.VirtualPackage.detect()))


def install(records: list[Any], prefix: Path, pkgs: Path) -> None:
    import rattler

    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=pkgs,
                                show_progress=False))


def run(prefix: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run in a minimal environment: nothing from the test's venv may leak in."""
    base = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}).stdout


def test_reuses_complete_tree_and_never_a_crashed_one(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_build(root: Path) -> None:
        calls.append(root)
        (root / "conda-forge").mkdir()

    monkeypatch.setattr(condachannel, "_build_tree", fake_build)
    dest = tmp_path / "channels"
    assert build_channel(dest) == dest and (dest / "conda-forge").is_dir()
    assert build_channel(dest) == dest and len(calls) == 1  # cached: no rebuild
    (dest / ".complete").write_text('{"builder": "older"}')  # another builder/interpreter
    build_channel(dest)
    assert len(calls) == 2 and (dest / ".complete").read_text() == condachannel._stamp()

    def crash(root: Path) -> None:
        (root / "conda-forge").mkdir()
        raise RuntimeError("boom")

    monkeypatch.setattr(condachannel, "_build_tree", crash)
    with pytest.raises(RuntimeError, match="boom"):
        build_channel(tmp_path / "crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channels"]  # no partial tree left


@pytest.mark.slow
def test_channels_are_indexed_with_the_named_packages(channel: Path) -> None:
    for name, packages in PACKAGES.items():
        found: dict[str, set[str]] = {}
        for subdir in ("linux-64", "noarch"):
            repodata = json.loads((channel / name / subdir / "repodata.json").read_text())
            assert repodata["info"]["subdir"] == subdir
            for fn, rec in repodata["packages.conda"].items():
                assert (channel / name / subdir / fn).is_file()
                found.setdefault(rec["name"], set()).add(rec["version"])
                if rec["name"] == "python":
                    assert rec["python_site_packages_path"] == SITE_PACKAGES
        assert found == {pkg: set(versions) for pkg, versions in packages.items()}


@pytest.mark.slow
def test_solve_install_and_run(channel: Path, tmp_path: Path) -> None:
    specs = [f"python {PY_XY}.*", "pip", "hello-tool ==2.0", "tinypkg"]
    records = solve([(channel / "conda-forge").as_uri()], specs, tmp_path / "repodata")
    versions = {r.name.normalized: str(r.version) for r in records}
    assert versions == {"python": PYTHON_VERSION, "pip": PIP_VERSION, "hello-tool": "2.0",
                        "tinypkg": TINYPKG_VERSION, "libgreet": "1.0"}  # libgreet: transitive
    prefix, pkgs = tmp_path / "env", tmp_path / "pkgs"
    install(records, prefix, pkgs)

    out = run(prefix, str(prefix / "bin/python"), "-c",
              "import tinypkg, site, sys, ssl, sqlite3, json, venv\n"
              "print(tinypkg.VERSION, sys.prefix, sys.base_prefix)\n"
              "print(*site.getsitepackages())")
    assert out.splitlines() == [f"{TINYPKG_VERSION} {prefix} {prefix}", f"{prefix}/{SITE_PACKAGES}"]
    site_packages = {p.name for p in (prefix / SITE_PACKAGES).iterdir()}
    assert site_packages == {"README.txt", "pip", f"pip-{PIP_VERSION}.dist-info", "tinypkg",
                             f"tinypkg-{TINYPKG_VERSION}.dist-info"}  # none of the host's
    pip = run(prefix, f"{prefix}/bin/pip", "--version")
    assert pip.startswith(f"pip {PIP_VERSION} from {prefix}/{SITE_PACKAGES}/pip ")

    activate = prefix / "etc/conda/activate.d/hello-tool.sh"
    out = run(prefix, "sh", "-c", f". {activate} && hello-tool", env={"CONDA_PREFIX": str(prefix)})
    assert out.splitlines() == ["hello-tool 2.0", f"HELLO_TOOL_HOME={prefix}/share/hello-tool"]
    assert (prefix / "share/libgreet/greeting.txt").is_file()
    # text prefix placeholders are rewritten to the new prefix
    assert str(prefix) in (prefix / "share/hello-tool/README").read_text()
    sysconfig = run(prefix, "python", "-c", "import sysconfig; print(sysconfig.get_config_var("
                                            "'prefix'))")
    assert sysconfig.strip() == str(prefix)

    second = tmp_path / "env2"  # warm package cache: files are linked from pkgs/
    install(records, second, pkgs)
    assert run(second, "python", "-c", "import sys; print(sys.prefix)").strip() == str(second)


@pytest.mark.slow
def test_unsatisfiable_through_a_dependency(channel: Path, tmp_path: Path) -> None:
    from rattler.exceptions import SolverError

    with pytest.raises(SolverError) as err:
        solve([(channel / "conda-forge").as_uri()], [f"python {PY_XY}.*", "legacy-tool"],
              tmp_path / "repodata")
    assert "legacy-tool" in str(err.value) and f"python {LEGACY_TOOL_PYTHON}" in str(err.value)


@pytest.mark.slow
def test_served_over_http(channel: Path, tmp_path: Path) -> None:
    with serve(channel) as url:
        assert url.startswith("http://127.0.0.1:")
        records = solve([f"{url}/conda-forge", f"{url}/extra"], ["hello-tool", "extra-tool"],
                        tmp_path / "repodata")
    by_name = {r.name.normalized: r for r in records}
    assert set(by_name) == {"hello-tool", "libgreet", "extra-tool"}
    assert str(by_name["hello-tool"].version) == "2.0"  # the highest version wins
    assert by_name["extra-tool"].url == (f"{url}/extra/linux-64/"
                                         f"extra-tool-{EXTRA_TOOL_VERSION}-0.conda")
