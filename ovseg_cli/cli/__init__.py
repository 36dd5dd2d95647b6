"""The `ovseg` command line: one thin module per command, sharing ``common`` (errors and
signals), ``options`` (options made from the config) and ``progress`` (bar and summary).

Everything heavy (torch, open_clip, PyAV) is imported inside the commands, so that
``ovseg --help`` answers at once.
"""

from __future__ import annotations

import sys

import typer

from ovseg_cli import __version__
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


def main() -> None:
    """Entry point of the `ovseg` console script."""
    app(prog_name="ovseg")


if __name__ == "__main__":
    sys.exit(main())
