"""The stock-phrase ("slop") list and index: weighted phrase matches per 1,000 words.

The list ships as ``limamono/data/slop.txt`` (package data) and is plain text a person can
edit: one phrase per line, an optional ``| weight``, ``#`` comments, ``*`` for any one word.
``data lint`` reports the phrases of each turn and ``eval`` reports the index of the replies;
both read the list through ``load_phrases`` and match through ``find_phrases``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

#: The shipped list, inside the package.
DEFAULT_PHRASES = "slop.txt"

# One word of the text for a `*` in a phrase: letters, digits and inner apostrophes
# (her, Mira's, don't).
_ANY_WORD = r"[\w]+(?:['’][\w]+)*"


@dataclass(frozen=True)
class Phrase:
    """One entry of the list: its text as written, its weight and its compiled pattern."""

    text: str
    weight: float
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class PhraseHit:
    """A phrase found in a text: which entry, where (character offsets) and what matched."""

    phrase: Phrase
    start: int
    end: int
    matched: str


def compile_phrase(text: str) -> re.Pattern[str]:
    """The pattern of a phrase: words on word boundaries, any whitespace between them."""
    words = text.split()
    parts = [_ANY_WORD if word == "*" else re.escape(word) for word in words]
    body = r"\s+".join(parts)
    # \b only where the phrase edge is a word character ("maybe, just maybe" ends on one).
    left = r"\b" if re.match(r"\w|\*", words[0]) else ""
    right = r"\b" if re.search(r"\w$|\*$", words[-1]) else ""
    return re.compile(f"{left}{body}{right}", re.IGNORECASE)


def parse_phrases(text: str, source: str = "<phrases>") -> list[Phrase]:
    """Read a phrase list.

    Raises:
        ValueError: naming the file and line of a bad weight or an empty phrase.
    """
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        phrase, sep, weight_text = line.partition("|")
        phrase = phrase.strip()
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text.strip())
            except ValueError:
                raise ValueError(f"{source}:{number}: weight {weight_text.strip()!r} is not a "
                                 "number (write 'phrase | 2')") from None
            if weight <= 0:
                raise ValueError(f"{source}:{number}: weight must be positive, got {weight}")
        if not phrase or phrase == "*":
            raise ValueError(f"{source}:{number}: the line has no phrase")
        out.append(Phrase(phrase, weight, compile_phrase(phrase)))
    return out


def load_phrases(path: str | Path | None = None) -> list[Phrase]:
    """The phrase list at ``path``, or the shipped one when None."""
    if path is None:
        return list(_default_phrases())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the phrase list ({exc.strerror})") from None
    return parse_phrases(text, str(path))


@cache
def _default_phrases() -> tuple[Phrase, ...]:
    text = resources.files("limamono.data").joinpath(DEFAULT_PHRASES).read_text("utf-8")
    return tuple(parse_phrases(text, DEFAULT_PHRASES))


def find_phrases(text: str, phrases: Sequence[Phrase] | None = None) -> list[PhraseHit]:
    """The phrase matches in ``text``, by offset (a phrase can match many times).

    Overlapping matches count once: where two entries cover the same words ("sent shivers
    down" and "shivers down * spine"), the one that starts first (then the longer) is kept.
    """
    listed = _default_phrases() if phrases is None else phrases
    found = sorted((PhraseHit(p, m.start(), m.end(), m.group(0))
                    for p in listed for m in p.pattern.finditer(text)),
                   key=lambda h: (h.start, h.start - h.end, h.phrase.text))
    kept: list[PhraseHit] = []
    for hit in found:
        if not kept or hit.start >= kept[-1].end:
            kept.append(hit)
    return kept


def slop_score(text: str, phrases: Sequence[Phrase] | None = None) -> float:
    """The summed weights of the phrase matches in ``text``."""
    return sum(hit.phrase.weight for hit in find_phrases(text, phrases))


def slop_index(texts: Iterable[str], phrases: Sequence[Phrase] | None = None) -> float | None:
    """Weighted phrase matches per 1,000 words over all ``texts`` (None with no words)."""
    score, words = 0.0, 0
    for text in texts:
        score += slop_score(text, phrases)
        words += len(text.split())
    return score * 1000 / words if words else None
