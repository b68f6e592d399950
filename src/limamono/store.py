"""Chat persistence in SQLite, and SillyTavern chat JSONL import and export.

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

SillyTavern chat files (first line ``{user_name, character_name, create_date,
chat_metadata}``, then one message a line) round-trip: each imported record is kept as it
was, and export writes it back unchanged unless limamono changed what it models (text,
swipes, speaker, date), so fields limamono does not know survive. A file that fails to
parse is reported with its line and never written over.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from limamono.chat import ChatMessage, Swipe
from limamono.conversation import LENGTHS, Character, User

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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
            StoreError: no chat has this id.
        """
        row = self._db.execute(
            "SELECT c.id, ch.name, ch.description, ch.scenario, c.user_name, c.user_persona, "
            "c.title, c.created, c.updated, c.metadata FROM chats c "
            "JOIN characters ch ON ch.id = c.character_id WHERE c.id = ?", (chat_id,)).fetchone()
        if row is None:
            raise StoreError(self._no_chat(chat_id))
        messages = [self._read_message(r) for r in self._db.execute(
            "SELECT id, role, swipe_id, length, hidden, send_date, extra, position "
            "FROM messages WHERE chat_id = ? ORDER BY position", (chat_id,)).fetchall()]
        return StoredChat(row[0], Character(row[1], row[2]), row[3], User(row[4], row[5]),
                          messages, row[6], row[7], row[8], json.loads(row[9]))

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


# --------------------------------------------------------------------------- SillyTavern

#: Where the imported record and what limamono read from it are kept on a message/chat.
ST_KEY = "sillytavern"


@dataclass
class SillyTavernChat:
    """A parsed SillyTavern chat file."""

    user_name: str
    character_name: str
    create_date: str
    header: dict[str, Any]
    messages: list[ChatMessage]


def parse_sillytavern(text: str, source: str = "<string>") -> SillyTavernChat:
    """Parse SillyTavern chat JSONL (a BOM is tolerated).

    Raises:
        StoreError: naming the line and field at fault; nothing is guessed or skipped.
    """
    lines = text.lstrip("\ufeff").splitlines()
    records = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not records:
        raise StoreError(f"{source}: the file is empty (expected a header line, then messages)")
    parsed = [(n, _json_object(line, source, n)) for n, line in records]
    header_line, header = parsed[0]
    if "mes" in header or not ({"user_name", "character_name"} & header.keys()):
        raise StoreError(f"{source}:{header_line}: expected the chat header "
                         "({user_name, character_name, create_date, chat_metadata}) first")
    user_name = _st_text(header, "user_name", source, header_line, "User")
    char_name = _st_text(header, "character_name", source, header_line, "")
    messages = [_st_message(obj, source, n, user_name, char_name) for n, obj in parsed[1:]]
    seen = _header_fields(user_name, char_name)
    return SillyTavernChat(user_name, char_name, str(header.get("create_date", "")),
                           {ST_KEY: {"raw": header, "seen": seen}}, messages)


def export_sillytavern(chat: StoredChat) -> str:
    """SillyTavern chat JSONL for a stored chat (``JSON.stringify`` spacing, no final newline)."""
    kept = chat.metadata.get(ST_KEY, {})
    header = _merge(kept.get("raw", {"create_date": chat.created, "chat_metadata": {}}),
                    kept.get("seen", {}), _header_fields(chat.user.name, chat.character.name))
    lines = [header] + [_export_message(m, chat.user.name, chat.character.name)
                        for m in chat.messages]
    return "\n".join(json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
                     for obj in lines)


def import_sillytavern(store: ChatStore, path: str | os.PathLike[str],
                       character: Character | None = None, scenario: str = "") -> int:
    """Import a SillyTavern chat file as a new chat; return its id.

    Args:
        store: the database.
        path: the ``.jsonl`` file (only read).
        character: the character sheet to chat with (default: the file's character name only).
        scenario: the sheet's scenario, with ``character``.
    """
    path = Path(path)
    chat = parse_sillytavern(_read_text(path), str(path))
    if character is None:
        character = Character(chat.character_name or "Character")
    return store.create_chat(character, User(chat.user_name), scenario, chat.messages,
                             title=path.stem, source=str(path), metadata=chat.header,
                             created=chat.create_date or None)


def write_file_safely(path: str | os.PathLike[str], text: str, force: bool = False) -> None:
    """Write ``text`` atomically (temp file, fsync, rename), never over a chat that fails to load.

    Raises:
        StoreError: the file exists and ``force`` is off, or it exists and is not a readable
            SillyTavern chat (so it may be someone's chat this tool cannot read).
    """
    path = Path(path)
    if path.exists():
        if not force:
            raise StoreError(f"{path} exists; pass --force to replace it")
        try:
            parse_sillytavern(_read_text(path), str(path))
        except StoreError as exc:
            raise StoreError(f"{path} exists and does not load as a chat ({exc}); it was left "
                             "untouched: move it away first") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _json_object(line: str, source: str, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{source}:{number}: not valid JSON: {exc.msg} (column {exc.colno})"
                         ) from None
    if not isinstance(obj, dict):
        raise StoreError(f"{source}:{number}: expected a JSON object, got "
                         f"{type(obj).__name__}")
    return obj


def _st_text(obj: dict[str, Any], key: str, source: str, line: int, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise StoreError(f"{source}:{line}: field {key!r} must be text, got "
                         f"{type(value).__name__}")
    return value


def _st_message(obj: dict[str, Any], source: str, line: int, user_name: str,
                char_name: str) -> ChatMessage:
    """One message record → ChatMessage, keeping the record for export."""
    where = f"{source}:{line}"
    mes = _st_text(obj, "mes", source, line, "")
    if "mes" not in obj:
        raise StoreError(f"{where}: field 'mes' is missing (every message line needs it)")
    for key in ("is_user", "is_system"):
        if key in obj and not isinstance(obj[key], bool):
            raise StoreError(f"{where}: field {key!r} must be true or false")
    texts = obj.get("swipes") or [mes]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise StoreError(f"{where}: field 'swipes' must be a list of texts")
    swipe_id = obj.get("swipe_id", 0)
    if not isinstance(swipe_id, int) or isinstance(swipe_id, bool) \
            or not 0 <= swipe_id < len(texts):
        raise StoreError(f"{where}: field 'swipe_id' must be an index into 'swipes' "
                         f"(0..{len(texts) - 1}), got {swipe_id!r}")
    texts = list(texts)
    texts[swipe_id] = mes  # SillyTavern shows `mes`; it is the truth when the two differ
    ours = _limamono_extra(obj, where)
    infos = obj.get("swipe_info") if isinstance(obj.get("swipe_info"), list) else []
    cuts, reasons = ours.get("cuts", []), ours.get("finish_reasons", [])
    swipes = [Swipe(t, _at(cuts, i), _at(reasons, i),
                    infos[i] if i < len(infos) and isinstance(infos[i], dict) else {})
              for i, t in enumerate(texts)]
    message = ChatMessage("user" if obj.get("is_user") else "char", swipes, swipe_id,
                          ours.get("length"), bool(obj.get("is_system", False)),
                          str(obj.get("send_date", "")))
    message.extra = {ST_KEY: {"raw": obj, "seen": _message_fields(message, user_name,
                                                                   char_name)}}
    return message


def _limamono_extra(obj: dict[str, Any], where: str) -> dict[str, Any]:
    extra = obj.get("extra")
    ours = extra.get("limamono", {}) if isinstance(extra, dict) else {}
    if not isinstance(ours, dict):
        raise StoreError(f"{where}: field 'extra.limamono' must be an object")
    if ours.get("length") is not None and ours["length"] not in LENGTHS:
        raise StoreError(f"{where}: field 'extra.limamono.length' must be one of "
                         f"{', '.join(LENGTHS)}, got {ours['length']!r}")
    return ours


def _at(items: Any, i: int) -> Any:
    return items[i] if isinstance(items, list) and i < len(items) else None


def _header_fields(user_name: str, char_name: str) -> dict[str, Any]:
    return {"user_name": user_name, "character_name": char_name}


def _message_fields(message: ChatMessage, user_name: str, char_name: str) -> dict[str, Any]:
    """The SillyTavern fields limamono models, as it would write them for ``message``."""
    fields: dict[str, Any] = {
        "name": user_name if message.role == "user" else char_name,
        "is_user": message.role == "user",
        "is_system": message.hidden,
        "send_date": message.send_date,
        "mes": message.text,
        "swipes": [s.text for s in message.swipes],
        "swipe_id": message.swipe_id,
    }
    ours: dict[str, Any] = {}
    if message.length is not None:
        ours["length"] = message.length
    if any(s.cut for s in message.swipes):
        ours["cuts"] = [s.cut for s in message.swipes]
    if any(s.finish_reason for s in message.swipes):
        ours["finish_reasons"] = [s.finish_reason for s in message.swipes]
    if ours:
        fields["limamono"] = ours
    if any(s.info for s in message.swipes):
        fields["swipe_info"] = [s.info for s in message.swipes]
    return fields


def _export_message(message: ChatMessage, user_name: str, char_name: str) -> dict[str, Any]:
    kept = message.extra.get(ST_KEY, {})
    raw, seen = kept.get("raw"), kept.get("seen", {})
    fields = _message_fields(message, user_name, char_name)
    ours = fields.pop("limamono", None)
    if raw is None:  # written by limamono: SillyTavern's usual keys
        raw = {"extra": {}}
    out = _merge(raw, seen, fields)
    if ours != seen.get("limamono"):
        extra = dict(out.get("extra") or {})
        extra.pop("limamono", None)
        if ours:
            extra["limamono"] = ours
        out["extra"] = extra
    return out


def _merge(raw: dict[str, Any], seen: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every field that changed since import replaced by its new value."""
    out = dict(raw)
    for key, value in fields.items():
        if key in seen and seen[key] == value:
            continue  # unchanged since import: keep what the file had (or did not have)
        if key not in seen and key not in raw and value in ([], {}, None):
            continue
        out[key] = value
    return out
