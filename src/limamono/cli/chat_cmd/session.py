"""Starting a terminal chat: the store, the character card, the session over a saved chat."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from limamono.cli.common import err, fail

if TYPE_CHECKING:
    from limamono.chat import ChatSession
    from limamono.generation import Engine
    from limamono.store import ChatStore


def open_store(db: Path | None) -> ChatStore:
    """The chat database (``--db`` or the default), or a clean exit naming the problem."""
    from limamono.store import ChatStore, StoreError, default_db_path

    try:
        return ChatStore(db or default_db_path())
    except StoreError as exc:
        fail(str(exc))


@dataclass(frozen=True)
class CharacterStart:
    """What a card gives a new chat: the sheet, the scenario and the greetings."""

    character: Any
    scenario: str
    greetings: list[str]
    source: str


def load_character(path: Path, user_name: str, house_style: bool = False) -> CharacterStart:
    """Read a card (PNG/JSON V1-V3, a conversation .yaml or a .txt sheet) for a chat."""
    from limamono.cards import CardError, card_to_conversation, greetings, read_card

    try:
        card = read_card(path)
        conv = card_to_conversation(card, user_name, house_style=house_style)
        texts = greetings(card, user_name, house_style=house_style)
    except CardError as exc:
        fail(str(exc))
    return CharacterStart(conv.character, conv.scenario, texts, str(path))


def start_session(store: ChatStore, chat_id: int, engine: Engine, settings: Any,
                  max_tokens: int) -> ChatSession:
    """A session over a stored chat that saves every change back to it."""
    from limamono.chat import ChatConfig, ChatError, ChatSession
    from limamono.store import StoreError

    try:
        stored = store.load_chat(chat_id)
        config = ChatConfig(max_new_tokens=max_tokens)
    except (StoreError, ChatError) as exc:
        fail(str(exc))
    return ChatSession(stored.character, stored.user, engine, settings, stored.scenario,
                       stored.messages, config,
                       on_change=lambda s: save_history(store, chat_id, s))


def save_history(store: ChatStore, chat_id: int, session: ChatSession) -> None:
    """Save the session's history; a failure is reported and the chat goes on.

    Saving writes every message that differs from the database, so the next successful save
    also writes what a failed one missed.
    """
    from limamono.store import StoreError

    try:
        store.sync_messages(chat_id, session.history)
    except StoreError as exc:
        err.print(Text(f"warning: {exc}; it will be saved with the next change",
                       style="yellow"))


def new_chat(store: ChatStore, start: CharacterStart, user: Any) -> int:
    """Save a new chat that opens with the card's greetings (as swipes)."""
    from limamono.chat import ChatMessage, Swipe

    history = [ChatMessage("char", [Swipe(g) for g in start.greetings])] \
        if start.greetings else []
    return store.create_chat(start.character, user, start.scenario, history,
                             title=Path(start.source).stem, source=start.source)
