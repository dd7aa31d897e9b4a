"""``python -m fastae``: the fastae command."""
import sys

from .cli import command

sys.exit(command())
