"""The chat database: SQLite with WAL, a versioned schema, one transaction per change.

Durability (SPEC: a kill at any moment leaves every acknowledged message readable):

- WAL journal with ``synchronous=FULL``: a commit returns only after the WAL is synced, so
  an acknowledged message survives a killed process and a power cut. NORMAL would survive
  only the kill (the last commits can roll back on power loss); chat writes are one small
  transaction per message, so the extra fsync costs nothing a person would notice.
- Every change is one ``BEGIN IMMEDIATE ... COMMIT``; a kill mid-transaction rolls it back.
- Saving a chat rewrites only the messages that changed (a digest per message), so a long
  chat costs O(change), not O(size), and the untouched rows are never rewritten.
- Optimistic concurrency: every chat has a version, raised by every change of its messages.
  A save names the version its copy was loaded at; when another process saved in between
  (two ``limamono chat --chat 1`` terminals), the save is refused with ``StaleChatError``
  and nothing is written, so no writer ever deletes what it has not seen. Appending
  (``append_message``) needs no version: it cannot lose anything.
- The schema version is ``PRAGMA user_version``; migrations run in a transaction, and a
  database from a newer limamono, or a file that is not a database, is refused before
  anything is written to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from limamono.core.conversation import Character, Conversation, Message, Swipe, User

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2

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
    # The chat version of optimistic concurrency; chats saved before start at 0.
    2: ("ALTER TABLE chats ADD COLUMN version INTEGER NOT NULL DEFAULT 0",),
}


class StoreError(Exception):
    """The chat database or a chat file cannot be used; the message says why and the fix."""


class StaleChatError(StoreError):
    """Another process saved the chat after this copy was loaded; nothing was written.

    Attributes:
        chat_id: the chat.
        version: the version the copy was loaded at.
        saved_version: the version in the database now.
    """

    def __init__(self, path: Path, chat_id: int, version: int, saved_version: int) -> None:
        self.chat_id = chat_id
        self.version = version
        self.saved_version = saved_version
        super().__init__(f"{path}: chat {chat_id} was changed by another process since this "
                         f"copy was loaded (version {saved_version}, this copy {version}); "
                         "nothing was saved (load the chat again to go on from what is saved)")


@dataclass(frozen=True)
class Saved:
    """What ``sync_messages`` did: the messages written and the chat's version now."""

    written: int
    version: int


@dataclass(frozen=True)
class ChatSummary:
    """One line of ``limamono chats list``."""

    id: int
    character_name: str
    user_name: str
    messages: int
    updated: str
    title: str
    version: int = 0  # raised by every change: ``updated`` has only seconds


def default_db_path() -> Path:
    """``limamono_home()/chats.db`` (``$LIMAMONO_HOME`` or the user cache folder)."""
    from limamono.models.resolve import limamono_home

    return limamono_home() / "chats.db"


def message_digest(message: Message) -> str:
    """A fingerprint of everything saved about a message (to skip unchanged rows).

    The keys are the row's columns, so a digest stays valid when the dataclass changes.
    """
    row = {"role": message.role, "swipe_id": message.swipe_id, "length": message.length,
           "hidden": message.hidden, "send_date": message.send_date, "extra": message.meta,
           "swipes": [{"text": s.text, "cut": s.cut, "finish_reason": s.finish_reason,
                       "info": s.info} for s in message.swipes]}
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create its folder ({exc.strerror or exc}); "
                             "pass another --db") from None
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
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every read inside sees the same committed state (WAL)."""
        try:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot be read ({exc}); nothing was "
                             "changed") from None

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

    def create_chat(self, chat: Conversation, source: str = "",
                    messages: Iterable[Message] | None = None) -> int:
        """Save a new chat (its character too) with its messages; return its id.

        Args:
            chat: the chat; its ``meta`` is kept as the chat's metadata.
            source: where the character came from (a card file), kept with the character.
            messages: the messages to save instead of ``chat.messages``, saved as they are
                iterated (an import streams them); when iterating raises, nothing is saved.
        """
        now = _now()
        with self._transaction() as db:
            character_id = db.execute(
                "INSERT INTO characters (name, description, scenario, source, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (chat.character.name, chat.character.description, chat.scenario, source,
                 now)).lastrowid
            chat_id = db.execute(
                "INSERT INTO chats (character_id, user_name, user_persona, title, created, "
                "updated, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (character_id, chat.user.name, chat.user.persona, chat.title,
                 chat.created or now, now, json.dumps(chat.meta, ensure_ascii=False))
            ).lastrowid
            assert chat_id is not None
            for position, message in enumerate(chat.messages if messages is None
                                               else messages):
                self._insert_message(chat_id, position, message)
        return chat_id

    def append_message(self, chat_id: int, message: Message) -> int:
        """Add a message at the end of a chat; return the message's row id once committed.

        No version is needed (an append loses nothing); the chat's version goes up, so a
        copy loaded before is stale.
        """
        with self._transaction() as db:
            self._version(chat_id)
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM messages "
                                  "WHERE chat_id = ?", (chat_id,)).fetchone()[0]
            message_id = self._insert_message(chat_id, position, message)
            self._touch(chat_id)
        return message_id

    def sync_messages(self, chat_id: int, messages: Sequence[Message], version: int) -> Saved:
        """Make the saved messages equal ``messages``, writing only those that changed.

        Args:
            chat_id: the chat.
            messages: the whole chat as the caller has it.
            version: the version the caller's copy was loaded at (``load_chat_version``) or
                last saved as (the returned ``Saved.version``).

        Returns:
            how many messages were written, and the chat's version now (raised only when
            something changed).

        Raises:
            StaleChatError: another process saved the chat since ``version``; nothing was
                written.
        """
        written = 0
        with self._transaction() as db:
            saved_version = self._version(chat_id)
            if saved_version != version:
                raise StaleChatError(self.path, chat_id, version, saved_version)
            saved = dict(db.execute("SELECT position, digest FROM messages WHERE chat_id = ?",
                                    (chat_id,)).fetchall())
            for position, message in enumerate(messages):
                if saved.get(position) == message_digest(message):
                    continue
                db.execute("DELETE FROM messages WHERE chat_id = ? AND position = ?",
                           (chat_id, position))
                self._insert_message(chat_id, position, message)
                written += 1
            removed = db.execute("DELETE FROM messages WHERE chat_id = ? AND position >= ?",
                                 (chat_id, len(messages))).rowcount
            if written or removed:
                self._touch(chat_id)
                version += 1
        return Saved(written, version)

    def load_chat(self, chat_id: int) -> Conversation:
        """Read a whole chat (see ``load_chat_version``)."""
        return self.load_chat_version(chat_id)[0]

    def load_chat_version(self, chat_id: int) -> tuple[Conversation, int]:
        """Read a whole chat and the version it is at, from one consistent snapshot.

        Raises:
            StoreError: no chat has this id, or a row cannot be read (the message names the
                message; nothing is changed, so the chat is never saved over).
        """
        with self._snapshot() as db:
            row = db.execute(
                "SELECT ch.name, ch.description, ch.scenario, c.user_name, c.user_persona, "
                "c.title, c.created, c.metadata, c.version FROM chats c "
                "JOIN characters ch ON ch.id = c.character_id WHERE c.id = ?",
                (chat_id,)).fetchone()
            if row is None:
                raise StoreError(self._no_chat(chat_id))
            messages = []
            for r in db.execute("SELECT id, role, swipe_id, length, hidden, send_date, "
                                "extra, position FROM messages WHERE chat_id = ? "
                                "ORDER BY position", (chat_id,)).fetchall():
                try:
                    messages.append(self._read_message(r))
                except (ValueError, TypeError) as exc:  # bad JSON, bad swipe index, no swipes
                    raise StoreError(f"{self.path}: chat {chat_id}, message {r[7]} cannot be "
                                     f"read ({exc}); nothing was changed") from None
        try:
            metadata = json.loads(row[7])
        except ValueError as exc:
            raise StoreError(f"{self.path}: chat {chat_id} metadata cannot be read ({exc}); "
                             "nothing was changed") from None
        chat = Conversation(Character(row[0], row[1]), User(row[3], row[4]), row[2], messages,
                            metadata, row[5], row[6])
        return chat, row[8]

    def version(self, chat_id: int) -> int:
        """The chat's version now (it goes up with every change of its messages)."""
        with self._snapshot():
            return self._version(chat_id)

    def list_chats(self) -> list[ChatSummary]:
        """Every chat, most recently updated first."""
        rows = self._db.execute(
            "SELECT c.id, ch.name, c.user_name, "
            "(SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id), c.updated, c.title, "
            "c.version "
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

    def _insert_message(self, chat_id: int, position: int, message: Message) -> int:
        message_id = self._db.execute(
            "INSERT INTO messages (chat_id, position, role, swipe_id, length, hidden, "
            "send_date, extra, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (chat_id, position, message.role, message.swipe_id, message.length,
             int(message.hidden), message.send_date,
             json.dumps(message.meta, ensure_ascii=False), message_digest(message))).lastrowid
        assert message_id is not None
        self._db.executemany(
            "INSERT INTO swipes (message_id, idx, text, cut, finish_reason, info) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(message_id, i, s.text, s.cut, s.finish_reason,
              json.dumps(s.info, ensure_ascii=False)) for i, s in enumerate(message.swipes)])
        return message_id

    def _read_message(self, row: tuple[Any, ...]) -> Message:
        message_id, role, swipe_id, length, hidden, send_date, extra, _ = row
        swipes = [Swipe(text, cut, reason, json.loads(info)) for text, cut, reason, info in
                  self._db.execute("SELECT text, cut, finish_reason, info FROM swipes "
                                   "WHERE message_id = ? ORDER BY idx", (message_id,))]
        return Message(role, length=length, swipes=swipes, swipe_id=swipe_id,
                       hidden=bool(hidden), send_date=send_date, meta=json.loads(extra))

    def _version(self, chat_id: int) -> int:
        row = self._db.execute("SELECT version FROM chats WHERE id = ?", (chat_id,)).fetchone()
        if row is None:
            raise StoreError(self._no_chat(chat_id))
        return int(row[0])

    def _touch(self, chat_id: int) -> None:
        """Mark a change of the chat's messages: a new ``updated`` time and version."""
        self._db.execute("UPDATE chats SET updated = ?, version = version + 1 WHERE id = ?",
                         (_now(), chat_id))

    def _no_chat(self, chat_id: int) -> str:
        return f"no chat with id {chat_id} in {self.path} (see `limamono chats list`)"
