"""The ``projectrun`` command group and ``main``: the one place that maps errors to exit codes."""
from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import click

from projectrun import __version__, redact
from projectrun.cli import maintenance, runcmd, sweepcmd
from projectrun.errors import EXIT_USAGE, ProjectRunError
from projectrun.interrupts import Terminated


class DefaultRunGroup(click.Group):
    """``projectrun URI ...`` means ``projectrun run URI ...``: the first word that is not a
    subcommand or an option is taken as the project URI."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if arg == "--debug":  # the only option of the group itself that can precede
                continue
            if arg in ("--help", "-h", "--version") or arg in self.commands:
                break
            args = [*args[:i], "run", *args[i:]]  # a URI, or run's options before the URI
            break
        return super().parse_args(ctx, args)


@click.group(cls=DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=False)
@click.version_option(__version__, prog_name="projectrun")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run MLflow Projects: validated, cached, recorded.

    \b
      projectrun . -P alpha=0.5 --experiment-name demo    run the main entry point
      projectrun validate .                               check an MLproject
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _command in (runcmd.run_cmd, runcmd.validate_cmd, sweepcmd.sweep_cmd, maintenance.envs_group,
                 maintenance.lock_cmd, maintenance.runs_group, maintenance.sources_group,
                 maintenance.cache_group):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit code of ``_main``, guarded against rattler's crash at exit."""
    code = _main(argv)
    if "rattler" in sys.modules and argv is None:
        # A process that used rattler's gateway can die in interpreter finalisation (exit 134 or
        # 139 after the work was done, a few % of runs): collect its objects, flush, and leave
        # without finalising.
        import gc
        import os

        gc.collect()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI, turn every error into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    for arg in args:  # a token in a git URL is masked in every message, even a usage error
        redact.register_url(arg)
    try:
        cli.main(args=args, prog_name="projectrun", standalone_mode=False)
    except ProjectRunError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            click.echo(f"projectrun: error: {redact.text(line)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("projectrun: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"projectrun: error: {redact.text(exc.format_message())}", err=True)
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        click.echo("projectrun: interrupted", err=True)
        return 130
    except Terminated as exc:  # SIGTERM/SIGHUP outside a run (a build, a sweep's set-up)
        click.echo(f"projectrun: stopped by {signal.Signals(exc.signum).name}", err=True)
        return 128 + exc.signum
    except Exception as exc:
        if debug:
            raise
        click.echo(redact.text(f"projectrun: internal error: {type(exc).__name__}: {exc} "
                               f"(rerun with --debug for a traceback, and please report it)"),
                   err=True)
        return 3
    return 0
