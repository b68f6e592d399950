"""Starting a terminal chat: the store, the character card, the session over a saved chat."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from limamono.cli.common import err, fail

if TYPE_CHECKING:
    from limamono.chat import ChatSession
    from limamono.core.conversation import Conversation, User
    from limamono.engine.protocol import Engine
    from limamono.store import ChatStore


def open_store(db: Path | None) -> ChatStore:
    """The chat database (``--db`` or the default), or a clean exit naming the problem."""
    from limamono.store import ChatStore, StoreError, default_db_path

    try:
        return ChatStore(db or default_db_path())
    except StoreError as exc:
        fail(str(exc))


def load_character(path: Path, user: User, house_style: bool = False) -> Conversation:
    """A new chat from a card (PNG/JSON V1-V3, a conversation .yaml or a .txt sheet).

    The chat opens with the card's greetings as the swipes of its first message (none when
    the card has no greeting); its title is the card's file name.
    """
    from limamono.cards import CardError, read_card
    from limamono.chat import chat_from_card

    try:
        return chat_from_card(read_card(path), user, path.stem, house_style=house_style)
    except CardError as exc:
        fail(str(exc))


class ChatSaver:
    """Saves a session's chat after every change, refusing to save over another process.

    The store's optimistic concurrency check (``sync_messages`` with the version this copy
    was loaded at) finds a chat that another process saved meanwhile; the session is then
    reloaded from the database and ``StaleChatError`` is raised, so the caller tells the user
    that their last change was not saved. Other save failures are reported as warnings and
    the chat goes on: the next save writes every message that differs, the missed ones too.
    """

    def __init__(self, store: ChatStore, chat_id: int, version: int) -> None:
        self.store = store
        self.chat_id = chat_id
        self.version = version

    def __call__(self, session: ChatSession) -> None:
        from limamono.store import StaleChatError, StoreError

        try:
            self.version = self.store.sync_messages(self.chat_id, session.history,
                                                    self.version).version
        except StaleChatError:
            chat, self.version = self.store.load_chat_version(self.chat_id)
            session.reload(chat)
            raise
        except StoreError as exc:
            err.print(Text(f"warning: {exc}; it will be saved with the next change",
                           style="yellow"))


def start_session(store: ChatStore, chat_id: int, engine: Engine, settings: Any,
                  max_tokens: int, policy: Any = None) -> ChatSession:
    """A session over a stored chat that saves every change back to it (``ChatSaver``).

    ``policy`` is the prompt policy (the adapter's; None: the default one).
    """
    from limamono.chat import ChatConfig, ChatError, ChatSession
    from limamono.core.policy import PromptPolicy
    from limamono.store import StoreError

    try:
        chat, version = store.load_chat_version(chat_id)
        config = ChatConfig(max_new_tokens=max_tokens, policy=policy or PromptPolicy())
    except (StoreError, ChatError) as exc:
        fail(str(exc))
    return ChatSession(chat, engine, settings, config,
                       on_change=ChatSaver(store, chat_id, version))
