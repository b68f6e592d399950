"""A fast, bounded reader of a GGUF file's header: metadata and tensor shapes, no weights.

Written by hand because ``gguf.GGUFReader`` builds a numpy view of every array element
of the metadata: the SmolLM2 file's 49,152 tokens and 48,900 merges take it 5-35 s on this
machine, too slow for a check before every model load. This reader skips long arrays by
their length and keeps only scalars, short scalar arrays and the tensor infos. Every
count and length is bounded by the file's size, so a hostile header cannot make it loop
or allocate. The layout is GGUF v2/v3 as ggml's ``gguf.md`` describes it (little-endian).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: GGUF value types: id -> (struct format, size) for the fixed-size ones.
_FIXED = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
          6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9
#: Arrays of scalars up to this length are kept (per-layer head counts); longer ones and
#: string arrays (the vocabulary) are skipped, their length kept.
KEEP_ARRAY = 4096
MAX_DIMS = 8


class GGUFHeaderError(ValueError):
    """The bytes are not a GGUF header this reader understands (the message says where)."""


@dataclass(frozen=True)
class SkippedArray:
    """An array the reader did not keep: its element type and length."""

    element_type: int
    length: int


@dataclass
class GGUFHeader:
    """``metadata``: key -> value (int, float, bool, str, list, or :class:`SkippedArray`);
    ``tensors``: name -> shape in GGUF order (``ne``: the innermost dimension first)."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)


class _Cursor:
    def __init__(self, data: Any) -> None:
        self.data, self.pos, self.size = data, 0, len(data)

    def take(self, n: int) -> Any:
        if n < 0 or self.pos + n > self.size:
            raise GGUFHeaderError(f"truncated at byte {self.pos} (wanted {n} more bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise GGUFHeaderError(f"truncated at byte {self.pos} (wanted {n} more bytes)")
        self.pos += n

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        length = self.unpack("<Q", 8)
        return bytes(self.take(length)).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.unpack("<Q", 8))

    def value(self, kind: int) -> Any:
        if kind in _FIXED:
            return self.unpack(*_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, length = self.unpack("<I", 4), self.unpack("<Q", 8)
            if element in _FIXED:
                size = _FIXED[element][1]
                if length <= KEEP_ARRAY:
                    return [self.unpack(_FIXED[element][0], size) for _ in range(length)]
                self.skip(length * size)
                return SkippedArray(element, length)
            if element == _STRING:
                if length > self.size // 8:  # each string takes at least its 8-byte length
                    raise GGUFHeaderError(f"an array claims {length} strings, more than the "
                                          "file can hold")
                for _ in range(length):
                    self.skip_string()
                return SkippedArray(element, length)
            raise GGUFHeaderError(f"array of unknown value type {element} at byte {self.pos}")
        raise GGUFHeaderError(f"unknown value type {kind} at byte {self.pos}")


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor shapes of the GGUF file at ``path``.

    Raises:
        OSError: the file cannot be read.
        GGUFHeaderError: not GGUF, an unsupported version, or a damaged header.
    """
    with open(path, "rb") as handle:
        try:
            data: Any = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
    try:
        return _parse(_Cursor(data))
    except struct.error as exc:  # pragma: no cover - take() checks lengths first
        raise GGUFHeaderError(str(exc)) from exc
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _parse(cur: _Cursor) -> GGUFHeader:
    if cur.size < 24 or bytes(cur.take(4)) != b"GGUF":
        raise GGUFHeaderError("no GGUF magic at the start")
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise GGUFHeaderError(f"GGUF version {version} (only 2 and 3 are read)")
    tensors, kvs = cur.unpack("<Q", 8), cur.unpack("<Q", 8)
    if tensors > cur.size // 24 or kvs > cur.size // 12:  # each takes at least that many
        raise GGUFHeaderError(f"claims {kvs} metadata keys and {tensors} tensors, more than "
                              f"its {cur.size} bytes can hold")
    header = GGUFHeader(version)
    for _ in range(kvs):
        key = cur.string()
        header.metadata[key] = cur.value(cur.unpack("<I", 4))
    for _ in range(tensors):
        name = cur.string()
        dims = cur.unpack("<I", 4)
        if dims > MAX_DIMS:
            raise GGUFHeaderError(f"tensor {name[:80]!r} claims {dims} dimensions")
        header.tensors[name] = tuple(cur.unpack("<Q", 8) for _ in range(dims))
        cur.skip(4 + 8)  # type, offset
    return header
