"""Every command and sub-command answers --help with a real description, and fast."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from limamono.cli import app


def _commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if hasattr(group, "commands"):  # a group (Typer may bring its own click)
        for name, sub in group.commands.items():
            out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def test_the_expected_commands_exist():
    names = {" ".join(p) for p in COMMANDS}
    for expected in ["render", "presets export", "lint", "card show", "card convert",
                     "card generate", "models", "generate", "chat", "chats list", "demo",
                     "serve", "data build", "data lint", "data stats", "train",
                     "export axolotl", "export gguf", "eval"]:
        assert expected in names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "limamono")
def test_help(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from limamono.cli import app; "
            "CliRunner().invoke(app, ['--help']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
