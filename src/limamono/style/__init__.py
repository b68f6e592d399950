"""House style (SPEC §3): spans, lint rules with stable ids, safe fixes, asterisk conversion.

Public API (import from ``limamono.style``):

- ``split_spans(text)``: narration / dialogue / thought / sound / title spans.
- ``from_asterisk_style(text)``: chat-RP ``*actions*`` to bare narration.
"""

from __future__ import annotations

from limamono.style.convert import DEFAULT_MAX_SOUND_WORDS, from_asterisk_style, is_action
from limamono.style.spans import DELIMITERS, Span, SpanKind, paragraphs, split_spans

__all__ = [
    "DEFAULT_MAX_SOUND_WORDS",
    "DELIMITERS",
    "Span",
    "SpanKind",
    "from_asterisk_style",
    "is_action",
    "paragraphs",
    "split_spans",
]
