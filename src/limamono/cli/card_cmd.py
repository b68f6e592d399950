"""`limamono card show|convert`: look inside character cards and convert between formats.

Other command modules add commands to ``card_app`` (e.g. ``card generate``), so every card
command lives under one ``limamono card`` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from limamono.cli.common import fail, out, refuse_overwrite

if TYPE_CHECKING:
    from rich.table import Table

    from limamono.cards import Card

card_app = typer.Typer(
    name="card",
    help="Character cards: show them, convert between SillyTavern PNG/JSON, Limamono sheets "
         "(.txt) and conversation headers (.yaml).",
    no_args_is_help=True,
)


@card_app.command("show")
def show_cmd(
    file: Path = typer.Argument(..., help="Card file: .png or .json (V1/V2/V3), or a .txt "
                                          "sheet or .yaml conversation."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as V2 JSON (spec, "
                                 "spec_version, data and the other top-level fields)."),
) -> None:
    """Summarise a card: name, spec, field lengths, greetings, extensions."""
    from limamono.cards import CardError, read_card, to_json_text

    try:
        card = read_card(file)
    except CardError as exc:
        fail(str(exc))
    if as_json:
        out.print(to_json_text(card, "chara_card_v2"), markup=False, highlight=False,
                  soft_wrap=True)
        return
    out.print(_summary_table(card))


def _summary_table(card: Card) -> Table:
    from rich.table import Table
    from rich.text import Text

    from limamono.cards import DEFAULT_LIMITS, png
    from limamono.cards.model import TEXT_FIELDS, TEXT_LIST_FIELDS

    # Card text is untrusted: every cell is a Text object, so "[bold]" or "[link=...]"
    # in a card is shown as written, never interpreted as Rich markup.
    table = Table(title=Text(card.source), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    data = card.data
    rows: list[tuple[str, str]] = [("name", card.name), ("spec", card.spec)]
    if card.image is not None:
        chunks = png.read_chunks(card.image, card.source, DEFAULT_LIMITS)
        width, height = png.image_size(chunks)
        rows.append(("image", f"{width}x{height} PNG, {len(card.image)} bytes"))
    rows += [(key, f"{len(data[key])} characters") for key in TEXT_FIELDS[1:] if data[key]]
    rows.append(("greetings", f"{card.greeting_count()} (first_mes + "
                              f"{len(data['alternate_greetings'])} alternate)"))
    rows += [(key, f"{len(data[key])} items") for key in TEXT_LIST_FIELDS[1:] if data[key]]
    rows.append(("extensions", ", ".join(sorted(data["extensions"])) or "(none)"))
    book = data.get("character_book")
    if isinstance(book, dict):
        rows.append(("character_book", f"{len(book.get('entries') or [])} entries"))
    known = {*TEXT_FIELDS, *TEXT_LIST_FIELDS, "extensions", "character_book"}
    other = sorted(k for k in data if k not in known)
    if other:
        rows.append(("other data keys", ", ".join(other)))
    rows += [("warning", w) for w in card.warnings]
    for key, value in rows:
        table.add_row(Text(key), Text(value))
    return table


@card_app.command("convert")
def convert_cmd(
    source: Path = typer.Argument(..., help="Input: .png or .json card, .txt sheet, or .yaml "
                                            "conversation."),
    target: Path = typer.Argument(..., help="Output, format by extension: .png (card in the "
                                            "image, both chara and ccv3 chunks), .json (V2, "
                                            "or V3 if the input was V3), .yaml (conversation "
                                            "header with the greeting), .txt (sheet)."),
    user: str = typer.Option("User", "--user", help="The user's name: what {{user}} and "
                             "<USER> become in .yaml and .txt output."),
    house_style: bool = typer.Option(False, "--house-style", help="Convert asterisk-style "
                                     "prose (*She smiled.*) to the Limamono house style."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Convert a card between PNG, JSON, sheet text and conversation YAML."""
    from limamono.cards import CardError, export_card, read_card

    if not user.strip():
        fail("--user must not be empty")
    refuse_overwrite(target, force)
    try:
        card = read_card(source)
        export_card(card, target, user_name=user.strip(), house_style=house_style)
    except CardError as exc:
        fail(str(exc))
    except ImportError as exc:
        fail(f"--house-style needs limamono.style ({exc})")
    out.print(f"wrote {target}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``card`` command group to the CLI."""
    app.add_typer(card_app, name="card")
