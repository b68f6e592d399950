"""House style (SPEC §3): spans, lint rules with stable ids, safe fixes, asterisk conversion.

Public API (import from ``limamono.style``):

- ``lint(text, char_name=, user_name=, role=, rules=, config=)`` -> ``list[Issue]``;
  ``lint_conversation(conv)``; ``lint_card_data(card.data)``.
- ``normalize(text)`` -> ``(text, issues)``: the safe fixes only (quotes, ellipsis, spaces);
  ``normalize_conversation(conv)``.
- ``RULES``: the registry (id -> ``Rule(id, name, severity, description, fixable)``).
- ``split_spans(text)``: narration / dialogue / thought / sound / title spans.
- ``from_asterisk_style(text)``: chat-RP ``*actions*`` to bare narration.
"""

from __future__ import annotations

from limamono.style.convert import DEFAULT_MAX_SOUND_WORDS, from_asterisk_style, is_action
from limamono.style.lint import (
    COMPLIANCE_RULES,
    MARKER_RULES,
    SHEET_RULES,
    TYPOGRAPHY_RULES,
    apply_fixes,
    card_texts,
    lint,
    lint_card_data,
    lint_conversation,
    normalize,
    normalize_conversation,
    select_rules,
)
from limamono.style.rules import RULES, SEVERITIES, Issue, Rule, Severity, StyleConfig
from limamono.style.spans import DELIMITERS, Span, SpanKind, paragraphs, split_spans

__all__ = [
    "COMPLIANCE_RULES",
    "DEFAULT_MAX_SOUND_WORDS",
    "DELIMITERS",
    "MARKER_RULES",
    "RULES",
    "SEVERITIES",
    "SHEET_RULES",
    "TYPOGRAPHY_RULES",
    "Issue",
    "Rule",
    "Severity",
    "Span",
    "SpanKind",
    "StyleConfig",
    "apply_fixes",
    "card_texts",
    "from_asterisk_style",
    "is_action",
    "lint",
    "lint_card_data",
    "lint_conversation",
    "normalize",
    "normalize_conversation",
    "paragraphs",
    "select_rules",
    "split_spans",
]
