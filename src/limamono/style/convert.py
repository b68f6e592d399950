"""Convert chat-RP asterisk actions (``*She smiled.* "Hi."``) to the house style.

Most SillyTavern cards write narration the chat-RP way, wrapped in asterisks. The house
style writes narration bare and keeps asterisks for onomatopoeia only (``*thud*``). The
converter and the linter share one judgement, ``is_action``, so the linter never flags what
the converter keeps on purpose. The one exception is the one-word action (``*smiles*``):
the linter flags it, but only a writer can give it a subject, so the converter leaves it.
"""

from __future__ import annotations

import string

from limamono.style.spans import split_spans

#: Default number of words above which an asterisk span is an action, not a sound.
DEFAULT_MAX_SOUND_WORDS = 3

# Words that make a short span read as a sentence ("*looks at you*", "*She smiled*"),
# where onomatopoeia ("*knock knock*", "*ding dong*") has none of them.
_FUNCTION_WORDS = frozenset({
    "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "they", "them", "their",
    "we", "us", "our", "it", "its", "the", "a", "an", "to", "at", "of", "in", "on", "with", "and",
    "but", "into", "from", "for", "up", "down", "away", "back", "over",
})
_END_PUNCTUATION = ".!?,;:-\u2014\u2026\"'"
# One-word chat-RP actions ("*smiles*"): verbs in the third person, never onomatopoeia
# (the sounds are "*gasp*", "*sob*", "*thud*"; "*gasps*" is someone doing it).
_ONE_WORD_ACTIONS = frozenset({
    "smiles", "sighs", "nods", "laughs", "giggles", "chuckles", "blushes", "grins", "smirks",
    "winks", "shrugs", "hugs", "waves", "pouts", "frowns", "gasps", "blinks", "yawns", "cries",
    "sobs", "stares", "glares", "whispers", "mumbles", "mutters", "grumbles", "kisses",
    "cuddles", "snuggles", "facepalms", "bows", "leaves", "sits", "stands", "looks", "walks",
})


def is_action(inner: str, max_sound_words: int = DEFAULT_MAX_SOUND_WORDS) -> bool:
    """Whether the text of an asterisk span is an action (narration) rather than a sound.

    One word is a sound (``*thud*``, ``*BANG!*``) unless it is a common chat-RP action verb
    (``*smiles*``, ``*sighs*``); a word repeated is a sound however long (``*knock knock
    knock knock*``). Otherwise a span is an action when it has more than ``max_sound_words``
    words, ends with a full stop (``*She smiled.*``), or contains a pronoun, article or
    preposition (``*looks at you*``).

    Args:
        inner: the span text without its asterisks.
        max_sound_words: the longest sound, in words.

    Raises:
        ValueError: if ``max_sound_words`` is below 1.
    """
    if max_sound_words < 1:
        raise ValueError(f"max_sound_words must be at least 1, got {max_sound_words}")
    words = [w.strip(string.punctuation).lower() for w in inner.split()]
    words = [w for w in words if w]
    if len(words) == 1:
        return words[0] in _ONE_WORD_ACTIONS
    if len(set(words)) <= 1:
        return False
    if len(words) > max_sound_words:
        return True
    stripped = inner.rstrip()
    if stripped.endswith(".") and not stripped.endswith(".."):
        return True
    return any(w in _FUNCTION_WORDS for w in words)


def from_asterisk_style(text: str, max_sound_words: int = DEFAULT_MAX_SOUND_WORDS) -> str:
    """Rewrite chat-RP asterisk actions as bare narration, keeping sounds in asterisks.

    ``*She smiled.* "Hi."`` becomes ``She smiled. "Hi."``; ``*thud*`` stays. An action that
    reads as a sentence of its own (it starts with a capital and the next text starts a new
    sentence) but has no closing punctuation gets a full stop: ``*She waved* "Hi."`` becomes
    ``She waved. "Hi."``. A space is put back where removing an asterisk would glue two
    words together. Nothing else changes: one-word actions (``*smiles*``), person and tense
    cannot be fixed mechanically (the linter still reports them), curly quotes are left to
    ``normalize``, and an unclosed asterisk stays.

    Args:
        text: prose in the chat-RP style (e.g. a card's ``first_mes``).
        max_sound_words: the longest span kept as a sound (see ``is_action``).

    Returns:
        The text in the house style's narration convention.
    """
    spans = split_spans(text)
    out: list[str] = []
    for span in spans:
        if not (span.kind == "sound" and span.closed and len(span.inner.split()) > 1
                and is_action(span.inner, max_sound_words)):
            out.append(span.text)
            continue
        after = text[span.end:]
        narration = span.inner.strip()
        if _needs_full_stop(narration, after):
            narration += "."
        if out and out[-1] and _glues(out[-1][-1], narration[:1]):
            narration = " " + narration
        if after and _glues(narration[-1:], after[0]):
            narration += " "
        out.append(narration)
    return "".join(out)


def _needs_full_stop(narration: str, after: str) -> bool:
    """An unpunctuated sentence-like action followed by a new sentence (or nothing)."""
    if not narration or not narration[0].isupper() or narration.endswith(tuple(_END_PUNCTUATION)):
        return False
    following = after.lstrip()
    return not following or not following[0].islower()


def _glues(left: str, right: str) -> bool:
    """Whether two characters would run together without the asterisk that separated them."""
    if not left or not right or left.isspace() or right.isspace():
        return False
    return (left.isalnum() or left in '.!?,;:"') and (right.isalnum() or right in "\"_*'")
