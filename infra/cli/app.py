"""The ``tributary`` command: a typer root that packages extend with their commands.

``infra`` sits at the bottom of the import graph, so the root cannot import the
flows, training, serving or monitoring commands. Each of those packages
registers a ``register(cli: CommandGroups)`` function under the
``tributary.cli`` entry-point group instead, and :func:`build_app` loads them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NoReturn

import typer
import typer.main

from infra.cli.errors import CliError
from infra.errors import TributaryError

ENTRY_POINT_GROUP = "tributary.cli"


@dataclass(frozen=True)
class CommandGroups:
    """The typer apps a package may add commands to."""

    root: typer.Typer
    run: typer.Typer


def _new_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def build_app() -> typer.Typer:
    """Assemble the CLI: infra's own commands, then every registered package."""
    from infra.cli import demo, simulate, stack

    groups = CommandGroups(
        root=_new_app("Tributary: streaming-first, real-time ML for plantly.shop."),
        run=_new_app("Run a dataflow or worker in the foreground."),
    )
    stack.register(groups)
    simulate.register(groups)
    demo.register(groups)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry.load()(groups)
    if groups.run.registered_commands:
        groups.root.add_typer(groups.run, name="run")
    return groups.root


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and a non-zero exit instead of tracebacks."""
    command = typer.main.get_command(build_app())
    try:
        code = command.main(args=argv, prog_name="tributary", standalone_mode=False)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as error:  # click's usage and parameter errors
        _fail(_usage_message(error), int(getattr(error, "exit_code", 2)))
    except (CliError, TributaryError) as error:
        _fail(str(error), error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_message(error: typer.TyperException) -> str:
    format_message = getattr(error, "format_message", None)
    message = format_message() if callable(format_message) else str(error)
    ctx = getattr(error, "ctx", None)
    if ctx is None:
        return str(message)
    return f"{message} (see '{ctx.command_path} --help')"


def _fail(message: str, code: int) -> NoReturn:
    # one line, whatever the underlying message looked like
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)
