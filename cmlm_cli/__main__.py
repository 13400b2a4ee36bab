"""``python -m cmlm_cli`` runs the command line."""

from cmlm_cli.cli import run

run()
