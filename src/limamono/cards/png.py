"""PNG chunk walking for character cards: strict, bounded, and without decoding any pixels.

Why not Pillow's text chunks: Pillow hides which chunk is broken (a zTXt with bad zlib data
silently becomes ``""``, a broken iTXt is dropped, so a corrupt card reads as "no card"),
reading chunks after IDAT makes it decode every pixel (a 20k x 20k IHDR is a decompression
bomb), and its text ceilings (1 MiB per chunk, 64 MiB in all) are not ours. Walking the
chunks with ``struct`` and ``zlib`` lets every error name the chunk and its byte offset and
keeps every allocation under ``CardLimits``. Pillow is still used to *make* images.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from limamono.cards.limits import CardError, CardLimits, NotACard

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Card keywords in order of preference (the V3 spec: prefer ``ccv3`` when both exist).
CARD_KEYWORDS: tuple[str, ...] = ("ccv3", "chara")
TEXT_TYPES: tuple[bytes, ...] = (b"tEXt", b"zTXt", b"iTXt")
#: The PNG spec caps a chunk length at 2**31 - 1.
_MAX_PNG_LENGTH = 0x7FFFFFFF
_HEADER = struct.Struct(">I4s")


@dataclass(frozen=True)
class Chunk:
    """One PNG chunk: its 4-letter type, its data and where its length field starts."""

    type: bytes
    data: bytes
    offset: int = -1

    @property
    def name(self) -> str:
        """The type as text, for messages."""
        return self.type.decode("latin-1")

    def encode(self) -> bytes:
        """The chunk as it sits in a file: length, type, data, CRC."""
        crc = zlib.crc32(self.type + self.data) & 0xFFFFFFFF
        return _HEADER.pack(len(self.data), self.type) + self.data + struct.pack(">I", crc)


@dataclass(frozen=True)
class CardText:
    """The raw payload of a card chunk (base64 text, still undecoded) and where it came from."""

    keyword: str
    payload: bytes
    chunk: Chunk


def read_chunks(data: bytes, source: str, limits: CardLimits) -> list[Chunk]:
    """Split a PNG file into chunks, checking signature, lengths, CRCs and the IHDR..IEND frame.

    Raises:
        CardError: naming the chunk and byte offset of the first problem.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise CardError(source, "not a PNG file (the 8-byte PNG signature is missing)")
    chunks: list[Chunk] = []
    texts = 0
    pos = len(PNG_SIGNATURE)
    while True:
        chunk = _read_chunk(data, pos, source, limits)
        if not chunks and chunk.type != b"IHDR":
            raise CardError(source, f"the first chunk is {chunk.name!r}, not 'IHDR' "
                                    "(not a valid PNG)")
        if chunk.type in TEXT_TYPES:
            texts += 1
            if texts > limits.max_text_chunks:
                raise CardError(source, f"more than {limits.max_text_chunks} text chunks "
                                        "(refused as hostile)")
        chunks.append(chunk)
        pos += 12 + len(chunk.data)
        if chunk.type == b"IEND":
            break
    if pos != len(data):
        raise CardError(source, f"{len(data) - pos} bytes of data after the IEND chunk at byte "
                                f"{chunks[-1].offset} (chunks after IEND are not allowed)")
    return chunks


def _read_chunk(data: bytes, pos: int, source: str, limits: CardLimits) -> Chunk:
    if pos == len(data):
        raise CardError(source, f"truncated file: it ends at byte {pos} without an IEND chunk")
    if pos + 8 > len(data):
        raise CardError(source, f"truncated file: the chunk at byte {pos} is cut short")
    length, kind = _HEADER.unpack_from(data, pos)
    shown = kind.decode("latin-1")
    if not kind.isalpha():  # bytes.isalpha is ASCII letters only
        raise CardError(source, f"bad chunk type {shown!r} at byte {pos} (corrupt PNG)")
    if length > _MAX_PNG_LENGTH:
        raise CardError(source, f"chunk {shown!r} at byte {pos} declares {length} bytes, "
                                f"over the PNG maximum of {_MAX_PNG_LENGTH}")
    if length > limits.max_chunk_bytes:
        raise CardError(source, f"chunk {shown!r} at byte {pos} is {length} bytes, over the "
                                f"limit of {limits.max_chunk_bytes}")
    end = pos + 12 + length
    if end > len(data):
        raise CardError(source, f"truncated file: chunk {shown!r} at byte {pos} declares "
                                f"{length} bytes but only {max(len(data) - pos - 12, 0)} "
                                "remain")
    body = data[pos + 8:pos + 8 + length]
    (stored,) = struct.unpack_from(">I", data, pos + 8 + length)
    computed = zlib.crc32(kind + body) & 0xFFFFFFFF
    if stored != computed:
        raise CardError(source, f"bad CRC in chunk {shown!r} at byte {pos} (stored "
                                f"{stored:#010x}, computed {computed:#010x}): the file is "
                                "corrupt; re-export the card")
    return Chunk(kind, body, pos)


def find_card_text(chunks: list[Chunk], source: str, limits: CardLimits) -> CardText:
    """The card payload: the ``ccv3`` chunk if there is one, else ``chara``.

    tEXt, zTXt and iTXt chunks all count (some sites ship cards in zTXt). Two chunks with
    the same card keyword are refused rather than guessed between.

    Raises:
        CardError: no card chunk, duplicate card chunks, or a broken text chunk.
    """
    found: dict[str, CardText] = {}
    for chunk in chunks:
        if chunk.type not in TEXT_TYPES:
            continue
        keyword = _keyword(chunk, source)
        key = keyword.lower()
        if key not in CARD_KEYWORDS:
            continue
        if key in found:
            raise CardError(source, f"two {key!r} card chunks (bytes {found[key].chunk.offset} "
                                    f"and {chunk.offset}); keep one and re-export")
        found[key] = CardText(key, _text_value(chunk, source, limits), chunk)
    for key in CARD_KEYWORDS:
        if key in found:
            return found[key]
    raise NotACard(source, "no character card in this PNG (no 'chara' or 'ccv3' text chunk)")


def _keyword(chunk: Chunk, source: str) -> str:
    keyword, sep, _ = chunk.data.partition(b"\0")
    if not sep or not 1 <= len(keyword) <= 79:
        raise CardError(source, f"malformed {chunk.name} chunk at byte {chunk.offset}: no "
                                "keyword of 1-79 bytes followed by a NUL byte")
    return keyword.decode("latin-1")


def _text_value(chunk: Chunk, source: str, limits: CardLimits) -> bytes:
    """The value bytes of a text chunk, inflated (within limits) when compressed."""
    rest = chunk.data.partition(b"\0")[2]
    where = f"{chunk.name} chunk at byte {chunk.offset}"
    if chunk.type == b"tEXt":
        return rest
    if chunk.type == b"zTXt":
        if not rest or rest[0] != 0:
            raise CardError(source, f"{where}: unknown compression method (only zlib, 0)")
        return inflate(rest[1:], limits.max_text_bytes, source, where)
    if len(rest) < 2 or rest[0] not in (0, 1) or rest[1] != 0:
        raise CardError(source, f"{where}: bad compression flag or method")
    flag = rest[0]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise CardError(source, f"{where}: missing language tag or translated keyword")
    text = parts[2]
    return inflate(text, limits.max_text_bytes, source, where) if flag else text


def inflate(data: bytes, limit: int, source: str, where: str) -> bytes:
    """zlib-decompress at most ``limit`` bytes; a bomb is refused after ``limit``, not after 1 GB.

    Raises:
        CardError: the data is not zlib, is cut short, or expands past ``limit``.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CardError(source, f"{where}: compressed data is corrupt ({exc})") from None
    if len(out) > limit:
        raise CardError(source, f"{where}: decompresses to more than {limit} bytes "
                                "(refused as a decompression bomb)")
    if not inflater.eof:
        raise CardError(source, f"{where}: compressed data is cut short")
    return out


def image_size(chunks: list[Chunk]) -> tuple[int, int]:
    """Width and height from the IHDR chunk (no pixel is decoded)."""
    if not chunks or chunks[0].type != b"IHDR" or len(chunks[0].data) < 8:
        return (0, 0)
    width, height = struct.unpack_from(">II", chunks[0].data)
    return (width, height)


def text_chunk(keyword: str, value: bytes) -> Chunk:
    """A tEXt chunk ``keyword NUL value``."""
    return Chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value)


def with_card_chunks(chunks: list[Chunk], new: list[Chunk], source: str) -> bytes:
    """The PNG file with every old card chunk removed and ``new`` inserted before IEND.

    All other chunks (pixels, colour profiles, other text) are copied byte for byte.
    """
    kept = [c for c in chunks if not (c.type in TEXT_TYPES
                                       and _keyword(c, source).lower() in CARD_KEYWORDS)]
    body = [c for c in kept if c.type != b"IEND"]
    return PNG_SIGNATURE + b"".join(c.encode() for c in [*body, *new, Chunk(b"IEND", b"")])


def placeholder_png(size: tuple[int, int] = (400, 600)) -> bytes:
    """A plain PNG (SillyTavern's 2:3 avatar shape) for cards that come without an image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (96, 104, 120)).save(buffer, format="PNG")
    return buffer.getvalue()
