"""The chat database: SQLite with WAL, a versioned schema, one transaction per change.

Durability (SPEC: a kill at any moment leaves every acknowledged message readable):

- WAL journal with ``synchronous=FULL``: a commit returns only after the WAL is synced, so
  an acknowledged message survives a killed process and a power cut. NORMAL would survive
  only the kill (the last commits can roll back on power loss); chat writes are one small
  transaction per message, so the extra fsync costs nothing a person would notice.
- Every change is one ``BEGIN IMMEDIATE ... COMMIT``; a kill mid-transaction rolls it back.
- Saving a chat rewrites only the messages that changed (a digest per message), so a long
  chat costs O(change), not O(size), and the untouched rows are never rewritten.
- The schema version is ``PRAGMA user_version``; migrations run in a transaction, and a
  database from a newer limamono, or a file that is not a database, is refused before
  anything is written to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from limamono.chat import ChatMessage, Swipe
from limamono.conversation import Character, User

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

#: Migrations: the statements that bring a database from version ``n - 1`` to ``n``.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE characters (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            scenario TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL)""",
        """CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            character_id INTEGER NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
            user_name TEXT NOT NULL,
            user_persona TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}')""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('char', 'user')),
            swipe_id INTEGER NOT NULL DEFAULT 0,
            length TEXT,
            hidden INTEGER NOT NULL DEFAULT 0,
            send_date TEXT NOT NULL DEFAULT '',
            extra TEXT NOT NULL DEFAULT '{}',
            digest TEXT NOT NULL,
            UNIQUE (chat_id, position))""",
        """CREATE TABLE swipes (
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            cut TEXT,
            finish_reason TEXT,
            info TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (message_id, idx))""",
        "CREATE INDEX chats_by_character ON chats(character_id)",
    ),
}


class StoreError(Exception):
    """The chat database or a chat file cannot be used; the message says why and the fix."""


@dataclass
class StoredChat:
    """A chat as saved: the character, the user, the messages and file metadata."""

    id: int
    character: Character
    scenario: str
    user: User
    messages: list[ChatMessage]
    title: str = ""
    created: str = ""
    updated: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatSummary:
    """One line of ``limamono chats list``."""

    id: int
    character_name: str
    user_name: str
    messages: int
    updated: str
    title: str


def default_db_path() -> Path:
    """``limamono_home()/chats.db`` (``$LIMAMONO_HOME`` or the user cache folder)."""
    from limamono.models import limamono_home

    return limamono_home() / "chats.db"


def message_digest(message: ChatMessage) -> str:
    """A fingerprint of everything saved about a message (to skip unchanged rows)."""
    blob = json.dumps(asdict(message), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ChatStore:
    """The chat database; every public method that writes is one transaction.

    Args:
        path: the SQLite file (created with its folder when missing).

    Raises:
        StoreError: the file is not a chat database, or a newer limamono wrote it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._check_version()
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot be used as the chat database ({exc}); "
                             "it was not changed. Move it away or pass another --db") from None

    def close(self) -> None:
        """Close the connection (everything committed is already on disk)."""
        self._db.close()

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} was written by a newer "
                             f"limamono (this one knows up to {SCHEMA_VERSION}); upgrade "
                             "limamono or pass another --db. The file was not changed")

    def _migrate(self) -> None:
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    self._db.execute(statement)
                # PRAGMA takes no parameters; ``target`` is an int from this module.
                self._db.execute(f"PRAGMA user_version = {int(target)}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing change; SQLite failures (disk full, locked) become StoreError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: the change was not saved ({exc}); what was saved "
                             "before is intact") from None

    # ------------------------------------------------------------------ chats

    def create_chat(self, character: Character, user: User, scenario: str = "",
                    messages: Sequence[ChatMessage] = (), title: str = "", source: str = "",
                    metadata: dict[str, Any] | None = None, created: str | None = None) -> int:
        """Save a new chat (its character too) with its first messages; return its id."""
        now = _now()
        with self._transaction() as db:
            character_id = db.execute(
                "INSERT INTO characters (name, description, scenario, source, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (character.name, character.description, scenario, source, now)).lastrowid
            chat_id = db.execute(
                "INSERT INTO chats (character_id, user_name, user_persona, title, created, "
                "updated, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (character_id, user.name, user.persona, title, created or now, now,
                 json.dumps(metadata or {}, ensure_ascii=False))).lastrowid
            assert chat_id is not None
            for position, message in enumerate(messages):
                self._insert_message(chat_id, position, message)
        return chat_id

    def append_message(self, chat_id: int, message: ChatMessage) -> int:
        """Add a message at the end of a chat; return the message's row id once committed."""
        with self._transaction() as db:
            self._require_chat(chat_id)
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM messages "
                                  "WHERE chat_id = ?", (chat_id,)).fetchone()[0]
            message_id = self._insert_message(chat_id, position, message)
            self._touch(chat_id)
        return message_id

    def sync_messages(self, chat_id: int, messages: Sequence[ChatMessage]) -> int:
        """Make the saved messages equal ``messages``, writing only those that changed.

        Returns:
            how many messages were written.
        """
        written = 0
        with self._transaction() as db:
            self._require_chat(chat_id)
            saved = dict(db.execute("SELECT position, digest FROM messages WHERE chat_id = ?",
                                    (chat_id,)).fetchall())
            for position, message in enumerate(messages):
                if saved.get(position) == message_digest(message):
                    continue
                db.execute("DELETE FROM messages WHERE chat_id = ? AND position = ?",
                           (chat_id, position))
                self._insert_message(chat_id, position, message)
                written += 1
            db.execute("DELETE FROM messages WHERE chat_id = ? AND position >= ?",
                       (chat_id, len(messages)))
            self._touch(chat_id)
        return written

    def load_chat(self, chat_id: int) -> StoredChat:
        """Read a whole chat.

        Raises:
            StoreError: no chat has this id, or a row cannot be read (the message names the
                message; nothing is changed, so the chat is never saved over).
        """
        row = self._db.execute(
            "SELECT c.id, ch.name, ch.description, ch.scenario, c.user_name, c.user_persona, "
            "c.title, c.created, c.updated, c.metadata FROM chats c "
            "JOIN characters ch ON ch.id = c.character_id WHERE c.id = ?", (chat_id,)).fetchone()
        if row is None:
            raise StoreError(self._no_chat(chat_id))
        messages = []
        for r in self._db.execute("SELECT id, role, swipe_id, length, hidden, send_date, "
                                  "extra, position FROM messages WHERE chat_id = ? "
                                  "ORDER BY position", (chat_id,)).fetchall():
            try:
                messages.append(self._read_message(r))
            except (ValueError, TypeError) as exc:  # bad JSON, bad swipe index, no swipes
                raise StoreError(f"{self.path}: chat {chat_id}, message {r[7]} cannot be read "
                                 f"({exc}); nothing was changed") from None
        try:
            metadata = json.loads(row[9])
        except ValueError as exc:
            raise StoreError(f"{self.path}: chat {chat_id} metadata cannot be read ({exc}); "
                             "nothing was changed") from None
        return StoredChat(row[0], Character(row[1], row[2]), row[3], User(row[4], row[5]),
                          messages, row[6], row[7], row[8], metadata)

    def list_chats(self) -> list[ChatSummary]:
        """Every chat, most recently updated first."""
        rows = self._db.execute(
            "SELECT c.id, ch.name, c.user_name, "
            "(SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id), c.updated, c.title "
            "FROM chats c JOIN characters ch ON ch.id = c.character_id "
            "ORDER BY c.updated DESC, c.id DESC").fetchall()
        return [ChatSummary(*row) for row in rows]

    def delete_chat(self, chat_id: int) -> None:
        """Delete a chat, its messages and its character row."""
        with self._transaction() as db:
            row = db.execute("SELECT character_id FROM chats WHERE id = ?",
                             (chat_id,)).fetchone()
            if row is None:
                raise StoreError(self._no_chat(chat_id))
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
            db.execute("DELETE FROM characters WHERE id = ? AND NOT EXISTS "
                       "(SELECT 1 FROM chats WHERE character_id = ?)", (row[0], row[0]))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when sound)."""
        return "\n".join(r[0] for r in self._db.execute("PRAGMA integrity_check").fetchall())

    # ------------------------------------------------------------------ rows

    def _insert_message(self, chat_id: int, position: int, message: ChatMessage) -> int:
        message_id = self._db.execute(
            "INSERT INTO messages (chat_id, position, role, swipe_id, length, hidden, "
            "send_date, extra, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (chat_id, position, message.role, message.swipe_id, message.length,
             int(message.hidden), message.send_date,
             json.dumps(message.extra, ensure_ascii=False), message_digest(message))).lastrowid
        assert message_id is not None
        self._db.executemany(
            "INSERT INTO swipes (message_id, idx, text, cut, finish_reason, info) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(message_id, i, s.text, s.cut, s.finish_reason,
              json.dumps(s.info, ensure_ascii=False)) for i, s in enumerate(message.swipes)])
        return message_id

    def _read_message(self, row: tuple[Any, ...]) -> ChatMessage:
        message_id, role, swipe_id, length, hidden, send_date, extra, _ = row
        swipes = [Swipe(text, cut, reason, json.loads(info)) for text, cut, reason, info in
                  self._db.execute("SELECT text, cut, finish_reason, info FROM swipes "
                                   "WHERE message_id = ? ORDER BY idx", (message_id,))]
        return ChatMessage(role, swipes, swipe_id, length, bool(hidden), send_date,
                           json.loads(extra))

    def _require_chat(self, chat_id: int) -> None:
        if self._db.execute("SELECT 1 FROM chats WHERE id = ?", (chat_id,)).fetchone() is None:
            raise StoreError(self._no_chat(chat_id))

    def _touch(self, chat_id: int) -> None:
        self._db.execute("UPDATE chats SET updated = ? WHERE id = ?", (_now(), chat_id))

    def _no_chat(self, chat_id: int) -> str:
        return f"no chat with id {chat_id} in {self.path} (see `limamono chats list`)"
