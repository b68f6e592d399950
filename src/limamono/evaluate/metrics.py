"""Behaviour metrics on generated replies: pure functions on strings, exact and testable.

Each reply is checked once (``check_reply``); a set of checked replies is summarised
(``summarize``) into the figures of the report: style compliance, format integrity,
impersonation rate, speaking for the user, thought rate, length adherence (Spearman),
repetition and the stock-phrase index. Every rate carries a 95 % Wilson interval and the
Spearman figure a seeded bootstrap interval (``limamono.evaluate.intervals``); targets are
judged from the interval (``judge``).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from limamono.core.conversation import LENGTHS
from limamono.evaluate.intervals import RESAMPLES, Verdict, bootstrap_interval, verdict, wilson
from limamono.quality.targets import TARGETS
from limamono.style.lint import COMPLIANCE_RULES
from limamono.style.spans import SENTENCE_END

#: The prose rules that count for style compliance (``limamono.style.COMPLIANCE_RULES``);
#: the format rules are measured by format integrity instead.
STYLE_RULES = COMPLIANCE_RULES

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]+")
_SENTENCE_END = SENTENCE_END  # one rule, in limamono.style.spans
_MIN_REPEAT_WORDS = 4


@dataclass(frozen=True)
class ReplyCheck:
    """What one reply shows.

    Attributes:
        words: word count of the reply.
        style_ok: no issue from ``STYLE_RULES`` (checked on the complete sentences).
        format_ok: no header leakage, no length modifier, no ``Name:`` prefix of its own,
            and the reply continues the ``{char}:`` prefix with a space.
        impersonation: the model started writing the user's turn.
        has_thought: at least one closed ``_thought_``.
        repeats_earlier: a sentence of 4+ words appears verbatim earlier in the chat or reply.
        style_rules: the ids of the style rules that fired.
        speaks_for_user: a line starts with the user's name (the character narrates the
            user's actions; ``limamono.quality.speaks_for_user``).
        slop: the summed weights of the stock phrases in the reply
            (``limamono.quality.slop_score``).
    """

    words: int
    style_ok: bool
    format_ok: bool
    impersonation: bool
    has_thought: bool
    repeats_earlier: bool
    style_rules: tuple[str, ...] = ()
    speaks_for_user: bool = False
    slop: float = 0.0


def complete_part(reply: str) -> str:
    """The reply up to its last sentence end, so a cut at max tokens is not a style error."""
    ends = list(_SENTENCE_END.finditer(reply))
    return reply[:ends[-1].end()] if ends else reply


def sentences(text: str) -> list[str]:
    """Sentences of at least four words, whitespace-normalised."""
    out = []
    for match in _SENTENCE.finditer(text):
        words = match.group(0).split()
        if len(words) >= _MIN_REPEAT_WORDS:
            out.append(" ".join(words))
    return out


def check_reply(reply: str, *, char_name: str, user_name: str, history: Sequence[str] = (),
                stop_string: str | None = None, truncated: bool = False) -> ReplyCheck:
    """Check one generated reply.

    Args:
        reply: the generated text after the prompt's ``{char}:`` (it should start with a space).
        char_name: the character's name.
        user_name: the user's name.
        history: earlier message texts of the conversation (for verbatim repetition).
        stop_string: the stop string that ended generation, if any (``\\n{user}:`` there means
            the model began the user's turn).
        truncated: the reply was cut at the token limit (only complete sentences are linted).
    """
    from limamono import style
    from limamono.quality import slop_score, speaks_for_user

    body = reply.strip()
    linted = complete_part(body) if truncated else body
    issues = style.lint(linted, char_name=char_name, user_name=user_name)
    style_rules = tuple(sorted({i.rule for i in issues if i.rule in STYLE_RULES}))
    lines = [line.strip() for line in body.split("\n")]
    format_ok = (bool(body) and reply.startswith((" ", "\n"))
                 and "###" not in reply and "(length = " not in reply
                 and not any(line.startswith(f"{char_name}:") for line in lines))
    impersonation = (stop_string == f"\n{user_name}:"
                     or any(line.startswith(f"{user_name}:") for line in lines)
                     or any(i.rule == "LM021" for i in issues))
    has_thought = any(s.kind == "thought" and s.closed for s in style.split_spans(body))
    seen: set[str] = {s for text in history for s in sentences(text)}
    repeats = False
    for sentence in sentences(body):
        if sentence in seen:
            repeats = True
            break
        seen.add(sentence)
    return ReplyCheck(len(body.split()), not style_rules, format_ok, impersonation,
                      has_thought, repeats, style_rules,
                      bool(speaks_for_user(body, user_name)), slop_score(body))


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when undefined."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs equal lengths, got {len(xs)} and {len(ys)}")
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Unique word n-grams over all n-grams of all texts (None when there are none)."""
    grams = [tuple(words[i:i + n]) for t in texts
             for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


@dataclass(frozen=True)
class Sample:
    """A generated reply with the length it was asked for and its check."""

    requested_length: str
    reply: str
    check: ReplyCheck
    finish_reason: str = "stop"


#: The rates of the report: summary field -> the ``ReplyCheck`` flag it counts.
RATES: dict[str, str] = {
    "style_compliance": "style_ok",
    "format_integrity": "format_ok",
    "impersonation_rate": "impersonation",
    "speaks_for_user_rate": "speaks_for_user",
    "thought_rate": "has_thought",
    "repeat_rate": "repeats_earlier",
}


@dataclass
class BehaviourSummary:
    """The behaviour figures of one model over a set of samples (shares are 0..1).

    ``counts`` holds the number of replies behind each rate (out of ``samples``) and
    ``intervals`` the 95 % interval of each rate (Wilson) and of ``length_spearman``
    (bootstrap; None when undefined).
    """

    samples: int
    style_compliance: float
    format_integrity: float
    impersonation_rate: float
    thought_rate: float
    length_spearman: float | None
    median_words: dict[str, float] = field(default_factory=dict)
    distinct_2: float | None = None
    repeat_rate: float = 0.0
    speaks_for_user_rate: float = 0.0
    slop_index: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)


def spearman_interval(xs: Sequence[float], ys: Sequence[float], seed: int,
                      resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of Spearman's rho over (x, y) pairs, seeded."""
    return bootstrap_interval(lambda idx: spearman([xs[i] for i in idx], [ys[i] for i in idx]),
                              len(xs), seed, resamples)


def summarize(samples: Sequence[Sample], seed: int = 0,
              resamples: int = RESAMPLES) -> BehaviourSummary:
    """Aggregate checked samples into the report's figures and their intervals.

    Args:
        samples: the checked replies.
        seed: seed of the Spearman bootstrap.
        resamples: bootstrap resamples.
    """
    from limamono.quality import slop_index

    if not samples:
        raise ValueError("no samples to summarise")
    n = len(samples)
    counts = {name: sum(getattr(s.check, flag) for s in samples) for name, flag in RATES.items()}
    by_label: dict[str, list[int]] = {}
    for s in samples:
        by_label.setdefault(s.requested_length, []).append(s.check.words)
    medians = {label: float(statistics.median(by_label[label]))
               for label in LENGTHS if label in by_label}
    xs = [LENGTHS.index(s.requested_length) for s in samples]
    ys = [s.check.words for s in samples]
    intervals: dict[str, tuple[float, float] | None] = {
        name: wilson(k, n) for name, k in counts.items()}
    rho = spearman(xs, ys)
    intervals["length_spearman"] = (spearman_interval(xs, ys, seed, resamples)
                                    if rho is not None else None)
    return BehaviourSummary(
        samples=n, length_spearman=rho, median_words=medians,
        distinct_2=distinct_n([s.reply for s in samples]),
        slop_index=slop_index(s.reply for s in samples),
        counts=counts, intervals=intervals,
        **{name: k / n for name, k in counts.items()})




def meets(name: str, value: float | None) -> bool | None:
    """Whether a point figure meets its target (None when there is no target or no value).

    The report judges from the interval instead (``judge``); this is the point reading.
    """
    if name not in TARGETS or value is None:
        return None
    low, high = TARGETS[name]
    return (low is None or value >= low) and (high is None or value <= high)


def judge(summary: BehaviourSummary) -> dict[str, Verdict]:
    """``meets``/``misses``/``cannot tell`` for every target, from the 95 % intervals."""
    return {name: verdict(summary.intervals.get(name), target)
            for name, target in TARGETS.items()}
