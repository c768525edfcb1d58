"""Git URLs and running git, for gitsource.

Git always runs with an argument list, without terminal prompts (a bad token fails at once
instead of hanging a sweep), in the C locale (so its stderr can be classified) and with an
explicit protocol allow-list, so command-running transports such as ``ext::`` stay disabled.
"""
from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from pathlib import Path

from projectrun.errors import NetworkError, SourceError
from projectrun.gitinfo import strip_credentials

#: transports git may use for the project itself; ``ext`` (runs commands) is never on it
PROTOCOLS = ("https", "http", "ssh", "git", "file")
#: submodules of a fetched project are untrusted input: no local-file clones (CVE-2022-39253)
SUBMODULE_PROTOCOLS = ("https", "http", "ssh", "git")
_URL_SCHEMES = {"https", "http", "ssh", "git", "git+ssh", "ssh+git", "file"}
# Git variables a user may rely on; the rest (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE ... exported
# when projectrun runs inside a git hook) would point git at the wrong repository.
_KEEP_GIT_VARS = {
    "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY", "GIT_ASKPASS", "GIT_HTTP_PROXY_AUTHMETHOD",
    "GIT_PROXY_COMMAND", "GIT_CONFIG_COUNT", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM", "GIT_CURL_VERBOSE",
}
# stderr fragments (lower case, C locale) -> error class; checked in this order, because ssh
# appends "make sure ... the repository exists" to every failure, including DNS ones.
_NETWORK = ("could not resolve host", "temporary failure in name resolution",
            "connection refused", "couldn't connect to server", "failed to connect",
            "network is unreachable", "no route to host", "connection timed out",
            "operation timed out", "connection reset", "unable to connect")
_AUTH = ("authentication failed", "could not read username", "could not read password",
         "terminal prompts disabled", "permission denied", "returned error: 401",
         "returned error: 403", "host key verification failed")
_NOT_FOUND = ("repository not found", "does not appear to be a git repository",
              "not exported", "returned error: 404", "no such repository")


# --------------------------------------------------------------------------- URLs


def is_git_url(uri: str) -> bool:
    """True for URIs the git layer handles (https, http, ssh, git, scp-like ``user@host:path``,
    ``file://`` of a git repository, and ``x::`` transports, which fetch() refuses with a clear
    message); False for local paths, which run in place."""
    base = uri.strip("'\"").partition("#")[0]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", base):
        return True
    scheme = urllib.parse.urlparse(base).scheme.lower()
    if scheme == "file":
        parsed = urllib.parse.urlparse(base)
        path = Path(urllib.parse.unquote(parsed.netloc + parsed.path))
        return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())
    if scheme in ("http", "https") and base.lower().endswith(".zip"):
        return False  # MLflow downloads and unzips these
    if scheme in _URL_SCHEMES:
        return True
    scp = re.match(r"^(?:([^@/:\s]+)@)?([^@/:\s]+):(?!//)", base)
    return bool(scp and (scp.group(1) or "." in scp.group(2)) and not os.path.exists(base))


def check_url(url: str) -> None:
    transport = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)::", url)
    if transport:
        name = transport.group(1)
        why = "runs arbitrary commands" if name.lower() == "ext" else "is not supported"
        raise SourceError(f"{url}: the git transport '{name}::' {why}; use https://, ssh://, "
                          "git@host:path, git:// or file://")
    if url.startswith("-"):
        raise SourceError(f"{url}: not a git URL")
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if len(scheme) > 1 and "://" in url and scheme not in _URL_SCHEMES:
        raise SourceError(f"{url}: unsupported URL scheme '{scheme}://'; use https://, ssh://, "
                          "git@host:path, git:// or file://")


# --------------------------------------------------------------------------- running git


def git_env(protocols: tuple[str, ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in _KEEP_GIT_VARS
           or k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_", "GIT_TRACE"))}
    allowed = [p for p in protocols  # a user's own allow-list can only narrow ours
               if p in os.environ.get("GIT_ALLOW_PROTOCOL", ":".join(protocols)).split(":")]
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=":".join(allowed),
               LC_ALL="C", LANGUAGE="C")
    return env


def check_reachable(url: str) -> None:
    """A ``file://`` remote whose directory is gone is unreachable, like a host that is down
    (git says "does not appear to be a git repository", which reads as a wrong URL)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file" and not Path(urllib.parse.unquote(parsed.netloc + parsed.path)).exists():
        raise NetworkError(f"cannot reach {strip_credentials(url)} (no such directory any more)")


def git(args: list[str], cwd: Path | None = None, *, url: str | None = None,
         protocols: tuple[str, ...] = PROTOCOLS, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git; on failure raise a one-line SourceError/NetworkError naming the (stripped) URL."""
    try:
        proc = subprocess.run(["git", *args], check=False, cwd=cwd, env=git_env(protocols), text=True,
                              stdin=subprocess.DEVNULL, capture_output=True)
    except FileNotFoundError:
        raise SourceError("git is not installed; install git to run projects from git URLs") from None
    if check and proc.returncode != 0:
        raise git_error(proc.stderr, url, args[0])
    return proc


def git_error(stderr: str, url: str | None, command: str) -> SourceError:
    safe = strip_credentials(url) if url else "git"
    if url:
        stderr = stderr.replace(url, safe)
    text = stderr.lower()
    for pattern in _NETWORK:
        if pattern in text:
            return NetworkError(f"cannot reach {safe} ({pattern}); check the network and try again")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    detail = re.sub(r"^(fatal|error): ", "", fatal)
    if any(p in text for p in _AUTH):
        return SourceError(f"{safe}: authentication failed ({detail}); the repository may be private "
                           "or may not exist - check the URL and your git credentials")
    if any(p in text for p in _NOT_FOUND):
        return SourceError(f"{safe}: repository not found ({detail})")
    return SourceError(f"{safe}: git {command} failed: {detail or 'no message from git'}")


def rev(repo: Path, name: str) -> str | None:
    proc = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
                repo, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def refs(repo: Path, prefix: str, sort: str) -> list[str]:
    out = git(["for-each-ref", f"--sort={sort}", "--format=%(refname:lstrip=2)", prefix], repo).stdout
    return out.split()
