"""`limamono data build`: conversations in, masked training samples and stats out.

Pipeline: load every file (collecting all problems), stop on blocking errors, drop
duplicate conversations (reported), apply the style module's safe fixes (reported), label
lengths by word count, split train/eval by conversation, render and tokenise each
conversation (each sample whole, ``limamono.models.tokens``), handle over-long ones by the
chosen policy (reported), and write ``tokenized/{train,eval}.jsonl`` (input ids and
labels), ``segments/`` (the samples as labelled text) and ``stats.json``.

Windowing (``overflow="window"``): every window holds the BOS/Instruction block and a run
of whole turns. The first window starts at turn 0 and takes turns while they fit; a
window that does not reach the end stops after its last character turn. The next window
starts ``window_overlap`` turns before the previous one ended: those overlap turns are
context only (masked, their character text was trained in the window before), and the
overlap shrinks turn by turn when the next new turn would not fit with it. A single turn
that does not fit even alone is cut at ``seq_len`` (reported as ``window+truncate``).
With ``train_on_inputs`` everything is trained, overlap included.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from limamono.core import format as fmt
from limamono.core.policy import get_policy
from limamono.dataset.samples import (
    END_OF_TURN,
    IGNORE_INDEX,
    EndOfTurn,
    Layout,
    Piece,
    SampleTokenizer,
    Tokenizer,
    compose,
    layout,
    truncate,
)
from limamono.dataset.sources import Problem, Record, check_record, content_hash, load_dir

Overflow = Literal["window", "truncate", "drop", "error"]
OVERFLOW: tuple[str, ...] = ("window", "truncate", "drop", "error")
SPLITS: tuple[str, ...] = ("train", "eval")

#: Rules whose problems stop a build (the rest are reported and built anyway).
BLOCKING_RULES: frozenset[str] = frozenset({"schema", "empty-turn", "header-in-text",
                                            "bad-split"})


class DatasetError(ValueError):
    """A dataset cannot be built; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"{p.where()}: [{p.rule}] {p.message}" for p in self.problems]
        if len(lines) == 1:  # one problem, one line
            super().__init__(lines[0])
            return
        super().__init__(f"{len(lines)} problem(s):\n" + "\n".join(lines))


@dataclass(frozen=True)
class BuildConfig:
    """How conversations become samples (the ``limamono data build`` options).

    Attributes:
        seq_len: most tokens in one sample (the training sequence length).
        val: fraction of conversations (not forced by ``meta.split``) held out for eval.
        seed: seed of the train/eval shuffle.
        overflow: what to do with a conversation longer than ``seq_len``.
        end_of_turn: ``header`` (train the next ``\\n\\n###``) or ``eos``.
        train_on_inputs: train every token, not just the character's text.
        length_bounds: upper word counts of the length labels (SPEC §6).
        window_overlap: turns of context repeated at the start of the next window.
        trigger: trigger phrase key (``card``, ``preset``) or literal phrase.
        normalize: apply the style module's safe fixes.
        include_drafts: build conversations marked ``meta.draft: true`` (unreviewed model
            drafts from ``limamono data draft``), which are refused otherwise.
    """

    seq_len: int = 4096
    val: float = 0.05
    seed: int = 42
    overflow: Overflow = "window"
    end_of_turn: EndOfTurn = "header"
    train_on_inputs: bool = False
    length_bounds: tuple[int, ...] = fmt.DEFAULT_LENGTH_BOUNDS
    window_overlap: int = 2
    trigger: str = fmt.DEFAULT_TRIGGER
    normalize: bool = True
    include_drafts: bool = False

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.seq_len, int) or self.seq_len < 16:
            errors.append(f"seq_len must be an integer >= 16, got {self.seq_len!r}")
        if not 0.0 <= self.val < 1.0:
            errors.append(f"val must be in [0, 1), got {self.val!r}")
        if self.overflow not in OVERFLOW:
            errors.append(f"overflow must be one of {', '.join(OVERFLOW)}, got "
                          f"{self.overflow!r}")
        if self.end_of_turn not in END_OF_TURN:
            errors.append(f"end_of_turn must be one of {', '.join(END_OF_TURN)}, got "
                          f"{self.end_of_turn!r}")
        if self.window_overlap < 0:
            errors.append(f"window_overlap must be >= 0, got {self.window_overlap!r}")
        try:
            fmt.length_for_words(0, self.length_bounds)
        except ValueError as exc:
            errors.append(str(exc))
        if errors:
            raise ValueError("invalid build config: " + "; ".join(errors))


@dataclass
class Sample:
    """One training sample: where it came from, its segments, ids and labels."""

    source: str
    split: str
    window: int
    pieces: list[Piece]
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised(self) -> int:
        """Tokens that count in the loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class OverflowEvent:
    """An over-long conversation and what was done with it."""

    source: str
    tokens: int
    action: str
    samples: int


@dataclass
class BuildResult:
    """Everything a build produced, before it is written."""

    config: BuildConfig
    records: list[Record]
    splits: dict[str, str]
    samples: list[Sample]
    conversation_tokens: dict[str, int]
    overflow: list[OverflowEvent] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    fixes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- preparation

def normalize_record(record: Record) -> tuple[Record, list[dict[str, Any]]]:
    """Apply ``limamono.style.normalize`` (safe fixes only) to every turn; list the changes."""
    try:
        from limamono import style
    except ImportError:  # pragma: no cover - part of the project
        return record, []
    normalize: Callable[[str], Any] | None = getattr(style, "normalize", None)
    if normalize is None:
        return record, []
    conv, fixes, messages = record.conversation, [], []
    for i, message in enumerate(conv.messages):
        result = normalize(message.text)
        text, issues = result if isinstance(result, tuple) else (result, [])
        if text != message.text:
            rules = sorted({str(getattr(issue, "rule", "")) for issue in issues} - {""})
            fixes.append({"file": record.name, "message_index": i, "rules": rules})
            message = message.with_text(text)
        messages.append(message)
    return replace(record, conversation=replace(conv, messages=messages)), fixes


def split_records(records: Sequence[Record], val: float, seed: int) -> dict[str, str]:
    """``record.name -> "train"|"eval"``: seeded shuffle; ``meta.split`` forces a side.

    ``ceil(val * n)`` of the ``n`` unforced conversations go to eval (Axolotl's rule for
    a fractional ``val_set_size``), but never all of them.
    """
    out: dict[str, str] = {}
    free = []
    for record in records:
        forced = record.conversation.meta.get("split")
        if forced in SPLITS:
            out[record.name] = forced
        else:
            free.append(record.name)
    random.Random(seed).shuffle(free)
    n_eval = min(math.ceil(val * len(free)), max(len(free) - 1, 0)) if val > 0 else 0
    for i, name in enumerate(free):
        out[name] = "eval" if i < n_eval else "train"
    return out


def _split_problems(records: Sequence[Record]) -> list[Problem]:
    return [Problem(r.file, "bad-split", f"meta.split must be train or eval, got "
                    f"{r.conversation.meta['split']!r}", record=r.index)
            for r in records if r.conversation.meta.get("split") not in (None, *SPLITS)]


# --------------------------------------------------------------------------- samples

def plan_samples(lay: Layout, tok: SampleTokenizer, config: BuildConfig,
                 eos: str | None = None) -> tuple[list[list[Piece]], str]:
    """The samples of one conversation and the overflow action taken (``""`` if it fits)."""

    def build(start: int, end: int, trained: set[int] | None = None) -> list[Piece]:
        return compose(lay, start, end, trained, config.end_of_turn, config.train_on_inputs,
                       eos)

    whole = build(0, len(lay.turns))
    if tok.count(whole) <= config.seq_len:
        return [whole], ""
    if config.overflow in ("drop", "error"):
        return [], "dropped" if config.overflow == "drop" else "error"
    if config.overflow == "truncate":
        return [truncate(whole, tok, config.seq_len)], "truncated"
    if tok.count(build(0, 0)) >= config.seq_len:
        return [], "dropped (the Instruction block alone fills seq_len)"
    return _windows(lay, tok, config, build)


def _windows(lay: Layout, tok: SampleTokenizer, config: BuildConfig,
             build: Callable[..., list[Piece]]) -> tuple[list[list[Piece]], str]:
    n, limit = len(lay.turns), config.seq_len
    chars = [i for i, turn in enumerate(lay.turns) if turn.role == "char"]
    windows: list[list[Piece]] = []
    action = "window"
    done = start = 0  # turns before `done` were trained; `start` is the window's first turn

    def fits(a: int, b: int) -> bool:
        return tok.count(build(a, b, set(range(done, b)))) <= limit

    # Each window brings at least one new character turn (with the user turns before it).
    while any(i >= done for i in chars):
        need = next(i for i in chars if i >= done) + 1
        while start < done and not fits(start, need):
            start += 1  # less context rather than no room for the new turn
        if not fits(start, need):
            windows.append(truncate(build(start, need, set(range(done, need))), tok, limit))
            action = "window+truncate"
            done = start = need
            continue
        end = need
        while end < n and fits(start, end + 1):
            end += 1
        while end < n and end - 1 >= need and lay.turns[end - 1].role == "user":
            end -= 1  # a continued window ends on the character's turn
        windows.append(build(start, end, set(range(done, end))))
        done = end
        start = max(done - config.window_overlap, 0)
    return windows, action


def build_samples(records: Sequence[Record], tokenizer: Tokenizer,
                  config: BuildConfig) -> BuildResult:
    """Turn loaded records into samples (nothing is written).

    Raises:
        DatasetError: blocking problems (schema, empty turns, header lines in text, a bad
            ``meta.split``, drafts unless ``include_drafts``), or over-long conversations
            under ``overflow="error"``; every one is listed.
    """
    problems = [p for r in records for p in check_record(r)] + _split_problems(records)
    blocking = [p for p in problems if p.rule in BLOCKING_RULES
                or (p.rule == "draft" and not config.include_drafts)]
    if blocking:
        raise DatasetError(blocking)
    unique: list[Record] = []
    duplicates: list[Record] = []
    seen: set[str] = set()
    for record in records:
        digest = content_hash(record.conversation)
        (duplicates if digest in seen else unique).append(record)
        seen.add(digest)
    prepared, fixes = [], []
    # Training samples are labelled by the ``training`` prompt policy: every turn from its
    # word count, the same labels chat, serve and eval give a conversation by default.
    labeller = get_policy("training", config.trigger, config.length_bounds)
    for record in unique:
        if config.normalize:
            record, found = normalize_record(record)
            fixes += found
        conv = labeller.label(record.conversation)
        prepared.append(replace(record, conversation=conv))
    splits = split_records(prepared, config.val, config.seed)
    result = BuildResult(config, prepared, splits, [], {}, duplicates=[d.name for d in
                         duplicates], fixes=fixes, warnings=[p for p in problems
                                                            if p not in blocking])
    _tokenize_all(result, tokenizer)
    errors = [Problem(e.source, "overflow", f"{e.tokens} tokens > seq_len {config.seq_len}: "
                      "use --overflow window|truncate|drop or a larger --seq-len")
              for e in result.overflow if e.action == "error"]
    if errors:
        raise DatasetError(errors)
    return result


def _tokenize_all(result: BuildResult, tokenizer: Tokenizer) -> None:
    config, tok = result.config, SampleTokenizer(tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    for record in result.records:
        lay = layout(record.conversation, config.trigger)
        full = compose(lay, 0, len(lay.turns), None, config.end_of_turn,
                       config.train_on_inputs, eos)
        result.conversation_tokens[record.name] = tok.count(full)
        planned, action = plan_samples(lay, tok, config, eos)
        if action:
            result.overflow.append(OverflowEvent(record.name, tok.count(full), action,
                                                 len(planned)))
        for w, pieces in enumerate(planned):
            ids, labels = tok.encode(pieces)
            sample = Sample(record.name, result.splits[record.name], w, pieces, ids, labels)
            if sample.supervised == 0:
                result.skipped.append(f"{record.name} window {w}")
                continue
            result.samples.append(sample)


def build(root: str, tokenizer: Tokenizer, config: BuildConfig | None = None,
          follow_links: bool = False) -> BuildResult:
    """Load a dataset folder and build its samples (see ``build_samples``); with
    ``follow_links``, symbolic links to files outside the folder are read too.

    Raises:
        DatasetError: every blocking problem, schema errors of all files included.
        FileNotFoundError: ``root`` does not exist.
    """
    config = config or BuildConfig()
    records, problems = load_dir(root, follow_links)
    if any(p.severity == "error" for p in problems):
        raise DatasetError([p for p in problems if p.severity == "error"])
    if not records:
        raise DatasetError([Problem(str(root), "empty", "no conversations found (looked for "
                                    ".yaml, .yml and .jsonl files)")])
    return build_samples(records, tokenizer, config)
