"""Quality figures over a corpus of conversations: duplicate turns and span rates.

Near duplicates are found with MinHash signatures in an LSH index (``datasketch``, a kept
library, rather than a hand-written one); each candidate pair the index returns is then
confirmed by the exact Jaccard similarity of the two turns' word 3-gram sets, so a reported
pair always meets the threshold and the similarity printed is exact. LSH is probabilistic:
a pair close to the threshold can be missed (about 2 % at the threshold itself), never
invented; the permutations are seeded, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limamono.quality.checks import words
from limamono.quality.slop import slop_index

if TYPE_CHECKING:
    from limamono.core.conversation import Conversation

#: Turns shorter than this (in words) are not compared: "Yes." repeats honestly.
MIN_DUPLICATE_WORDS = 8
#: Default Jaccard similarity of word 3-gram sets from which two turns are near duplicates.
NEAR_DUPLICATE_THRESHOLD = 0.6
SHINGLE_SIZE = 3
_NUM_PERM = 256
_SEED = 1
#: LSH band weights (false positives, false negatives): recall first, because every
#: candidate is confirmed by its exact Jaccard. With 256 permutations this puts the chance
#: of missing a pair exactly at the threshold near 2 % (0.6: 51 bands of 5 rows), falling
#: fast above it.
_LSH_WEIGHTS = (0.02, 0.98)


@dataclass(frozen=True)
class TurnRef:
    """Where a turn is: its record's name (``file`` or ``file#k``) and message index."""

    record: str
    index: int

    def __str__(self) -> str:
        return f"{self.record} message {self.index}"


@dataclass(frozen=True)
class DuplicatePair:
    """A turn (``later``) that repeats or nearly repeats an earlier one (``first``)."""

    later: TurnRef
    first: TurnRef
    similarity: float


def shingles(text: str, n: int = SHINGLE_SIZE) -> set[str]:
    """The word n-grams of a text (lower-cased, punctuation dropped)."""
    seq = words(text)
    return {" ".join(seq[i:i + n]) for i in range(len(seq) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def duplicate_turns(turns: Sequence[tuple[TurnRef, str]],
                    threshold: float = NEAR_DUPLICATE_THRESHOLD
                    ) -> tuple[list[DuplicatePair], list[DuplicatePair]]:
    """Exact and near duplicates among turns of at least ``MIN_DUPLICATE_WORDS`` words.

    Each later turn is paired with the earliest turn it repeats (exact: same words, case
    and punctuation aside) or, failing that, the most similar earlier one (near: Jaccard of
    word 3-gram sets >= ``threshold``).

    Returns:
        (exact pairs, near pairs), each ordered by the later turn.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
    if len(turns) < 2:  # nothing to pair; and datasketch (scipy) takes a second to import
        return [], []
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM, weights=_LSH_WEIGHTS)
    exact_seen: dict[str, int] = {}
    sets: list[set[str]] = []
    exact, near = [], []
    for n, (ref, text) in enumerate(turns):
        seq = words(text)
        sets.append(shingles(text))
        if len(seq) < MIN_DUPLICATE_WORDS:
            continue
        key = " ".join(seq)
        if key in exact_seen:
            exact.append(DuplicatePair(ref, turns[exact_seen[key]][0], 1.0))
            continue
        exact_seen[key] = n
        signature = MinHash(num_perm=_NUM_PERM, seed=_SEED)
        signature.update_batch([s.encode("utf-8") for s in sets[n]])
        scored = [(jaccard(sets[n], sets[m]), -m) for m in lsh.query(signature)]
        best = max((s for s in scored if s[0] >= threshold), default=None)
        if best is not None:
            near.append(DuplicatePair(ref, turns[-best[1]][0], best[0]))
        lsh.insert(n, signature)
    return exact, near


@dataclass(frozen=True)
class Rates:
    """Shares of character turns with at least one closed thought, sound and title."""

    char_turns: int
    thought: float | None
    sound: float | None
    title: float | None


def span_rates(texts: Sequence[str]) -> Rates:
    """The thought/sound/title rates of character turns (None with no turns)."""
    from limamono.style import split_spans

    counts = {"thought": 0, "sound": 0, "title": 0}
    for text in texts:
        kinds = {s.kind for s in split_spans(text) if s.closed}
        for kind in counts:
            counts[kind] += kind in kinds
    n = len(texts)
    return Rates(n, *(counts[k] / n if n else None for k in ("thought", "sound", "title")))


def quality_figures(conversations: Sequence[Conversation]) -> dict[str, Any]:
    """Dataset figures for ``data stats``: slop index and span rates of character turns."""
    texts = [m.text for c in conversations for m in c.messages if m.role == "char"]
    rates = span_rates(texts)
    index = slop_index(texts)
    return {"char_turns": rates.char_turns,
            "slop_index": None if index is None else round(index, 2),
            "thought_rate": rates.thought, "sound_rate": rates.sound,
            "title_rate": rates.title}
