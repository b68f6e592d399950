"""The CLI's shared error path."""

from __future__ import annotations

import typer
from typer.testing import CliRunner


def test_errors_stay_on_one_line_however_long():
    from limamono.cli.common import fail

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        fail("/a/very/long/path/" + "x" * 150 + ".png: zTXt chunk refused as a decompression bomb")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: /a/very/long/path/")
    assert "decompression bomb" in result.output
