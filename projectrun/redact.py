"""Keep credentials out of everything projectrun writes: tags, params, the run's log, messages.

What counts as a secret:
  * the user-info part of any URL (``https://user:token@host`` becomes ``https://host``), which
    also covers the git URL of the project and index URLs that installers print;
  * the values of MLflow's credential variables (``MLFLOW_TRACKING_PASSWORD``,
    ``MLFLOW_TRACKING_TOKEN``), of the variables named in ``PROJECTRUN_SECRET_VARS``
    (``NAME,NAME``: the user marks them secret), and of variables whose names say they hold one
    (``*_TOKEN``, ``*_PASSWORD``, ``*_SECRET``, ``*_API_KEY``, ``*_SECRET_ACCESS_KEY``...);
  * credentials registered while running (the password of the project's git URL).
Each value is replaced by ``***``. What the entry point prints is its own business and is kept.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Mapping

MARK_VAR = "PROJECTRUN_SECRET_VARS"
MASK = "***"
_ALWAYS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
#: names that say they hold a secret (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...)
_SECRET_SUFFIXES = ("TOKEN", "PASSWORD", "PASSWD", "SECRET", "APIKEY", "API_KEY", "ACCESS_KEY",
                    "PRIVATE_KEY", "CREDENTIAL", "CREDENTIALS")
_MIN_MARKED = 4  # values shorter than this would mask ordinary text
_MIN_GUESSED = 8
_registered: set[str] = set()
_lock = threading.Lock()


@functools.cache
def _userinfo() -> re.Pattern[str]:
    """``scheme://userinfo@`` (userinfo may itself hold an unencoded ``@``); compiled on first use,
    so importing this module costs nothing on the launch path."""
    return re.compile(r"\b([a-z][a-z0-9+.-]*://)(?:[^\s/?#@'\"]*@)+", re.IGNORECASE)


def register(value: str | None) -> None:
    """Treat ``value`` as a secret for the rest of this process."""
    if value and len(value) >= _MIN_MARKED:
        with _lock:
            _registered.add(value)


def register_url(url: str) -> None:
    """The credentials of a URL (``user:token`` -> token; a lone user-info is the token itself)."""
    match = re.match(r"^[a-z][a-z0-9+.-]*://([^/?#]*)@", url.strip("'\""), re.IGNORECASE)
    if not match:
        return
    user, sep, password = match.group(1).partition(":")
    register(password if sep else user)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value known now, longest first (so a value containing another goes first)."""
    env = os.environ if env is None else env
    marked = {n.strip() for n in env.get(MARK_VAR, "").replace(" ", ",").split(",") if n.strip()}
    found = {env[n] for n in (*_ALWAYS, *marked) if len(env.get(n, "")) >= _MIN_MARKED}
    found |= {v for n, v in env.items() if n.upper().endswith(_SECRET_SUFFIXES)
              and len(v) >= _MIN_GUESSED}
    with _lock:
        found |= _registered
    return sorted(found, key=len, reverse=True)


def text(value: str, secrets: list[str] | None = None) -> str:
    """``value`` with URL credentials stripped and every secret value masked."""
    out = _userinfo().sub(r"\1", value) if "@" in value and "://" in value else value
    for secret in secret_values() if secrets is None else secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def mapping(values: Mapping[str, str]) -> dict[str, str]:
    """A tags or params dict with each value passed through :func:`text`."""
    secrets = secret_values()
    return {k: text(v, secrets) for k, v in values.items()}


def writer(write: Callable[[str], None]) -> Callable[[str], None]:
    """Wrap a line writer so every line it gets is redacted (secrets read once, now)."""
    secrets = secret_values()

    def redacted(line: str) -> None:
        write(text(line, secrets))

    return redacted
