"""``python -m fastae``: the fastae command."""
import sys

from .cli import main

sys.exit(main())
