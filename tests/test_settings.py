"""Settings come from the environment through one object: defaults, checks, and re-reads."""
from __future__ import annotations

from pathlib import Path

import pytest

from projectrun import settings
from projectrun.errors import UsageError
from projectrun.settings import Settings


def test_defaults_when_nothing_is_set() -> None:
    got = Settings.from_env({})
    assert got == Settings()
    assert (got.kill_grace, got.tracking_retry, got.installer, got.home) == (10.0, 60.0, None, None)
    assert got.http_timeout == 30.0


def test_values_are_parsed() -> None:
    got = Settings.from_env({"PROJECTRUN_HOME": "~/pr", "PROJECTRUN_KILL_GRACE": " 2.5 ",
                             "PROJECTRUN_TRACKING_RETRY": "0", "PROJECTRUN_INSTALLER": "PIP",
                             "PROJECTRUN_TRACKING": "Client", "PROJECTRUN_PYTHON_DOWNLOADS": "1",
                             "MLFLOW_TRACKING_URI": "http://h:5000", "MLFLOW_EXPERIMENT_NAME": "e",
                             "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"})
    assert got.home == Path("~/pr").expanduser()
    assert (got.kill_grace, got.tracking_retry, got.installer) == (2.5, 0.0, "pip")
    assert got.client_only and got.python_downloads and got.http_timeout == 120.0
    assert (got.tracking_uri, got.experiment_name, got.experiment_id) == ("http://h:5000", "e", None)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("PROJECTRUN_KILL_GRACE", "soon", "give the grace period in seconds"),
    ("PROJECTRUN_KILL_GRACE", "-1", "give the grace period in seconds"),
    ("PROJECTRUN_KILL_GRACE", "inf", "give the grace period in seconds"),
    ("PROJECTRUN_TRACKING_RETRY", "nan", "give a number of seconds"),
    ("PROJECTRUN_TRACKING_RETRY", "-inf", "give a number of seconds"),
    ("PROJECTRUN_INSTALLER", "conda", "must be one of uv, pip"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "0", "give the request timeout in seconds"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "slow", "give the request timeout in seconds"),
])
def test_a_bad_value_is_one_usage_line_naming_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}=") and fragment in message and "\n" not in message
    assert info.value.exit_code == 2


def test_current_follows_a_changed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "3")
    first = settings.current()
    assert first.kill_grace == 3.0 and settings.current() is first  # parsed once
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "4")
    assert settings.current().kill_grace == 4.0
