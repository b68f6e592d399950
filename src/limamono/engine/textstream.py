"""Token ids → safe text pieces: incremental detokenisation and stop strings (pure Python).

Two small state machines that the engine chains for layer 2 of generation:

- :class:`IncrementalDecoder` turns a growing list of token ids into new text, never
  emitting half of a UTF-8 character (byte-level BPE splits emoji and accents across tokens;
  a partial character decodes to U+FFFD, which is held back until it completes).
- :class:`StopMatcher` scans the text for stop strings and holds back any tail that could be
  the start of one, so the reply never contains a stop string, even split across chunks.

Both take plain callables and strings, so they are tested on hand-made sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Decode token ids one at a time into text that never ends inside a character.

    Each step decodes a short window of recent ids twice (without and with the new ones) and
    emits the difference: the window starts a few tokens back so that tokenizers whose
    decoding depends on the previous token (leading spaces in SentencePiece) decode right.
    The same idea is used by TGI and vLLM (``prefix_offset``/``read_offset``).

    Args:
        decode: Token ids → text (e.g. ``tokenizer.decode`` skipping special tokens).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this index are already emitted

    @property
    def ids(self) -> list[int]:
        """All token ids added so far."""
        return list(self._ids)

    def add(self, token_id: int) -> str:
        """Add one token id; return the newly complete text (possibly empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Text still held back at the end (an unfinished character is dropped)."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):].rstrip(REPLACEMENT_CHAR)


@dataclass(frozen=True)
class StopResult:
    """What :meth:`StopMatcher.feed` lets through.

    Attributes:
        text: Text that is safe to emit now.
        stop: The stop string found (then generation must end), else None.
    """

    text: str
    stop: str | None = None


class StopMatcher:
    """Find stop strings in streamed text, holding back tails that could begin one.

    Args:
        stops: The stop strings; empty strings are ignored.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in dict.fromkeys(stops) if s)
        self._held = ""
        self.stopped: str | None = None

    def feed(self, text: str) -> StopResult:
        """Add text; return what can be emitted and the stop string if one completed.

        After a stop string has been found, further text is ignored.
        """
        if self.stopped is not None:
            return StopResult("")
        buffer = self._held + text
        hit = self._earliest_stop(buffer)
        if hit is not None:
            index, stop = hit
            self._held, self.stopped = "", stop
            return StopResult(buffer[:index], stop)
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return StopResult(buffer[:len(buffer) - keep])

    def flush(self) -> str:
        """At the end of generation, the held-back text was not a stop string: release it."""
        held, self._held = self._held, ""
        return "" if self.stopped is not None else held

    def _earliest_stop(self, buffer: str) -> tuple[int, str] | None:
        """The earliest-starting stop string in ``buffer`` (ties: the longest)."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            index = buffer.find(stop)
            if index >= 0 and (best is None or index < best[0]
                               or (index == best[0] and len(stop) > len(best[1]))):
                best = (index, stop)
        return best

    def _partial_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        return partial_tail(buffer, self.stops)


def partial_tail(text: str, targets: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of
    ``targets``: how much text to hold back because it could still grow into one."""
    longest = 0
    for target in targets:
        for size in range(min(len(target) - 1, len(text)), longest, -1):
            if text.endswith(target[:size]):
                longest = size
                break
    return longest
