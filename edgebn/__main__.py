"""``python -m edgebn``: the command line."""

from edgebn.cli.app import main

main()
