"""What the samplers need to know about a tokenizer: size, EOS, the text of each token.

DRY's sequence breakers, XTC's newline exclusion and banned strings are given as text; the
chain turns them into token ids through a :class:`Vocabulary`, which any engine can build
(the torch engine from a transformers tokenizer, a llama.cpp engine from its own). Tables
derived from it are cached on the instance, so a server pays for them once per setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A DRY breaker table: head token -> the token tails that complete a breaker after it
#: (an empty tail: the head alone is a breaker).
BreakerTable = dict[int, tuple[tuple[int, ...], ...]]

#: KoboldCpp bounds breakers (``gpttype_adapter.cpp``: ``MAX_CHAR_LEN``, ``MAX_SEQ_LEN``)
#: so that a crafted breaker cannot make DRY slow.
KOBOLDCPP_BREAKER_CHARS, KOBOLDCPP_BREAKER_TAIL = 40, 20
#: Derived tables kept per vocabulary.
CACHE_SIZE = 32


@dataclass(eq=False)
class Vocabulary:
    """A tokenizer seen by the samplers.

    Args:
        size: Number of token ids (the logits' length).
        encode: Text -> token ids, no special tokens added.
        token_pieces: The text of every token id (index = id), special tokens included, or
            a function that returns it (called once, when a sampler first needs it).
        eos_ids: End-of-sequence ids.
    """

    size: int
    encode: Callable[[str], list[int]]
    token_pieces: Sequence[str] | Callable[[], Sequence[str]]
    eos_ids: frozenset[int] = frozenset()
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def pieces(self) -> Sequence[str]:
        """The text of every token id."""
        if callable(self.token_pieces):
            self.token_pieces = list(self.token_pieces())
        return self.token_pieces

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per ``key`` for this vocabulary (the newest ``CACHE_SIZE`` kept,
        so clients that vary their breakers cannot grow it without bound)."""
        if key not in self._cache:
            while len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = build()
        return self._cache[key]

    def newline_id(self) -> int | None:
        """The token text-generation-webui takes as "newline": the last of ``encode("\\n")``."""
        def last_id() -> int | None:
            ids = self.encode("\n")
            return ids[-1] if ids else None

        return self.cached("newline", last_id)

    def textgen_breakers(self, breakers: tuple[str, ...]) -> BreakerTable:
        """text-generation-webui's breakers: the last token of ``encode("a" + s)`` each.

        Only that one token breaks a repeat (``sampler_hijack.py``: the ``a`` prefix gives
        the token a word-internal breaker has at the end of a text).
        """
        def build() -> BreakerTable:
            heads = {self.encode("a" + s)[-1] for s in breakers if self.encode("a" + s)}
            return {head: ((),) for head in heads}
        return self.cached(("textgen_breakers", breakers), build)

    def koboldcpp_breakers(self, breakers: tuple[str, ...]) -> BreakerTable:
        """KoboldCpp's breakers (``GetOverlappingTokenSequences``), as a head -> tails table.

        Every token whose text contains a breaker is a head on its own. A token whose text
        ends with a proper prefix of a breaker is a head whose tail is the tokenised rest
        (at most 20 tokens); a breaker made only of non-ASCII characters gets no such
        partial heads (KoboldCpp skips them for multi-byte text). Breakers are cut to 40
        characters.
        """
        return self.cached(("koboldcpp_breakers", breakers),
                           lambda: _overlapping_sequences(self, breakers))


def _overlapping_sequences(vocab: Vocabulary, breakers: tuple[str, ...]) -> BreakerTable:
    table: dict[int, list[tuple[int, ...]]] = {}
    for text in breakers:
        text = text[:KOBOLDCPP_BREAKER_CHARS]
        if not text:
            continue
        partial = not all(ord(c) >= 0x80 for c in text)
        tails: dict[str, tuple[int, ...]] = {}  # rest of the breaker -> its tokens
        for token, piece in enumerate(vocab.pieces):
            if text in piece:
                _add(table, token, ())
            elif partial and piece:
                for cut in _suffix_overlaps(piece, text):
                    rest = text[cut:]
                    if rest not in tails:
                        tails[rest] = tuple(vocab.encode(rest)[:KOBOLDCPP_BREAKER_TAIL])
                    _add(table, token, tails[rest])
    return {head: tuple(found) for head, found in table.items()}


def _suffix_overlaps(piece: str, text: str) -> list[int]:
    """Lengths ``k`` (0 < k < len(text)) with ``piece`` ending in ``text[:k]``."""
    start = piece.find(text[0])
    found = []
    while start != -1:
        k = len(piece) - start
        if k < len(text) and text.startswith(piece[start:]):
            found.append(k)
        start = piece.find(text[0], start + 1)
    return found


def _add(table: dict[int, list[tuple[int, ...]]], head: int, tail: tuple[int, ...]) -> None:
    tails = table.setdefault(head, [])
    if tail not in tails:
        tails.append(tail)
