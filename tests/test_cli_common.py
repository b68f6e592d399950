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


def test_error_text_is_never_parsed_as_markup():
    from limamono.cli.common import fail

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        fail("[bold]x.yaml: field '[/x]': bad [link=http://e.test]value[/link]")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert result.output == "error: [bold]x.yaml: field '[/x]': bad [link=http://e.test]value[/link]\n"


def test_control_characters_are_shown_not_sent():
    from limamono.cli.common import out, visible

    assert visible("a\x1b[31mb\x1b]0;title\x07c\x7f\x9b\td\n") == "a␛[31mb␛]0;title␇c␡\ufffd\td\n"
    app = typer.Typer()

    @app.command()
    def show() -> None:
        from rich.table import Table
        from rich.text import Text

        table = Table("name")
        table.add_row("\x1b[31mred")
        out.print(table)
        out.print(Text("\x1b]0;pwned\x07 and \x1b[2J"))
        out.print("plain \x1b[1m")

    result = CliRunner().invoke(app, [])
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "│ ␛[31mred │" in result.output
    # Rich itself drops BEL, CR, BS, VT and FF from text; what it keeps is made visible.
    assert "␛]0;pwned and ␛[2J\nplain ␛[1m\n" in result.output


def test_messages_do_not_depend_on_the_terminal_width(monkeypatch):
    from limamono.cli import common

    for console in (common.out, common.err):
        monkeypatch.setattr(console, "width", 40)
    app = typer.Typer()

    @app.command()
    def say() -> None:
        common.out.print("imported /" + "long-folder/" * 12 + "c.jsonl as chat 2")
        common.warn("/" + "w" * 90 + " is odd")

    result = CliRunner().invoke(app, [])
    assert result.output == ("imported /" + "long-folder/" * 12 + "c.jsonl as chat 2\n"
                             "warning: /" + "w" * 90 + " is odd\n")


def test_visible_covers_every_format_character_of_this_python() -> None:
    """The hand-written class in cli/common.py is Unicode's Cf, Zl and Zp, exactly (a newer
    Python with a newer Unicode database fails here until the list is brought up to date)."""
    import sys
    import unicodedata

    from limamono.cli.common import _CONTROL, visible

    wanted = {c for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp", "Cc", "Cs")} - {0x09, 0x0A}
    matched = {c for c in range(sys.maxunicode + 1) if _CONTROL.fullmatch(chr(c))}
    assert matched == wanted
    assert visible("a\u202eb\u2066c\u2069\u200d\ufeff\x07\x1b\x85\ud800\n\t") == (
        "a<U+202E>b<U+2066>c<U+2069><U+200D><U+FEFF>␇␛\ufffd\ufffd\n\t")
