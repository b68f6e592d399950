"""Quality rules for drafted conversations: ids, and the checks that look at one turn.

Drafted text (a base model writing both sides, SPEC §8) has failure modes the style rules
do not see: a phrase repeated inside a turn, stock phrases, an assistant's voice or a
refusal, the character narrating the user's actions, and a turn whose length does not match
its label. Each check here takes one turn and returns ``TurnFinding`` values; the checks that
compare turns across a dataset live in ``limamono.dataset.quality``. Every rule has a stable
id (``DQ...``) like the style rules (``LM...``); all are warnings, since a person decides.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS
from limamono.quality.slop import Phrase, find_phrases


@dataclass(frozen=True)
class QualityRule:
    """A quality rule: stable id, short name and what it finds."""

    id: str
    name: str
    description: str


#: Every quality rule by id.
QUALITY_RULES: dict[str, QualityRule] = {r.id: r for r in (
    QualityRule("DQ001", "duplicate-turn",
                "A turn that repeats another turn of the dataset word for word."),
    QualityRule("DQ002", "near-duplicate-turn",
                "A turn whose word 3-grams overlap another turn's by the Jaccard threshold."),
    QualityRule("DQ010", "repeated-ngram",
                "A sequence of words that occurs more than once inside one turn."),
    QualityRule("DQ020", "stock-phrase",
                "A phrase from the stock-phrase list (limamono/data/slop.txt)."),
    QualityRule("DQ030", "assistant-speak",
                "Chat-assistant phrasing ('As an AI', 'How can I help you') in a roleplay turn."),
    QualityRule("DQ031", "refusal", "A refusal ('I can't help with that') in a roleplay turn."),
    QualityRule("DQ040", "speaks-for-user",
                "A line of a character turn that starts with the user's name: the character "
                "narrates the user's actions."),
    QualityRule("DQ050", "length-label",
                "A turn whose word count is outside the bounds of its length label."),
    QualityRule("DQ060", "thought-rate",
                "The share of character turns with a _thought_ is outside the target band."),
)}

#: DQ010 fires for (n-gram size, least count): four words three times, or eight words twice.
#: Tuned on the hand-written examples/ conversations, where neither occurs (a five-word
#: sequence twice occurs in 13 of 215 turns there: "two thousand three hundred and").
REPEAT_TIERS: tuple[tuple[int, int], ...] = ((4, 3), (8, 2))
_WORD = re.compile(r"[\w]+(?:['’][\w]+)*")

_ASSISTANT = [re.compile(p, re.IGNORECASE) for p in (
    r"\bas an? (?:AI|artificial intelligence|language model|assistant)\b",
    r"\b(?:AI|large) language model\b",
    r"\bhow (?:can|may) I (?:help|assist) you\b",
    r"\bis there anything else (?:I can|you(?:'|’)d like)\b",
    r"\bI(?:'|’)?m here to (?:help|assist)\b|\bI am here to (?:help|assist)\b",
    r"\bI hope (?:this|that) helps\b",
    r"\bfeel free to (?:ask|let me know|reach out)\b",
    r"\b(?:certainly|sure|of course)[!,.] here(?:'|’)?s\b",
    r"\bhere (?:is|are) (?:a|an|the|your) (?:story|response|continuation|revised|rewritten)\b",
)]
_REFUSAL = [re.compile(p, re.IGNORECASE) for p in (
    r"\bI(?:'|’)?m sorry,? but I (?:can(?:'|’)?t|cannot|am unable|won(?:'|’)t)\b",
    r"\bI (?:can(?:'|’)?t|cannot|won(?:'|’)t) (?:help|assist|comply|fulfil+|continue|provide|"
    r"create|write|generate|engage)(?: with)? (?:that|this|your request)\b",
    r"\bI(?:'|’)?m (?:not able|unable) to (?:help|assist|comply|fulfil+|continue|provide|"
    r"generate|write)\b",
    r"\b(?:against|violates?) (?:my|the|our) (?:guidelines|polic(?:y|ies)|content policy)\b",
    r"\bas a responsible (?:AI|assistant|language model)\b",
)]


@dataclass(frozen=True)
class TurnFinding:
    """What a check found in one turn: the rule id and a message naming the evidence."""

    rule: str
    message: str


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, inner apostrophes), punctuation dropped."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def repeated_ngrams(text: str, n: int, min_count: int = 2) -> list[tuple[str, int]]:
    """Word n-grams that occur at least ``min_count`` times, with their counts, in
    first-seen order."""
    seq = words(text)
    counts = Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))
    return [(" ".join(gram), c) for gram, c in counts.items() if c >= min_count]


def assistant_speak(text: str) -> list[str]:
    """The assistant phrasings in ``text``, as written, in order."""
    return _matches(_ASSISTANT, text)


def refusals(text: str) -> list[str]:
    """The refusal phrasings in ``text``, as written, in order."""
    return _matches(_REFUSAL, text)


def _matches(patterns: Sequence[re.Pattern[str]], text: str) -> list[str]:
    found = sorted((m.start(), m.group(0)) for p in patterns for m in p.finditer(text))
    return [t for _, t in found]


def speaks_for_user(text: str, user_name: str) -> list[int]:
    """Offsets of the lines that start with ``user_name`` as a word (``Tom nodded``,
    ``Tom's hand``), leading spaces allowed. ``Tom:`` lines are not counted: writing the
    user's whole turn is impersonation (style rule LM021)."""
    if not user_name.strip():
        return []
    pattern = re.compile(rf"(?m)^[ \t]*{re.escape(user_name)}(?![\w:])")
    return [m.start() for m in pattern.finditer(text)]


def label_range(label: str, bounds: Sequence[int] = fmt.DEFAULT_LENGTH_BOUNDS
                ) -> tuple[int, int | None]:
    """The word counts a length label covers: ``(low, high)``, high None for the last."""
    fmt.length_for_words(0, bounds)  # validates the bounds
    i = LENGTHS.index(label)
    low = 0 if i == 0 else bounds[i - 1] + 1
    return low, bounds[i] if i < len(bounds) else None


def check_turn(text: str, role: str, *, user_name: str, length: str | None = None,
               phrases: Sequence[Phrase] | None = None,
               bounds: Sequence[int] = fmt.DEFAULT_LENGTH_BOUNDS) -> list[TurnFinding]:
    """The one-turn quality checks (DQ010, DQ020, DQ030, DQ031, DQ040, DQ050), in id order.

    Args:
        text: the turn's text (no ``Name:`` prefix).
        role: ``char`` or ``user``; DQ040 applies to character turns only.
        user_name: the user's name.
        length: the turn's length label, if any.
        phrases: the stock-phrase list (default: the shipped one).
        bounds: the length labels' upper word bounds.
    """
    out = []
    for n, min_count in REPEAT_TIERS:
        repeats = repeated_ngrams(text, n, min_count)
        if repeats:
            gram, count = max(repeats, key=lambda r: r[1])  # the first of the most repeated
            more = (f" (and {len(repeats) - 1} more {n}-word sequences)"
                    if len(repeats) > 1 else "")
            out.append(TurnFinding("DQ010", f"'{gram}' occurs {count} times{more}"))
            break
    hits = find_phrases(text, phrases)
    if hits:
        listed = ", ".join(f"'{h.matched}'" for h in hits)
        out.append(TurnFinding("DQ020", f"stock phrase(s): {listed}"))
    for rule, found in (("DQ030", assistant_speak(text)), ("DQ031", refusals(text))):
        if found:
            out.append(TurnFinding(rule, ", ".join(f"'{t}'" for t in found)))
    if role == "char":
        lines = speaks_for_user(text, user_name)
        if lines:
            out.append(TurnFinding("DQ040", f"{len(lines)} line(s) start with {user_name!r}: "
                                   f"the character acts for the user; cut or rewrite them"))
    if length is not None:
        count = fmt.word_count(text)
        low, high = label_range(length, bounds)
        if count < low or (high is not None and count > high):
            span = f"{low}+" if high is None else f"{low}-{high}"
            out.append(TurnFinding("DQ050", f"labelled {length} ({span} words) but has {count} "
                                   f"words ({fmt.length_for_words(count, bounds)})"))
    return out
