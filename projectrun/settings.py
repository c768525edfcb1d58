"""projectrun's settings from the environment, parsed and checked in one place.

Every ``PROJECTRUN_*`` variable and the MLflow variables that choose the store and experiment
are read here into one frozen object; modules ask ``current()`` instead of ``os.environ``. A bad
value is one usage line at the first use (nothing is read at import, so it never breaks an
import). The object is re-parsed only when one of these variables changes, so a library caller
or a test that sets one sees it.

Read elsewhere on purpose, because they belong to another tool's contract: the environment
handed to children (the entry point, git, uv, pip), MLflow's client settings for a server
(stores/restconfig.py reads them as MLflow's client does), conda's own variables and .condarc
(envs/condachannels.py), DOCKER_HOST, the host variables a docker_env copies, and the secret
values redact.py masks.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from projectrun.errors import UsageError

HOME = "PROJECTRUN_HOME"
KILL_GRACE = "PROJECTRUN_KILL_GRACE"
TRACKING_RETRY = "PROJECTRUN_TRACKING_RETRY"
TRACKING_PATH = "PROJECTRUN_TRACKING"
INSTALLER = "PROJECTRUN_INSTALLER"
PYTHON_DOWNLOADS = "PROJECTRUN_PYTHON_DOWNLOADS"
#: MLflow's own variable for its REST client; honoured by projectrun's REST path too
HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
INSTALLERS = ("uv", "pip")
DEFAULT_KILL_GRACE = 10.0
DEFAULT_TRACKING_RETRY = 60.0
#: shorter than MLflow's 120 s: a stalled server is retried (and finally spooled) sooner
DEFAULT_HTTP_TIMEOUT = 30.0
_NAMES = (HOME, KILL_GRACE, TRACKING_RETRY, TRACKING_PATH, INSTALLER, PYTHON_DOWNLOADS, HTTP_TIMEOUT,
          "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def _seconds(env: Mapping[str, str], name: str, default: float, hint: str, *,
             forever: bool = False) -> float:
    """A number of seconds >= 0; ``inf`` only where waiting forever is a choice (``forever``)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf") or (forever and value == float("inf"))):  # nan: never
        raise UsageError(f"{name}={text}: {hint}")
    return value


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _seconds(env, name, default, "give the request timeout in seconds, e.g. 30")
    if value == 0:
        raise UsageError(f"{name}=0: give the request timeout in seconds, e.g. 30 (0 would fail "
                         f"every request)")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the environment asks of this process; see README, "Environment variables"."""

    #: cache root (``PROJECTRUN_HOME``); None: the platform's user cache dir
    home: Path | None = None
    #: ``MLFLOW_TRACKING_URI`` as given (tracking.absolute_tracking_uri makes it absolute)
    tracking_uri: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    #: seconds between forwarding a signal to the entry point and SIGKILL of its group
    kill_grace: float = DEFAULT_KILL_GRACE
    #: seconds to keep retrying writes while the store is unreachable or locked
    tracking_retry: float = DEFAULT_TRACKING_RETRY
    #: seconds one request to a tracking server may take before it counts as unreachable
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    #: ``PROJECTRUN_TRACKING=client``: always go through MLflow's client (no fast store)
    client_only: bool = False
    #: ``PROJECTRUN_INSTALLER``: uv or pip; None picks uv when it is there
    installer: str | None = None
    #: ``PROJECTRUN_PYTHON_DOWNLOADS=1``: uv may download a python the machine lacks
    python_downloads: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse and check; raises UsageError naming the variable and what to write instead."""
        installer = env.get(INSTALLER, "").strip().lower() or None
        if installer not in (None, *INSTALLERS):
            raise UsageError(f"{INSTALLER}={installer}: must be one of {', '.join(INSTALLERS)}")
        home = env.get(HOME)
        return cls(
            home=Path(home).expanduser().absolute() if home else None,
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            experiment_name=env.get("MLFLOW_EXPERIMENT_NAME") or None,
            experiment_id=env.get("MLFLOW_EXPERIMENT_ID") or None,
            kill_grace=_seconds(env, KILL_GRACE, DEFAULT_KILL_GRACE,
                                f"give the grace period in seconds, e.g. {KILL_GRACE}=10 (0 kills "
                                f"at once)"),
            tracking_retry=_seconds(env, TRACKING_RETRY, DEFAULT_TRACKING_RETRY,
                                    "give a number of seconds (e.g. 60, or 0 for no retries)",
                                    forever=True),
            http_timeout=_positive(env, HTTP_TIMEOUT, DEFAULT_HTTP_TIMEOUT),
            client_only=env.get(TRACKING_PATH, "").lower() == "client",
            installer=installer,
            python_downloads=env.get(PYTHON_DOWNLOADS) == "1",
        )


_cached: tuple[tuple[str | None, ...], Settings] | None = None


def current() -> Settings:
    """The settings for now: parsed once, again only if one of their variables changed."""
    global _cached
    snapshot = tuple(os.environ.get(name) for name in _NAMES)
    if _cached is None or _cached[0] != snapshot:
        _cached = (snapshot, Settings.from_env(os.environ))
    return _cached[1]
