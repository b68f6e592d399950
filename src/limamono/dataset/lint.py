"""Linting a dataset: every problem of every file, the quality findings (``DQ...``) included.

The sources module loads and checks one record at a time; this module adds what needs the
whole set: duplicates, the quality rules of :mod:`limamono.quality` and its dataset-wide
targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from limamono.dataset.sources import (
    Problem,
    Record,
    check_record,
    duplicate_problems,
    load_dir,
)
from limamono.quality.checks import check_turn
from limamono.quality.corpus import (
    NEAR_DUPLICATE_THRESHOLD,
    SHINGLE_SIZE,
    TurnRef,
    duplicate_turns,
    span_rates,
)
from limamono.quality.slop import Phrase
from limamono.quality.targets import TARGETS

__all__ = ["lint_dir", "quality_problems"]


def lint_dir(root: str | Path, quality: bool = True, phrases: Sequence[Any] | None = None,
             near_threshold: float | None = None, follow_links: bool = False) -> list[Problem]:
    """Every problem in every file under ``root``: schema, rules, style, duplicates and
    (with ``quality``) the quality rules of ``limamono.quality`` (``DQ...`` warnings).

    Args:
        root: a dataset folder or file.
        quality: also run the quality checks.
        phrases: the stock-phrase list for DQ020 (default: the shipped one).
        near_threshold: Jaccard threshold of near-duplicate turns (default: the module's).
        follow_links: read symbolic links to files outside the dataset too.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: a bad ``near_threshold``.
    """
    records, problems = load_dir(root, follow_links)
    for record in records:
        problems.extend(check_record(record))
    problems.extend(duplicate_problems(records))
    if quality:
        threshold = NEAR_DUPLICATE_THRESHOLD if near_threshold is None else near_threshold
        problems.extend(quality_problems(records, phrases, threshold, str(root)))
    return sorted(problems, key=lambda p: (p.file, p.record, p.message_index or -1, p.rule))


def quality_problems(records: Sequence[Record], phrases: Sequence[Phrase] | None = None,
                     threshold: float = NEAR_DUPLICATE_THRESHOLD,
                     root: str = "<dataset>") -> list[Problem]:
    """Every quality finding of a set of dataset records, as ``dataset.Problem`` warnings.

    Args:
        records: ``limamono.dataset.Record`` values.
        phrases: the stock-phrase list (default: the shipped one).
        threshold: Jaccard threshold of near-duplicate turns.
        root: the name dataset-wide findings (DQ060) are filed under.
    """
    out: list[Problem] = []
    turns: list[tuple[TurnRef, str]] = []
    where: dict[TurnRef, tuple[str, int]] = {}
    for record in records:
        conv = record.conversation
        for i, m in enumerate(conv.messages):
            ref = TurnRef(record.name, i)
            turns.append((ref, m.text))
            where[ref] = (record.file, record.index)
            for f in check_turn(m.text, m.role, user_name=conv.user.name, length=m.length,
                                phrases=phrases):
                out.append(Problem(record.file, f.rule, f.message, "warning", i,
                                   record=record.index))
    exact, near = duplicate_turns(turns, threshold)
    for pair in exact:
        file, index = where[pair.later]
        out.append(Problem(file, "DQ001", f"same words as {pair.first}", "warning",
                           pair.later.index, record=index))
    for pair in near:
        file, index = where[pair.later]
        out.append(Problem(file, "DQ002", f"{pair.similarity:.2f} similar to {pair.first} "
                           f"(Jaccard of word {SHINGLE_SIZE}-grams)", "warning",
                           pair.later.index, record=index))
    char_texts = [m.text for r in records for m in r.conversation.messages if m.role == "char"]
    rates = span_rates(char_texts)
    low, high = TARGETS["thought_rate"]
    if rates.thought is not None and not (low or 0) <= rates.thought <= (high or 1):
        out.append(Problem(root, "DQ060", f"{rates.thought:.0%} of {rates.char_turns} "
                           f"character turns have a _thought_ (target {low:.0%}-{high:.0%})",
                           "warning"))
    return out
