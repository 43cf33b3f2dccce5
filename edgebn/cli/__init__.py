"""The Typer app: options, one library call per command, rendering."""
