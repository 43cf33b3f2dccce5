"""``python -m edgebn``: the command line."""

from edgebn.cli import main

main()
