"""A real Docker engine and a small python3 base image, for tests of docker_env projects.

Image registries can't be reached here, so the base image is a rootfs tarball put together from
this machine's own Debian packages (python3, bash, dash, coreutils and what they depend on) and
brought in with `docker import`. If no engine answers, a private dockerd runs on its own socket.
tests/DOCKER.md has the flags, the timings and what failed.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

# docker.io brings dockerd, containerd, runc and docker-init (tini); the client may be newer.
ENGINE_PACKAGES = ("docker.io",)
# What the base image is made of. They are on any Debian machine already, apart from bash.
IMAGE_PACKAGES = ("python3", "bash", "dash", "coreutils")
# No iptables, no forwarding, no bridge: the private engine changes nothing in the host's
# network setup. Containers get `none` networking by default and `--network host` works.
NETWORK_FLAGS = ("--iptables=false", "--ip6tables=false", "--ip-forward=false",
                 "--ip-masq=false", "--bridge=none")
# overlay2 is much faster (a vfs container copies the whole image); vfs runs anywhere.
STORAGE_DRIVERS = ("overlay2", "vfs")
SYSTEM_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_TAG = "projectrun-test/python:3"
# Bump when the way the rootfs is built changes, so every cached tarball gets rebuilt.
ROOTFS_FORMAT = "1"
ROOTFS_LABEL = "projectrun.test.rootfs"
# Not needed in a test image: this cuts about a third of the size.
_SKIP_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/",
                  "usr/share/lintian/", "usr/share/bug/")


class EngineError(RuntimeError):
    """The engine could not start, or the base image could not be made."""


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- packages -----------------------------------------------------------------------------


def _missing(packages: Sequence[str]) -> list[str]:
    out = _run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages]).stdout
    have = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in have]


def ensure_packages(extra: Sequence[str] = ()) -> None:
    """apt-get install what the engine and the base image need; quiet, and a no-op when present.

    The project's own files must install what its tests use: a new machine has only a client.
    """
    missing = _missing([*ENGINE_PACKAGES, *IMAGE_PACKAGES, *extra])
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"need root to apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=300", *missing]
    result = _run(install, env=env)
    if result.returncode != 0:  # no lists yet, or old ones
        _run(["apt-get", "update", "-qq"], env=env)
        result = _run(install, env=env)
    if result.returncode != 0:
        raise EngineError(f"apt-get install {' '.join(missing)} failed:\n"
                          + _tail(result.stdout + result.stderr))


# --- the engine ---------------------------------------------------------------------------


def _answers(host: str, timeout: float = 3.0) -> bool:
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


@dataclass
class Engine:
    """A Docker engine for tests: ``host`` is the DOCKER_HOST for clients and child processes.

    ``process`` is None for an engine that was already running: ``stop()`` leaves that one be.
    """

    host: str
    storage_driver: str
    process: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None  # private engine: its socket and exec-root, removed by stop()
    data_root: Path | None = None
    log: Path | None = None

    @property
    def private(self) -> bool:
        return self.process is not None

    def env(self) -> dict[str, str]:
        """What a child process (the docker CLI, mlflow) needs in its environment."""
        return {"DOCKER_HOST": self.host}

    def client(self, timeout: float = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def log_tail(self, lines: int = 25) -> str:
        """The end of dockerd's log without the grpc chatter that buries the real error."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").split("=== dockerd ")[-1]
        kept = [line for line in text.splitlines() if "module=grpc" not in line]
        return _tail("\n".join(kept), lines)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, as dockerd expects (it stops its containers and containerd), then clean up.

        Idempotent. Past ``timeout``, SIGKILL the process group we started. dockerd leaves its
        netns/default bind mount behind even after a clean stop, and one that failed to start
        leaves the bind mount of its data-root: both are unmounted here.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Another dockerd holds this root when ours failed on its pidfile: leave its things be.
        data_root = self.data_root
        if data_root is not None and _pidfile_alive(data_root.parent / "docker.pid"):
            data_root = None
        _kill_leftovers(self.run_dir, data_root)
        if self.run_dir is not None:
            _unmount_under(self.run_dir)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if data_root is not None:
            _unmount_under(data_root)


def _kill_leftovers(run_dir: Path | None, data_root: Path | None) -> None:
    """After dockerd died unclean: SIGKILL its containers, containerd and shims, by pid.

    containerd and the shims run in process groups of their own, so killing dockerd's leaves
    them. Ours are found by our run_dir in their command line and our container ids in their
    cgroup. A clean stop leaves none of these and this finds nothing.
    """
    ids = set()
    if data_root is not None and (data_root / "containers").is_dir():
        ids = {p.name for p in (data_root / "containers").iterdir()}
    marker = str(run_dir) if run_dir is not None else None
    victims = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroup = (proc / "cgroup").read_text() if ids else ""
        except OSError:
            continue
        if (marker and marker in cmdline) or any(i in cgroup for i in ids):
            victims.append(int(proc.name))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victims and time.monotonic() < deadline:
        victims = [pid for pid in victims if Path(f"/proc/{pid}").exists()
                   and "\nState:\tZ" not in _read(Path(f"/proc/{pid}/status"))]
        time.sleep(0.05)
    for cid in ids:  # a container killed so leaves its (empty) cgroups; rmdir spares a busy one
        for cgroup_dir in (*Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"),
                           Path("/sys/fs/cgroup/docker", cid)):
            with contextlib.suppress(OSError):
                cgroup_dir.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _pidfile_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _unmount_under(path: Path) -> None:
    """Unmount ``path`` and all below it, deepest first."""
    top = str(path.resolve())
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    # /proc/self/mounts writes a space in a path as \040
    targets = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    for target in sorted((t for t in targets if t == top or t.startswith(top + "/")), reverse=True):
        _run(["umount", "-l", target])


def _start_dockerd(root: Path, driver: str, timeout: float) -> Engine:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError("no dockerd on PATH: call ensure_packages() first")
    root.mkdir(parents=True, exist_ok=True)
    # A unix socket path has at most 107 bytes: pytest's tmp dirs can be longer than that.
    run_dir = Path(tempfile.mkdtemp(prefix="prdocker-", dir="/tmp"))
    host = f"unix://{run_dir / 'docker.sock'}"
    cmd = [dockerd, "--host", host, "--data-root", str(root / "data"),
           "--exec-root", str(run_dir / "exec"),
           # in root, beside the data: a second dockerd on the same data-root refuses to start
           "--pidfile", str(root / "docker.pid"),
           "--storage-driver", driver, *NETWORK_FLAGS]
    if Path("/run/containerd/containerd.sock").exists():
        # dockerd then uses that containerd instead of starting its own: keep out of its way
        ns = f"projectrun-{run_dir.name}"
        cmd += ["--containerd-namespace", ns, "--containerd-plugins-namespace", ns + "-plugins"]
    log = root / "dockerd.log"
    with log.open("ab") as out:
        out.write(f"=== dockerd {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(host=host, storage_driver=driver, process=proc, run_dir=run_dir,
                    data_root=root / "data", log=log)
    deadline = time.monotonic() + timeout
    while not _answers(host, timeout=2):
        if proc.poll() is not None:
            engine.stop()
            raise EngineError(f"dockerd --storage-driver {driver} exited with {proc.returncode}:"
                              f"\n{engine.log_tail()}")
        if time.monotonic() > deadline:
            engine.stop()
            raise EngineError(f"dockerd --storage-driver {driver} did not answer within "
                              f"{timeout:.0f}s:\n{engine.log_tail()}")
        time.sleep(0.1)
    atexit.register(engine.stop)  # a session that dies between start and stop leaves no daemon
    return engine


def start_engine(root: Path, *, reuse: bool = True, timeout: float = 60) -> Engine:
    """An engine that answers: DOCKER_HOST's or the system one if ``reuse``, else a private one.

    The private dockerd keeps its data under ``root`` (pass a lasting directory to keep images
    between sessions) and its socket in a short-named dir under /tmp. It tries overlay2, then vfs.
    """
    if reuse:
        for host in filter(None, (os.environ.get("DOCKER_HOST"), SYSTEM_SOCKET)):
            if _answers(host):
                with contextlib.closing(docker.DockerClient(base_url=host)) as client:
                    driver = str(client.info().get("Driver", ""))
                return Engine(host=host, storage_driver=driver)
    if Path("/sys/class/net/docker0").exists():
        # dockerd --bridge=none deletes an existing docker0: that may be another engine's
        raise EngineError("a docker0 bridge exists (another Docker engine's?), and a private "
                          "dockerd with --bridge=none would delete it; point DOCKER_HOST at that "
                          "engine, or remove a stale bridge with `ip link delete docker0`")
    failures = []
    for driver in STORAGE_DRIVERS:
        try:
            return _start_dockerd(root.resolve(), driver, timeout)
        except EngineError as exc:
            failures.append(str(exc))
    raise EngineError("no private dockerd would start:\n\n" + "\n\n".join(failures))


@contextlib.contextmanager
def running_engine(root: Path, *, reuse: bool = True, timeout: float = 60) -> Iterator[Engine]:
    """``start_engine`` for a ``with`` block: the engine stops at its end if we started it."""
    engine = start_engine(root, reuse=reuse, timeout=timeout)
    try:
        yield engine
    finally:
        engine.stop()


# --- the base image -----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the rootfs tarball lasts between test sessions on one machine."""
    env = os.environ.get("PROJECTRUN_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "projectrun-tests"


def _split_deps(field: str) -> list[list[str]]:
    groups = []
    for group in field.split(","):
        names = [alt.split("(")[0].strip().split(":")[0] for alt in group.split("|")]
        if any(names):
            groups.append([n for n in names if n])
    return groups


def package_closure(packages: Sequence[str] = IMAGE_PACKAGES) -> dict[str, str]:
    """The installed packages that ``packages`` need (Pre-Depends, Depends), with versions.

    One dpkg-query for all, so it costs a fraction of a second: the cache key is made from it.
    """
    native = _run(["dpkg", "--print-architecture"]).stdout.strip()
    fmt = ("${binary:Package}\t${Package}\t${db:Status-Status}\t${Version}\t${Provides}\t"
           "${Pre-Depends}, ${Depends}\n")
    out = _run(["dpkg-query", "-W", f"-f={fmt}"]).stdout
    real: dict[str, tuple[str, str, list[list[str]]]] = {}
    provided: dict[str, str] = {}
    for line in out.splitlines():
        binary, name, status, version, provides, deps = line.split("\t")
        if status != "installed":
            continue
        if name in real and not binary.endswith(":" + native):
            continue  # another architecture's copy
        real[name] = (binary, version, _split_deps(deps))
        for virtual in _split_deps(provides):
            provided.setdefault(virtual[0], name)
    closure: dict[str, str] = {}
    todo = list(packages)
    while todo:
        name = todo.pop()
        name = name if name in real else provided.get(name, name)
        if name not in real:
            raise EngineError(f"package {name} is not installed: call ensure_packages() first")
        binary, version, needs = real[name]
        if binary in closure:
            continue
        closure[binary] = version
        for alternatives in needs:
            chosen = next((a for a in alternatives if a in real or a in provided), None)
            if chosen is not None:
                todo.append(chosen)
    return closure


def _rootfs_entries(closure: dict[str, str]) -> dict[str, str]:
    """Path in the image -> path on this machine, for every file of the packages."""
    listed = _run(["dpkg-query", "-L", *closure]).stdout.splitlines()
    entries: dict[str, str] = {}
    py_dirs: dict[str, set[str]] = {}
    for path in listed:
        if not path.startswith("/") or path == "/.":
            continue
        # usrmerge: /lib/x is /usr/lib/x here, and is stored once, under its real name
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        arc = real.lstrip("/")
        if not arc or arc.startswith(_SKIP_PREFIXES) or not os.path.lexists(real):
            continue
        entries[arc] = real
        if real.endswith(".py"):
            py_dirs.setdefault(os.path.dirname(real), set()).add(os.path.basename(real)[:-3])
    # Byte code the host compiled at install time: each container would compile it again.
    for folder, modules in py_dirs.items():
        cache = os.path.join(folder, "__pycache__")
        if not os.path.isdir(cache):
            continue
        entries[cache.lstrip("/")] = cache
        for pyc in os.listdir(cache):
            if pyc.split(".")[0] in modules:
                entries[os.path.join(cache, pyc).lstrip("/")] = os.path.join(cache, pyc)
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # usrmerge's links
        if os.path.islink("/" + top):
            entries[top] = "/" + top
    return entries


def _add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, fileobj=io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
    tar.addfile(info)


def _write_rootfs(path: Path, closure: dict[str, str]) -> None:
    entries = _rootfs_entries(closure)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for arc in sorted(entries):  # a folder before what is in it
            tar.add(entries[arc], arcname=arc, recursive=False)
        for name, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("home", 0o755)):
            if name not in entries:
                _add_dir(tar, name, mode)
        _add_text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        _add_text(tar, "etc/group", "root:x:0:\nnogroup:x:65534:\n")
        _add_text(tar, "etc/projectrun-test-rootfs.json",
                  json.dumps({"format": ROOTFS_FORMAT, "packages": closure}, indent=1) + "\n")


def rootfs_tarball(cache_dir: Path, packages: Sequence[str] = IMAGE_PACKAGES) -> Path:
    """The base image's rootfs tarball, built once and kept in ``cache_dir``.

    Keyed by the exact package versions: an upgraded python3 on the host makes a new one. It is
    written to a temp file and renamed, so a session never sees half of one.
    """
    closure = package_closure(packages)
    key_src = json.dumps([ROOTFS_FORMAT, platform.machine(), sorted(closure.items())])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    target = cache_dir / f"rootfs-{key}.tar"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_rootfs(Path(tmp), closure)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in cache_dir.glob("rootfs-*.tar"):  # made from older package versions
        if old != target:
            old.unlink(missing_ok=True)
    return target


def base_image(engine: Engine, cache_dir: Path, tag: str = DEFAULT_TAG,
               packages: Sequence[str] = IMAGE_PACKAGES) -> str:
    """``tag`` in ``engine``: /bin/sh, bash and Debian's python3, imported from the tarball.

    Nothing happens when the engine has that tag from the same tarball already (a reused or
    lasting engine); the image's label tells which tarball it came from.
    """
    tarball = rootfs_tarball(cache_dir, packages)
    with contextlib.closing(engine.client(timeout=600)) as client:
        try:
            labels = client.images.get(tag).labels or {}
            if labels.get(ROOTFS_LABEL) == tarball.name:
                return tag
        except docker.errors.ImageNotFound:
            pass
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:
            repository, version = tag, "latest"
        client.api.import_image(src=str(tarball), repository=repository, tag=version,
                                changes=[f"LABEL {ROOTFS_LABEL}={tarball.name}"])
    return tag
