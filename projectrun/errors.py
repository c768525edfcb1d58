"""User-facing errors: each carries the one line a user sees and the exit code the CLI uses."""
from __future__ import annotations

EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


class ProjectRunError(Exception):
    """Base for every error the CLI reports as one line instead of a traceback."""

    exit_code: int = EXIT_USAGE


class UsageError(ProjectRunError):
    """A flag or argument is wrong."""


class SpecError(ProjectRunError):
    """An MLproject (or env file) is invalid; ``problems`` holds every ``file:line: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ParameterError(ProjectRunError):
    """A ``-P`` value is missing, mistyped or unknown."""


class SourceError(ProjectRunError):
    """The project URI cannot be resolved to a directory."""


class NetworkError(SourceError):
    """A remote could not be reached; retrying later may work."""

    exit_code = EXIT_RUN_FAILED


class EnvBuildError(ProjectRunError):
    """An environment could not be built; the run that needed it is marked FAILED."""

    exit_code = EXIT_RUN_FAILED


class TrackingError(ProjectRunError):
    """The tracking store refused or could not be reached."""

    exit_code = EXIT_RUN_FAILED


class RunFailed(ProjectRunError):
    """The entry point exited non-zero."""

    exit_code = EXIT_RUN_FAILED


class RunInterrupted(ProjectRunError):
    """The run was stopped by a signal; exit code is 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
