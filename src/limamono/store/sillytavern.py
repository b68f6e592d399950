"""SillyTavern chat JSONL: parse, import into the store, export, write without data loss.

A SillyTavern chat file has a header line (``user_name``, ``character_name``,
``create_date``, ``chat_metadata``), then one message a line. Files round-trip: each
imported record is kept as it was, together with what limamono read from it, and export
writes it back unchanged unless limamono changed what it models (text, swipes, speaker,
date), so fields limamono does not know survive. A file that fails to parse is reported
with its line and never written over.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from limamono.core.conversation import LENGTHS, Character, Conversation, Message, Swipe, User
from limamono.store.db import ChatStore, StoreError
from limamono.util import atomic, untrusted

#: Where the imported record and what limamono read from it are kept (``meta`` of the
#: chat and of each message).
ST_KEY = "sillytavern"

#: The character's name when the file names none.
UNNAMED_CHARACTER = "Character"

#: The largest chat file ``chats import`` reads (``--max-mb`` raises it): the import itself
#: streams at any size, but a chat of millions of messages would not open afterwards.
MAX_IMPORT_BYTES = 256 * 2**20


def parse_sillytavern(text: str, source: str = "<string>") -> Conversation:
    """Parse SillyTavern chat JSONL (a BOM is tolerated) into a chat.

    The chat has the file's user and character names (no sheet: the file has none), its
    ``create_date`` as ``created``, and the header in ``meta`` for export.

    Raises:
        StoreError: naming the line and field at fault; nothing is guessed or skipped.
    """
    lines = ((n, line.rstrip("\r")) for n, line in
             enumerate(text.removeprefix("\ufeff").split("\n"), start=1) if line.strip())
    chat, messages = stream_sillytavern(lines, source)
    chat.messages = list(messages)
    return chat


def stream_sillytavern(lines: Iterable[tuple[int, str]],
                       source: str) -> tuple[Conversation, Iterator[Message]]:
    """A chat from its numbered non-blank lines: the header is read at once, the messages
    as the returned iterator is consumed (so a file of any size is held one line at a time).

    Raises:
        StoreError: the header is missing or bad (at once), or a message is (when reached).
    """
    numbered = iter(lines)
    first = next(numbered, None)
    if first is None:
        raise StoreError(f"{source}: the file is empty (expected a header line, then messages)")
    header_line, header = first[0], _json_object(first[1], source, first[0])
    if "mes" in header or not ({"user_name", "character_name"} & header.keys()):
        raise StoreError(f"{source}:{header_line}: expected the chat header "
                         "({user_name, character_name, create_date, chat_metadata}) first")
    user_name = _st_text(header, "user_name", source, header_line, "User")
    char_name = _st_text(header, "character_name", source, header_line, "")
    seen = _header_fields(user_name, char_name)
    chat = Conversation(Character(char_name or UNNAMED_CHARACTER), User(user_name),
                        messages=[], meta={ST_KEY: {"raw": header, "seen": seen}},
                        created=str(header.get("create_date", "")))
    messages = (_st_message(_json_object(line, source, n), source, n, user_name, char_name)
                for n, line in numbered)
    return chat, messages


def export_sillytavern(chat: Conversation) -> str:
    """SillyTavern chat JSONL for a chat (``JSON.stringify`` spacing, no final newline)."""
    kept = chat.meta.get(ST_KEY, {})
    header = _merge(kept.get("raw", {"create_date": chat.created, "chat_metadata": {}}),
                    kept.get("seen", {}), _header_fields(chat.user.name, chat.character.name))
    lines = [header] + [_export_message(m, chat.user.name, chat.character.name)
                        for m in chat.messages]
    return "\n".join(json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"),
                                allow_nan=False) for obj in lines)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null, as ``JSON.stringify`` writes them (a chat
    stored before imports refused them must still export as valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def import_sillytavern(store: ChatStore, path: str | os.PathLike[str],
                       character: Character | None = None, scenario: str = "",
                       max_bytes: int = MAX_IMPORT_BYTES) -> int:
    """Import a SillyTavern chat file as a new chat; return its id.

    The file is read a line at a time and its messages saved as they are read, in one
    transaction (a bad line anywhere leaves the database as it was), so memory stays
    bounded at any size; a file over ``max_bytes`` is refused before it is read.

    Args:
        store: the database.
        path: the ``.jsonl`` file (only read).
        character: the character sheet to chat with (default: the file's character name only).
        scenario: the sheet's scenario, with ``character``.
        max_bytes: the largest file accepted (``MAX_IMPORT_BYTES``).

    Raises:
        StoreError: naming the file, line and field at fault; nothing was saved.
    """
    path = Path(path)
    chat, messages = stream_sillytavern(_file_lines(path, max_bytes), str(path))
    if character is not None:
        chat.character, chat.scenario = character, scenario
    chat.title = path.stem
    return store.create_chat(chat, source=str(path), messages=messages)


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, text)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise StoreError(f"{path}: cannot write ({getattr(exc, 'strerror', None) or exc}); "
                         "nothing was replaced") from None


def _read_text(path: Path) -> str:
    try:
        return untrusted.read_text(path, MAX_IMPORT_BYTES, "chat file")
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except untrusted.UntrustedError as exc:
        raise StoreError(f"{path}: {exc.reason}") from None


def _file_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str]]:
    """The file's numbered lines (``untrusted.iter_lines``), its errors as StoreError."""
    try:
        yield from untrusted.iter_lines(path, max_bytes=max_bytes, what="chat file")
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except untrusted.UntrustedError as exc:
        where = str(path) if exc.line is None else f"{path}:{exc.line}"
        raise StoreError(f"{where}: {exc.reason}") from None


def _json_object(line: str, source: str, number: int) -> dict[str, Any]:
    try:
        obj = untrusted.load_json(line)
    except untrusted.UntrustedError as exc:
        raise StoreError(f"{source}:{number}: {exc.reason}") from None
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
                char_name: str) -> Message:
    """One message record → Message, keeping the record for export."""
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
                         f"(0..{len(texts) - 1}), got {untrusted.quote(swipe_id)}")
    texts = list(texts)
    texts[swipe_id] = mes  # SillyTavern shows `mes`; it is the truth when the two differ
    ours = _limamono_extra(obj, where)
    info_field = obj.get("swipe_info")
    infos: list[Any] = info_field if isinstance(info_field, list) else []
    cuts, reasons = ours.get("cuts", []), ours.get("finish_reasons", [])
    swipes = [Swipe(t, _at(cuts, i), _at(reasons, i),
                    infos[i] if i < len(infos) and isinstance(infos[i], dict) else {})
              for i, t in enumerate(texts)]
    message = Message("user" if obj.get("is_user") else "char", length=ours.get("length"),
                      swipes=swipes, swipe_id=swipe_id,
                      hidden=bool(obj.get("is_system", False)),
                      send_date=str(obj.get("send_date", "")))
    message.meta = {ST_KEY: {"raw": obj, "seen": _message_fields(message, user_name,
                                                                  char_name)}}
    return message


def _limamono_extra(obj: dict[str, Any], where: str) -> dict[str, Any]:
    extra = obj.get("extra")
    ours = extra.get("limamono", {}) if isinstance(extra, dict) else {}
    if not isinstance(ours, dict):
        raise StoreError(f"{where}: field 'extra.limamono' must be an object")
    if ours.get("length") is not None and ours["length"] not in LENGTHS:
        raise StoreError(f"{where}: field 'extra.limamono.length' must be one of "
                         f"{', '.join(LENGTHS)}, got {untrusted.quote(ours['length'])}")
    return ours


def _at(items: Any, i: int) -> Any:
    return items[i] if isinstance(items, list) and i < len(items) else None


def _header_fields(user_name: str, char_name: str) -> dict[str, Any]:
    return {"user_name": user_name, "character_name": char_name}


def _message_fields(message: Message, user_name: str, char_name: str) -> dict[str, Any]:
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


def _export_message(message: Message, user_name: str, char_name: str) -> dict[str, Any]:
    kept = message.meta.get(ST_KEY, {})
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
