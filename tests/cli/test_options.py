"""The CLI's shared parts (edgebn.cli.options): option groups, flags, the error boundary."""

from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()


def test_the_data_option_group_is_shared(tmp_path):
    """One set of DataSpec options on every command that reads a dataset."""
    for command in ("train", "convert", "fold", "build"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).stdout
        for option in ("--dataset", "--data-dir", "--image-size", "--color", "--resize",
                       "--seed", "--limit"):
            assert option in text, (command, option)
