"""The one card error type and the hard limits that keep hostile card files cheap to reject."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


class CardError(ValueError):
    """A card file (or sheet) that cannot be read or written.

    Every failure of the card readers is this one type, so callers (the CLI, the server, the
    linter) catch one thing and show one readable line, never a traceback.

    Attributes:
        path: the file (or name given to ``read_card_bytes``) the problem is in.
        reason: what is wrong and, where there is one, the fix.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotACard(CardError):
    """A file that holds no card at all (JSON without ``spec`` or ``name``, a PNG without
    card chunks): some other file, which a tool walking a folder may skip."""


@dataclass(frozen=True)
class CardLimits:
    """Ceilings on what a card file may make the reader do.

    The defaults allow every real card we know of (the largest, with lorebooks and an
    avatar, are a few MB) while bounding memory and time for hostile files. Pillow's own
    ceiling (1 MiB per compressed text chunk) is too low for big lorebooks, so these are
    ours, raised deliberately but never unlimited.

    Attributes:
        max_file_bytes: largest card file read at all (checked before reading it).
        max_chunk_bytes: largest single PNG chunk.
        max_text_bytes: largest decompressed zTXt/iTXt value and largest card JSON.
        max_text_chunks: most tEXt/zTXt/iTXt chunks in one PNG.
        max_json_depth: deepest nesting of card JSON (real cards, lorebooks included,
            stay under 10).
    """

    max_file_bytes: int = 20 * MIB
    max_chunk_bytes: int = 20 * MIB
    max_text_bytes: int = 16 * MIB
    max_text_chunks: int = 1024
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_chunk_bytes", "max_text_bytes", "max_text_chunks",
                     "max_json_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"CardLimits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = CardLimits()
