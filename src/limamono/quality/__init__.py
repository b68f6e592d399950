"""Quality checks for (drafted) conversations: rules ``DQ...``, stock phrases, duplicates.

Public API:

- ``QUALITY_RULES``: the registry (id -> ``QualityRule(id, name, description)``).
- ``check_turn(text, role, user_name=, length=)``: the one-turn checks.
- ``quality_figures(conversations)``: slop index and thought/sound/title rates.
- ``load_phrases``, ``find_phrases``, ``slop_index``: the stock-phrase list and index.
- ``TARGETS``: the targets replies and datasets are judged against.
- ``speaks_for_user, ``assistant_speak``, ``refusals``, ``repeated_ngrams``, ``label_range``.
"""

from limamono.quality.checks import (
    QUALITY_RULES,
    QualityRule,
    TurnFinding,
    assistant_speak,
    check_turn,
    label_range,
    refusals,
    repeated_ngrams,
    speaks_for_user,
)
from limamono.quality.corpus import (
    DuplicatePair,
    Rates,
    TurnRef,
    duplicate_turns,
    jaccard,
    quality_figures,
    shingles,
    span_rates,
)
from limamono.quality.slop import (
    Phrase,
    PhraseHit,
    find_phrases,
    load_phrases,
    parse_phrases,
    slop_index,
    slop_score,
)
from limamono.quality.targets import TARGETS

__all__ = [
    "QUALITY_RULES",
    "TARGETS",
    "DuplicatePair",
    "Phrase",
    "PhraseHit",
    "QualityRule",
    "Rates",
    "TurnFinding",
    "TurnRef",
    "assistant_speak",
    "check_turn",
    "duplicate_turns",
    "find_phrases",
    "jaccard",
    "label_range",
    "load_phrases",
    "parse_phrases",
    "quality_figures",
    "refusals",
    "repeated_ngrams",
    "shingles",
    "slop_index",
    "slop_score",
    "span_rates",
    "speaks_for_user",
]
