"""Reading and writing card files: PNG, JSON, and (as inputs/outputs) YAML and sheet text.

Every reader ends in ``CardError`` for anything it cannot use, and every writer is atomic
(temp file in the same folder, then ``os.replace``), so an interrupted write never leaves
half a card where a good one was.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path

from limamono.cards import png
from limamono.cards.limits import DEFAULT_LIMITS, CardError, CardLimits
from limamono.cards.model import SPEC_V2, SPEC_V3, Card, card_from_json, parse_json, to_json_obj
from limamono.cards.sheet import (
    DEFAULT_USER,
    card_to_conversation,
    card_to_sheet,
    conversation_to_card,
    sheet_to_card,
    to_house_style,
)
from limamono.util import atomic, untrusted

#: File types ``read_card`` accepts and ``export_card`` writes, by extension.
CARD_SUFFIXES = (".png", ".json")
EXPORT_SUFFIXES = (".png", ".json", ".yaml", ".yml", ".txt")

_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


def read_card(path: str | Path, limits: CardLimits = DEFAULT_LIMITS) -> Card:
    """Read a card file: PNG (``ccv3``/``chara`` in tEXt, zTXt or iTXt) or V1/V2/V3 JSON.

    ``.yaml``/``.yml`` (a conversation file) and ``.txt`` (a wiki-style sheet) are read too
    and turned into V2 cards.

    Raises:
        CardError: naming the file and the problem; the file is never read past
            ``limits.max_file_bytes``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CardError(str(path), "not a file")
        if path.suffix.lower() in (".yaml", ".yml") and size > untrusted.MAX_YAML_BYTES:
            raise CardError(str(path), _yaml_too_big(size))
        if size > limits.max_file_bytes:
            raise CardError(str(path), f"the file is {size} bytes, over the limit of "
                                       f"{limits.max_file_bytes}")
        with path.open("rb") as handle:  # bounded: the file may grow after the stat
            data = handle.read(limits.max_file_bytes + 1)
    except FileNotFoundError:
        raise CardError(str(path), "no such file") from None
    except OSError as exc:
        raise CardError(str(path), f"cannot read: {exc.strerror or exc}") from None
    return read_card_bytes(data, str(path), limits)


def read_card_bytes(data: bytes, name: str = "<card>",
                    limits: CardLimits = DEFAULT_LIMITS) -> Card:
    """Read a card from bytes (e.g. an upload); ``name`` is used in messages and its suffix
    picks YAML or sheet text. PNG and JSON are told apart by content.

    Raises:
        CardError: naming ``name`` and the problem.
    """
    if len(data) > limits.max_file_bytes:
        raise CardError(name, f"the file is {len(data)} bytes, over the limit of "
                              f"{limits.max_file_bytes}")
    suffix = Path(name).suffix.lower()
    if data.startswith(png.PNG_SIGNATURE) or suffix == ".png":
        return _read_png(data, name, limits)
    if suffix in (".yaml", ".yml", ".txt"):
        return _read_text_card(data, name, suffix)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return card_from_json(parse_json(data, name, limits), name)
    raise CardError(name, "not a card: neither a PNG nor a JSON object (expected .png, .json, "
                          ".yaml or .txt)")


def _read_png(data: bytes, name: str, limits: CardLimits) -> Card:
    chunks = png.read_chunks(data, name, limits)
    text = png.find_card_text(chunks, name, limits)
    where = f"{text.keyword!r} chunk at byte {text.chunk.offset}"
    payload = decode_base64(text.payload, name, where)
    try:
        obj = parse_json(payload, name, limits)
    except CardError as exc:
        raise CardError(name, f"{where}: {exc.reason}") from None
    card = card_from_json(obj, name)
    card.image = data
    return card


def decode_base64(payload: bytes, name: str, where: str) -> bytes:
    """Strict standard base64 (whitespace allowed, as MIME wraps it; nothing else skipped).

    Node's decoder, which SillyTavern uses, silently skips bad characters; a card with a
    broken payload is refused here instead of read as something else.
    """
    compact = _WHITESPACE.sub(b"", payload)
    if bad := _NOT_BASE64.search(compact):
        code = compact[bad.start()]
        char = repr(chr(code)) if 32 <= code < 127 else f"byte {code:#04x}"
        hint = " (URL-safe base64 is not allowed)" if code in b"-_" else ""
        raise CardError(name, f"{where}: not base64: {char} at offset {bad.start()}{hint}")
    if not _BASE64.fullmatch(compact):
        raise CardError(name, f"{where}: not base64: '=' padding at offset "
                              f"{compact.index(b'=')}, before the end")
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise CardError(name, f"{where}: not base64 ({exc}; the data is cut short or its "
                              "padding is wrong)") from None


def _yaml_too_big(size: int) -> str:
    return untrusted.too_big(size, untrusted.MAX_YAML_BYTES, "YAML file")


def _read_text_card(data: bytes, name: str, suffix: str) -> Card:
    from limamono.core.conversation import ConversationError, loads_yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(name, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    if suffix != ".txt" and len(data) > untrusted.MAX_YAML_BYTES:
        raise CardError(name, _yaml_too_big(len(data)))
    if suffix == ".txt":
        return sheet_to_card(text, name).card
    try:
        conversation = loads_yaml(text, name)
    except ConversationError as exc:
        line = f"line {exc.line}: " if exc.line is not None else ""
        field = f"field {exc.field!r}: " if exc.field else ""
        raise CardError(name, line + field + exc.reason) from None
    return conversation_to_card(conversation, name)


# --------------------------------------------------------------------------- writing

def card_png_bytes(card: Card) -> bytes:
    """The card as a PNG: its image (or a plain placeholder) with fresh ``chara``+``ccv3``.

    Old card chunks are removed and the new ones go just before IEND; every other chunk is
    copied byte for byte, so the pixels are untouched.
    """
    image = card.image or png.placeholder_png()
    # The image was checked when it was read (perhaps under raised limits); only the framing
    # is re-checked here, so a card read under custom limits can still be written.
    trusted = CardLimits(max_file_bytes=len(image), max_chunk_bytes=len(image),
                         max_text_chunks=len(image) // 12 + 1)
    chunks = png.read_chunks(image, card.source, trusted)
    new = [png.text_chunk(keyword, base64.b64encode(_compact_json(card, spec)))
           for keyword, spec in (("chara", SPEC_V2), ("ccv3", SPEC_V3))]
    return png.with_card_chunks(chunks, new, card.source)


def _compact_json(card: Card, spec: str) -> bytes:
    obj = to_json_obj(card, spec)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_card(card: Card, path: str | Path, spec: str | None = None) -> None:
    """Write a card to ``.png`` (image kept, both card chunks) or ``.json`` (V2, or V3 if it
    was V3 or ``spec`` says so), atomically.

    Raises:
        CardError: an unsupported extension, or the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        data = card_png_bytes(card)
    elif suffix == ".json":
        text = json.dumps(to_json_obj(card, spec), ensure_ascii=False, indent=2) + "\n"
        data = text.encode("utf-8")
    else:
        kind = suffix or "a file without an extension"
        raise CardError(str(path), f"cannot write a card as {kind} (use .png or .json)")
    atomic_write(path, data)


def export_card(card: Card, path: str | Path, user_name: str = DEFAULT_USER,
                house_style: bool = False) -> None:
    """Write a card in the format its extension names (what ``limamono card convert`` does).

    ``.png``/``.json``: the card (``write_card``); ``.yaml``/``.yml``: the conversation header
    (``card_to_conversation``); ``.txt``: the wiki-style sheet. ``house_style`` converts the
    prose first, for every format.

    Raises:
        CardError: unknown extension, or the file cannot be written.
    """
    from limamono.core.conversation import dump_yaml

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise CardError(str(path), f"unknown output type {suffix or '(no extension)'!r} "
                                   f"(expected one of {', '.join(EXPORT_SUFFIXES)})")
    if house_style:
        card = to_house_style(card)
    if suffix in CARD_SUFFIXES:
        write_card(card, path)
    elif suffix == ".txt":
        atomic_write(path, (card_to_sheet(card, user_name) + "\n").encode("utf-8"))
    else:
        text = dump_yaml(card_to_conversation(card, user_name))
        atomic_write(path, text.encode("utf-8"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (``limamono.util.atomic``), as a CardError on failure.

    Raises:
        CardError: the folder does not exist or cannot be written.
    """
    try:
        atomic.write_bytes(path, data)
    except OSError as exc:
        raise CardError(str(path), f"cannot write: {exc.strerror or exc}") from None
