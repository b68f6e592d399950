"""`limamono chats list|show|export|import|delete`: the saved chats."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from limamono.cli.chat_cmd.session import load_character, open_store
from limamono.cli.chat_cmd.terminal import chats_table, export_chat, show_message
from limamono.cli.common import fail, out, visible

chats_app = typer.Typer(name="chats", help="Saved chats: list, show, export, import, delete.",
                        no_args_is_help=True)


@chats_app.command("list")
def chats_list_cmd(db: Path | None = typer.Option(None, "--db", help="Chat database.")) -> None:
    """List saved chats, most recent first."""
    out.print(chats_table(open_store(db)))


@chats_app.command("show")
def chats_show_cmd(chat_id: int = typer.Argument(..., help="Chat id."),
                   db: Path | None = typer.Option(None, "--db", help="Chat database.")) -> None:
    """Print a saved chat."""
    from limamono.store import StoreError

    store = open_store(db)
    try:
        stored = store.load_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))
    out.print(Text(visible(f"Chat {chat_id}: {stored.character.name} and {stored.user.name}"),
                   style="bold"))
    for message in stored.messages:
        show_message(message, stored.character.name, stored.user.name)


@chats_app.command("export")
def chats_export_cmd(
    chat_id: int = typer.Argument(..., help="Chat id."),
    output: Path = typer.Option(..., "-o", "--output", help="File: .jsonl (SillyTavern chat) "
                                "or .yaml (conversation file)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing chat file."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
) -> None:
    """Export a chat as SillyTavern JSONL or a conversation YAML."""
    from limamono.store import StoreError

    try:
        export_chat(open_store(db), chat_id, output, force)
    except StoreError as exc:
        fail(str(exc))
    out.print(f"wrote {output}")


@chats_app.command("import")
def chats_import_cmd(
    file: Path = typer.Argument(..., help="SillyTavern chat .jsonl (the file is only read)."),
    card: Path | None = typer.Option(None, "--card", help="The character's card, so the chat "
                                     "has its sheet (default: the name only)."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
    max_mb: int = typer.Option(256, "--max-mb", min=1, help="Refuse a file bigger than this "
                               "many MiB (the import reads a line at a time at any size, "
                               "but a chat of millions of messages is slow to open)."),
) -> None:
    """Import a SillyTavern chat file as a new chat.

    The file is read a line at a time and saved in one transaction: a bad line anywhere
    (named with its number) leaves the database as it was.
    """
    from limamono.core.conversation import User
    from limamono.store import StoreError, import_sillytavern

    store = open_store(db)
    start = load_character(card, User("User")) if card else None
    try:
        chat_id = import_sillytavern(store, file, start.character if start else None,
                                     start.scenario if start else "", max_bytes=max_mb * 2**20)
    except StoreError as exc:
        fail(str(exc))
    out.print(f"imported {file} as chat {chat_id}")


@chats_app.command("delete")
def chats_delete_cmd(
    chat_id: int = typer.Argument(..., help="Chat id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
) -> None:
    """Delete a saved chat."""
    from limamono.store import StoreError

    store = open_store(db)
    if not yes and not typer.confirm(f"Delete chat {chat_id}?"):
        raise typer.Exit(1)
    try:
        store.delete_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))
    out.print(f"deleted chat {chat_id}")
