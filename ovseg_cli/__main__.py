"""``python -m ovseg_cli`` runs the CLI."""

from ovseg_cli.cli import main

main()
