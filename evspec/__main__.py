"""`python -m evspec` runs the command line."""

from evspec.cli import run

run()
