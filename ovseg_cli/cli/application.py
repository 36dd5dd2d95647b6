"""The Typer application: every command on one ``app``, and ``run`` that turns the framework's
usage errors into one line.
"""

from __future__ import annotations

import sys

import typer

from ovseg_cli import __version__
from ovseg_cli.cli.common import error
from ovseg_cli.cli.eval import eval_command
from ovseg_cli.cli.models import models_command
from ovseg_cli.cli.prep import prep_app
from ovseg_cli.cli.propagate import propagate_command
from ovseg_cli.cli.segment import segment_command
from ovseg_cli.cli.train import train_command

app = typer.Typer(
    help="Label every pixel of a video with classes you name, including ones no model was trained on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ovseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """ovseg: open-vocabulary video semantic segmentation."""


app.command("segment")(segment_command)
app.command("propagate")(propagate_command)
app.command("models")(models_command)
app.add_typer(prep_app, name="prep")
app.command("train")(train_command)
app.command("eval")(eval_command)


def _command_path(args: list[str] | None) -> str:
    """``ovseg COMMAND`` of a command line the parser gave up on before naming a context."""
    import typer

    words = [a for a in (sys.argv[1:] if args is None else args) if not a.startswith("-")]
    commands = getattr(typer.main.get_command(app), "commands", {})
    return f"ovseg {words[0]}" if words and words[0] in commands else "ovseg"


def run(args: list[str] | None = None) -> int:
    """Run the command line; the exit code. A usage error (a missing or unknown option, a
    bad value) is one ``error:`` line naming the --help to read, exit code 2."""
    try:  # typer 0.2x carries its own copy of click, whose exceptions it raises
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    try:
        code = app(args=args, prog_name="ovseg", standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # click >= 8.2: `ovseg` alone
            e.show()
            return e.exit_code
        path = e.ctx.command_path if e.ctx is not None else _command_path(args)
        error(" ".join(e.format_message().split()) + f" (see '{path} --help')")
        return e.exit_code
    except click.ClickException as e:
        error(" ".join(e.format_message().split()))
        return e.exit_code
    except click.Abort:  # Ctrl-C at a prompt or while the options were read
        error("interrupted (SIGINT)")
        return 130
    return code if isinstance(code, int) else 0
