"""Banned phrases with backtracking: layer 2's filter over the reply text (pure Python).

KoboldCpp's "anti-slop" ``banned_strings`` (and TabbyAPI's): when the reply comes to contain
a banned phrase (case-insensitive, across token boundaries), generation rewinds to the token
where the phrase began, bans that token at that position and samples again. Nothing of the
phrase is ever streamed: :class:`PhraseFilter` holds back every whole token from the first
one that could still be the start of a banned phrase, the way the stop-string matcher holds
back a possible stop string.

The filter decides; the engine's token stream (layer 1, ``TokenStream.rollback``) crops its
KV cache and resamples. After ``max_retries`` rewinds to one position the phrase is let
through there, with a logged note, so a model that insists cannot loop forever.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from limamono.engine.textstream import IncrementalDecoder, partial_tail

log = logging.getLogger("limamono.engine.torch_engine")

#: Rewinds to one reply position before a phrase is allowed there.
MAX_RETRIES = 8


def fold(text: str) -> str:
    """Lower-case ``text`` character by character, keeping its length (so offsets hold)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


@dataclass(frozen=True)
class FilterStep:
    """What :meth:`PhraseFilter.add` asks for.

    Attributes:
        text: Reply text that is now safe to stream.
        rollback: Tokens to take back (0: none); the stream must call
            ``rollback(rollback, ban={ban})`` before its next token.
        ban: The token to ban at the rewound position.
        phrase: The banned phrase that was found.
    """

    text: str = ""
    rollback: int = 0
    ban: int | None = None
    phrase: str | None = None


class PhraseFilter:
    """Track the reply's tokens and text; find banned phrases; hold back possible ones.

    Args:
        phrases: The banned phrases (matched case-insensitively; empty ones ignored).
        decode: Token ids -> text (the engine's reply decoding).
        max_retries: Rewinds to one position before the phrase is allowed there.
    """

    def __init__(self, phrases: Sequence[str], decode: Callable[[Sequence[int]], str],
                 max_retries: int = MAX_RETRIES) -> None:
        self.phrases = tuple(dict.fromkeys(fold(p) for p in phrases if p))
        self._decode = decode
        self.max_retries = max_retries
        self._decoder = IncrementalDecoder(decode)
        self._ids: list[int] = []
        self._ends: list[int] = []  # text length after each reply token
        self.text = ""
        self._released = 0  # text before this offset has been streamed
        self._retries: dict[int, int] = {}  # reply position -> rewinds to it
        self._allowed: set[int] = set()  # phrase starts let through after max_retries
        #: Tokens taken back so far (regenerated tokens, for the benchmark).
        self.rolled_back = 0

    def add(self, token: int) -> FilterStep:
        """Add one sampled token; say what to stream or to take back."""
        self._ids.append(token)
        self.text += self._decoder.add(token)
        self._ends.append(len(self.text))
        found = self._find_phrase()
        if found is not None:
            start, phrase = found
            position = bisect.bisect_right(self._ends, start)  # the token holding ``start``
            if self._retries.get(position, 0) < self.max_retries:
                self._retries[position] = self._retries.get(position, 0) + 1
                return self._rewind(position, phrase)
            self._allowed.add(start)
            log.warning("banned phrase %r allowed after %d retries at reply token %d",
                        phrase, self.max_retries, position)
        return FilterStep(self._release(self._safe_end()))

    @property
    def released_tokens(self) -> int:
        """Reply tokens whose text has been released in full (they can no longer be
        taken back)."""
        return bisect.bisect_right(self._ends, self._released)

    def flush(self) -> str:
        """At the end of the reply: the held-back text (no banned phrase completed in it)."""
        self.text += self._decoder.flush()
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        out = self.text[self._released:end]
        self._released = max(self._released, end)
        return out

    def _find_phrase(self) -> tuple[int, str] | None:
        """The earliest banned phrase in the unreleased text (start offset, phrase)."""
        if not self.phrases:
            return None
        window = fold(self.text[self._released:])
        best: tuple[int, str] | None = None
        for phrase in self.phrases:
            index = window.find(phrase)
            while index >= 0 and self._released + index in self._allowed:
                index = window.find(phrase, index + 1)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, phrase)
        return None if best is None else (self._released + best[0], best[1])

    def _safe_end(self) -> int:
        """Where the streamable text ends: before the token holding the earliest offset
        from which the text could still grow into a banned phrase."""
        window = fold(self.text[self._released:])
        hold = partial_tail(window, self.phrases)
        if hold == 0:
            return len(self.text)
        start = len(self.text) - hold
        position = bisect.bisect_right(self._ends, start)
        return min(start, self._ends[position - 1] if position else 0)

    def _rewind(self, position: int, phrase: str) -> FilterStep:
        """Drop the tokens from ``position`` on and re-decode the text before them."""
        count = len(self._ids) - position
        banned = self._ids[position]
        del self._ids[position:], self._ends[position:]
        self._decoder = IncrementalDecoder(self._decode)
        self.text = ""
        for token in self._ids:
            self.text += self._decoder.add(token)
        self._released = min(self._released, len(self.text))
        self.rolled_back += count
        self._allowed = {s for s in self._allowed if s < len(self.text)}
        return FilterStep("", count, banned, phrase)
