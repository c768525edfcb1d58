"""Credentials never leak into what projectrun writes: tags (mlflow.source.name too), params, the
run's log, error messages, `sources list`, the cache's files and names.

A real git repository is served over http by a tiny server that demands basic auth; runs go to
a real sqlite store. After each launch every byte projectrun could have written (the store, the
artifacts, the cache, stdout/stderr) is searched for each secret. What the entry point prints is
its own business: it prints only digests here, so any hit is projectrun's.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CliRunner, client_for
from gitrepos import commit, git

TOKEN = "ghp_tok3n-Abc123xyz"  # the git URL's password
PASSWORD = "mlflow-pass-w0rd"  # MLFLOW_TRACKING_PASSWORD
BEARER = "mlflow-bearer-t0ken"  # MLFLOW_TRACKING_TOKEN
MARKED = "marked-secret-value"  # a variable the user marks secret (PROJECTRUN_SECRET_VARS)
NAMED = "hf_named-by-its-name"  # HF_TOKEN: secret by its name
SECRETS = (TOKEN, PASSWORD, BEARER, MARKED, NAMED)
SECRET_ENV = {"MLFLOW_TRACKING_PASSWORD": PASSWORD, "MLFLOW_TRACKING_TOKEN": BEARER,
              "MY_DB_DSN": MARKED, "PROJECTRUN_SECRET_VARS": "MY_DB_DSN", "HF_TOKEN": NAMED}

#: prints digests of what it got (so the test knows the child had the values) and nothing else
SHOW = textwrap.dedent("""\
    import hashlib, json, os, sys
    digest = lambda v: hashlib.sha256(v.encode()).hexdigest()
    names = ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MY_DB_DSN", "HF_TOKEN"]
    print("GOT " + json.dumps({n: digest(os.environ.get(n, "")) for n in names}
                              | {"note": digest(sys.argv[1])}))
    """)


@dataclass
class AuthRepo:
    url: str  # http://user:TOKEN@127.0.0.1:PORT/repo.git
    bare: Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    expected = ""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_repo(tmp_path: Path) -> Iterator[AuthRepo]:
    """A bare repository with a project in sub/proj, served over git's dumb http protocol."""
    work = tmp_path / "src"
    git("init", "-q", str(work))
    mlproject = textwrap.dedent("""\
        name: private
        entry_points:
          main:
            parameters:
              note: {type: string, default: "-"}
            command: "python show.py {note}"
        """)
    commit(work, {"sub/proj/MLproject": mlproject, "sub/proj/show.py": SHOW}, "project")
    srv = tmp_path / "srv"
    bare = srv / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("update-server-info", cwd=bare)
    handler = type("Handler", (_Handler,), {
        "expected": "Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode()})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(srv)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield AuthRepo(f"http://alice:{TOKEN}@127.0.0.1:{server.server_address[1]}/repo.git", bare)
    finally:
        server.shutdown()
        server.server_close()


def leaks(*roots: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Where any secret occurs: file contents and names under ``roots``, and ``texts``."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if any(s in name for s in SECRETS):
                    found.append(f"name {path}")
                if name in filenames and path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    for i, text in enumerate(texts):
        found += [f"text {i}: {s}" for s in SECRETS if s in text]
    return found


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_git_url_token_and_secret_variables_leak_nowhere(
        cli: CliRunner, workdir: Path, tmp_path: Path, auth_repo: AuthRepo) -> None:
    home = tmp_path / "home"
    env = {"PROJECTRUN_HOME": str(home), **SECRET_ENV}
    uri = f"{auth_repo.url}#sub/proj"
    outputs = []
    for attempt in range(2):  # a clone, then a fetch into the mirror
        res = cli(uri, "-P", f"note={MARKED}", "--verbose", "--experiment-name", "sec", env=env)
        assert res.returncode == 0, res.stderr
        outputs += [res.stdout, res.stderr]
        got = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("GOT "))[4:])
        assert got == {"MLFLOW_TRACKING_PASSWORD": _digest(PASSWORD), "MLFLOW_TRACKING_TOKEN":
                       _digest(BEARER), "MY_DB_DSN": _digest(MARKED), "HF_TOKEN": _digest(NAMED),
                       "note": _digest(MARKED)}  # the child got every real value
    dry = cli(uri, "--dry-run", "--json", env=env)
    listed = cli("sources", "list", env=env)
    listed_json = cli("sources", "list", "--json", env=env)
    outputs += [dry.stdout, dry.stderr, listed.stdout, listed_json.stdout]

    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sec").experiment_id
    runs = client.search_runs([exp])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    tags = runs[0].data.tags
    assert tags["mlflow.source.name"] == uri.replace(f"alice:{TOKEN}@", "")
    assert tags["mlflow.source.git.repoURL"] == auth_repo.url.replace(f"alice:{TOKEN}@", "")
    assert runs[0].data.params == {"note": "***"}
    log = Path(client.download_artifacts(runs[0].info.run_id, "projectrun/output.log",
                                         str(tmp_path / "dl")))
    assert "GOT " in log.read_text()
    texts = tuple(outputs) + tuple(json.dumps(r.data.tags) + json.dumps(r.data.params) for r in runs)
    assert leaks(workdir, home, tmp_path / "dl", texts=texts) == []


def test_failures_name_the_url_without_its_token(cli: CliRunner, workdir: Path, tmp_path: Path,
                                                 auth_repo: AuthRepo) -> None:
    env = {"PROJECTRUN_HOME": str(tmp_path / "home"), **SECRET_ENV}
    wrong = auth_repo.url.replace(TOKEN, f"{TOKEN}-wrong")
    failures = [
        cli(wrong, env=env),  # authentication fails
        cli(f"{auth_repo.url}#nope", env=env),  # no such subdirectory
        cli(auth_repo.url, "-v", "no-such-version", env=env),  # unknown version
        cli(f"{auth_repo.url}#sub/proj", "-e", "missing-entry", env=env),
        cli(f"{auth_repo.url}#sub/proj", "-P", f"{TOKEN}", env=env),  # -P without '='
        cli(f"{auth_repo.url}#sub/proj", env={**env, "MLFLOW_TRACKING_URI":  # server down
                                              f"http://bob:{BEARER}@127.0.0.1:9"}),
    ]
    for res in failures:
        assert res.returncode in (1, 2), res.stderr
        assert res.stderr.count("projectrun: error:") >= 1 and "Traceback" not in res.stderr
    assert "127.0.0.1" in failures[0].stderr and "authentication failed" in failures[0].stderr
    assert "http://127.0.0.1:9 is not reachable" in failures[-1].stderr
    assert leaks(workdir, tmp_path / "home",
                 texts=tuple(r.stderr + r.stdout for r in failures)) == []


def test_installer_index_credentials_stay_out_of_messages_and_the_log(
        cli: CliRunner, workdir: Path, tmp_path: Path, auth_repo: AuthRepo) -> None:
    """A private index in the requirements (``--index-url https://user:token@...``): --verbose
    shows each installer command, and a failed build writes its error into the run's log."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "MLproject").write_text("name: p\npython_env: python_env.yaml\n"
                                       "entry_points:\n  main:\n    command: python -V\n")
    index = auth_repo.url.replace("/repo.git", "/simple")
    (project / "python_env.yaml").write_text(
        f"python: \"3.11\"\ndependencies:\n  - --index-url {index}\n  - no-such-package-xyz==1.0\n")
    res = cli(str(project), "--verbose", env={"PROJECTRUN_HOME": str(tmp_path / "home"),
                                               **SECRET_ENV})
    assert res.returncode == 1, res.stderr
    assert "installing dependencies failed" in res.stderr and "--index-url" in res.stderr
    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FAILED"
    log = client.download_artifacts(run.info.run_id, "projectrun/output.log", str(tmp_path / "dl"))
    assert "installing dependencies failed" in Path(log).read_text()
    assert leaks(workdir, tmp_path / "dl", texts=(res.stderr, res.stdout)) == []


def test_redact_rules() -> None:
    from projectrun import redact
    from projectrun.gitinfo import strip_credentials

    assert strip_credentials("https://u:p@ss@host/r.git#sub@x") == "https://host/r.git#sub@x"
    assert redact.text("fatal: 'https://u:p@ss@h/r' and ssh://git@h/r and git@h:o/r") == \
        "fatal: 'https://h/r' and ssh://h/r and git@h:o/r"
    secrets = redact.secret_values({"AWS_SECRET_ACCESS_KEY": "abcdefgh12", "PATH": "/usr/bin:/b",
                                    "X_TOKEN": "short", "PROJECTRUN_SECRET_VARS": "DSN, OTHER",
                                    "DSN": "pg://x", "MLFLOW_TRACKING_PASSWORD": "pw12"})
    assert sorted(secrets) == sorted(["abcdefgh12", "pg://x", "pw12"])


def test_git_never_sees_a_prompt_for_the_token(auth_repo: AuthRepo, tmp_path: Path) -> None:
    """Sanity check of the fixture: without the token the server refuses git."""
    anonymous = auth_repo.url.replace(f"alice:{TOKEN}@", "")
    res = subprocess.run(["git", "ls-remote", anonymous], capture_output=True, text=True,
                         env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}, timeout=60, check=False)
    assert res.returncode != 0
    ok = subprocess.run(["git", "ls-remote", auth_repo.url], capture_output=True, text=True,
                        timeout=60, check=False)
    assert ok.returncode == 0 and "refs/heads/main" in ok.stdout


def test_sweep_trials_created_ahead_carry_no_secret(cli: CliRunner, workdir: Path, tmp_path: Path,
                                                    auth_repo: AuthRepo) -> None:
    """A sweep creates its trials' runs before they start: their tags and params are masked too."""
    env = {"PROJECTRUN_HOME": str(tmp_path / "home"), **SECRET_ENV}
    sweep = tmp_path / "sweeps" / "sweep.yaml"  # the user's file holds them; nothing else may
    sweep.parent.mkdir()
    sweep.write_text(f"project: '{auth_repo.url}#sub/proj'\nexperiment: sec-sweep\n"
                     f"parameters:\n  note: ['{MARKED}', plain]\n")
    res = cli("sweep", str(sweep), "-j", "2", env=env)
    assert res.returncode == 0, res.stderr
    again = cli("sweep", str(sweep), "--resume", env=env)  # values come from the file, not "***"
    assert again.returncode == 0 and "2 of 2 trial(s) already finished" in again.stderr, again.stderr
    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sec-sweep").experiment_id
    runs = client.search_runs([exp])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # parent + 2 trials
    assert sorted(r.data.params.get("note", "") for r in runs if "note" in r.data.params) == [
        "***", "plain"]
    texts = (res.stdout, res.stderr, *(json.dumps(r.data.tags) + json.dumps(r.data.params)
                                       for r in runs))
    assert leaks(workdir, tmp_path / "home", texts=texts) == []
