"""Preference pairs from chats with swipes (``limamono data prefs``), for DPO and ORPO.

At each character turn that has several swipes, the swipe the user kept (the one shown,
``swipe_id``) is *chosen* and every other swipe is *rejected*: one pair per rejected swipe.
With ``lint_rejects`` a reply is also rejected when it fails a lint (:func:`reply_failures`:
house style, impersonation, speaking for the user, stock phrases, more words than its
length label allows); a kept swipe that fails one leaves no chosen reply, so its turn is
skipped and the report says why.

A pair is two training samples of the dataset builder that differ only in the last reply:

- the history is the conversation before the turn, each message with its shown swipe,
  labelled by the prompt policy (``limamono.core.policy``: ``training`` labels every turn
  from its word count, as the builder does; ``sillytavern`` labels as the exported presets
  make SillyTavern send), style-normalised as the builder does;
- the reply's header carries one label for both replies: the message's own label, else
  the policy's: ``training`` takes the chosen reply's word count, ``sillytavern`` the open
  reply's ``long``;
- each sample is rendered, masked and tokenised whole by the builder
  (``samples.compose``/``SampleTokenizer``): the prompt is masked; the reply's text and the
  end-of-turn signal are trained. So ``prompt_ids + chosen_ids`` are exactly the builder's
  ids for that sample, and the trained tokens are exactly ``chosen_ids`` (token identity as
  for SFT, ``limamono.models.tokens``). The prompt is the policy's prompt for the turn, byte
  for byte (``PromptPolicy.render`` with the open reply header).

A conversation longer than ``seq_len`` loses its oldest whole turns as the policy fits a
prompt (``PromptPolicy.fit``); a pair that still does not fit is skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.core.conversation import Conversation, Message
from limamono.core.policy import (
    POLICIES,
    SILLYTAVERN_OPEN_RESPONSE_LENGTH,
    PromptPolicy,
    PromptTooLongError,
    get_policy,
)
from limamono.dataset.build import SPLITS, split_records
from limamono.dataset.folders import PAIRS_FILE, PREFS_FILE, PREFS_VERSION, is_prefs
from limamono.dataset.samples import (
    END_OF_TURN,
    IGNORE_INDEX,
    EndOfTurn,
    SampleTokenizer,
    Tokenizer,
    compose,
    join,
    layout,
)
from limamono.dataset.sources import Record
from limamono.models import tokens
from limamono.quality.checks import check_turn, label_range
from limamono.quality.slop import Phrase
from limamono.util import atomic, untrusted

#: Why a swipe that was not kept is rejected.
NOT_KEPT = "not kept"
#: The quality rules ``lint_rejects`` applies: stock phrases, speaking for the user.
QUALITY_LINTS: frozenset[str] = frozenset({"DQ020", "DQ040"})
#: The style rule for impersonation (a line in the user's ``Name:``), on top of the house
#: style's compliance rules.
IMPERSONATION_RULE = "LM021"


class PrefsError(ValueError):
    """Preference pairs cannot be built, written or read; the message names the file."""


@dataclass(frozen=True)
class PrefsConfig:
    """How chats become preference pairs (the ``limamono data prefs`` options).

    Attributes:
        seq_len: most tokens of prompt + reply (longer: oldest turns left out).
        end_of_turn: ``header`` or ``eos`` (the builder's end-of-turn signal).
        length_bounds: upper word counts of the length labels.
        trigger: trigger phrase key or literal phrase.
        policy: the prompt policy that labels the prompt (``training`` or ``sillytavern``).
        normalize: apply the style module's safe fixes to every text, as the builder does.
        lint_rejects: a reply that fails a lint is rejected too (see :func:`reply_failures`).
        val: fraction of chats held out for eval (by chat, seeded, as the builder splits).
        seed: seed of that split.
    """

    seq_len: int = 4096
    end_of_turn: EndOfTurn = "header"
    length_bounds: tuple[int, ...] = fmt.DEFAULT_LENGTH_BOUNDS
    trigger: str = fmt.DEFAULT_TRIGGER
    policy: str = "training"
    normalize: bool = True
    lint_rejects: bool = False
    val: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.seq_len, int) or self.seq_len < 16:
            errors.append(f"seq_len must be an integer >= 16, got {self.seq_len!r}")
        if self.end_of_turn not in END_OF_TURN:
            errors.append(f"end_of_turn must be one of {', '.join(END_OF_TURN)}, got "
                          f"{self.end_of_turn!r}")
        if self.policy not in POLICIES:
            errors.append(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not 0.0 <= self.val < 1.0:
            errors.append(f"val must be in [0, 1), got {self.val!r}")
        try:
            fmt.length_for_words(0, self.length_bounds)
        except ValueError as exc:
            errors.append(str(exc))
        if errors:
            raise ValueError("invalid prefs config: " + "; ".join(errors))

    def prompt_policy(self) -> PromptPolicy:
        """The prompt policy named by ``policy``, with this trigger and these bounds."""
        return get_policy(self.policy, self.trigger, self.length_bounds)


@dataclass
class Pair:
    """One preference pair: a prompt, the kept reply and one rejected reply.

    ``chosen``/``rejected`` are the trained text (the reply, which starts with its space,
    then the end-of-turn signal); ``*_ids`` the tokens, ``prompt_ids`` shared. The builder's
    labels of each sample are ``[-100] * len(prompt_ids) + chosen_ids`` (resp. rejected).
    """

    source: str
    message_index: int
    chosen_swipe: int
    rejected_swipe: int
    label: str
    reasons: list[str]
    prompt: str
    chosen: str
    rejected: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    dropped_turns: int = 0
    split: str = "train"

    def labels(self, which: str) -> list[int]:
        """The builder's loss labels of the ``chosen`` or ``rejected`` sample."""
        ids = self.chosen_ids if which == "chosen" else self.rejected_ids
        return [IGNORE_INDEX] * len(self.prompt_ids) + ids

    def row(self) -> dict[str, Any]:
        """The pair as a JSON line of ``pairs.jsonl``."""
        return asdict(self)


@dataclass(frozen=True)
class Skip:
    """A character turn with swipes (or one swipe of it) that gave no pair, and why."""

    source: str
    message_index: int
    reason: str
    swipe: int | None = None


@dataclass
class PrefsResult:
    """Everything a prefs build produced, before it is written."""

    config: PrefsConfig
    pairs: list[Pair] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    chats: int = 0
    char_turns: int = 0
    turns_with_swipes: int = 0

    def stats(self) -> dict[str, Any]:
        """The counts of the report (``prefs.json`` holds them)."""
        reasons = Counter(r for p in self.pairs for r in p.reasons)
        turns = {(p.source, p.message_index) for p in self.pairs}
        return {
            "chats": self.chats, "char_turns": self.char_turns,
            "turns_with_swipes": self.turns_with_swipes, "turns_used": len(turns),
            "pairs": len(self.pairs),
            "splits": {s: sum(p.split == s for p in self.pairs) for s in SPLITS},
            "rejected_because": dict(sorted(reasons.items())),
            "skipped": len(self.skipped),
            "skipped_because": dict(sorted(Counter(_kind(s.reason)
                                                   for s in self.skipped).items())),
            "skipped_turns": [asdict(s) for s in self.skipped],
        }


def _kind(reason: str) -> str:
    """A skip reason without its particulars (for counting): the text before ``:``."""
    return reason.split(":", 1)[0]


# --------------------------------------------------------------------------- lints

def reply_label(message: Message, chosen: str, policy: PromptPolicy) -> str:
    """The length label of a turn's header, shared by its chosen and rejected replies.

    The message's own label wins; otherwise the policy decides: ``training`` labels from
    the chosen reply's word count (as the builder labels it), ``sillytavern`` gives the
    open reply's label, as the exported presets make SillyTavern send.
    """
    if message.length is not None:
        return message.length
    if policy.name == "sillytavern":
        return SILLYTAVERN_OPEN_RESPONSE_LENGTH
    return fmt.length_for_words(fmt.word_count(chosen), policy.length_bounds)


def reply_failures(text: str, *, char_name: str, user_name: str, label: str,
                   bounds: Sequence[int] = fmt.DEFAULT_LENGTH_BOUNDS,
                   phrases: Sequence[Phrase] | None = None) -> list[str]:
    """The lints a reply fails, each as ``"RULE name"`` (empty: it passes).

    - house style: the style rules that count for compliance
      (``limamono.style.COMPLIANCE_RULES``, as the evaluation judges replies);
    - impersonation: a line in the user's ``Name:`` (style rule LM021);
    - speaking for the user (DQ040) and stock phrases (DQ020, ``limamono.quality``);
    - over its length label: more words than ``label`` allows (``quality.label_range``;
      shorter is not a failure).
    """
    from limamono import style

    found: list[str] = []
    issues = style.lint(text, char_name=char_name, user_name=user_name)
    rules = sorted({i.rule for i in issues
                    if i.rule in style.COMPLIANCE_RULES or i.rule == IMPERSONATION_RULE})
    found += [f"{r} {style.RULES[r].name}" for r in rules]
    from limamono.quality import QUALITY_RULES

    for finding in check_turn(text, "char", user_name=user_name, phrases=phrases,
                              bounds=bounds):
        if finding.rule in QUALITY_LINTS:
            found.append(f"{finding.rule} {QUALITY_RULES[finding.rule].name}")
    words = fmt.word_count(text)
    high = label_range(label, bounds)[1]
    if high is not None and words > high:
        found.append(f"over-length ({words} words, {label} allows {high})")
    return found


# --------------------------------------------------------------------------- pairs

@dataclass(frozen=True)
class _Sample:
    """One side of a pair: the prompt text and ids, the trained text and ids."""

    prompt: str
    prompt_ids: list[int]
    reply: str
    reply_ids: list[int]


class _Unusable(ValueError):
    """A pair's samples break a rule of the builder (the message says which)."""


def _sample(history: Sequence[Message], conversation: Conversation, text: str, label: str,
            config: PrefsConfig, tok: SampleTokenizer, eos: str | None) -> _Sample:
    """The builder's sample of ``history`` + a character reply ``text``, split at the reply.

    Raises:
        _Unusable: a token spans the end of the prompt, or a prompt token is trained.
        FormatError: a text cannot be rendered (a header line in it).
    """
    messages = [*history, Message("char", text, label)]
    lay = layout(replace(conversation, messages=messages), config.trigger)
    last = len(lay.turns) - 1
    pieces = compose(lay, 0, len(lay.turns), {last}, config.end_of_turn, False, eos)
    ids, labels = tok.encode(pieces)
    whole = join(pieces)
    start = next((i for i, label_ in enumerate(labels) if label_ != IGNORE_INDEX), len(ids))
    if any(label_ == IGNORE_INDEX for label_ in labels[start:]) or start == len(ids):
        raise _Unusable("the reply's tokens are not all trained")
    # The prompt ends where the reply's text begins: the pieces end with the reply's text
    # and its end-of-turn signal (the next header's start, or EOS).
    cut = len(join(pieces[:-2]))
    _, spans = tok.text(whole)
    if spans[start][0] != cut:
        raise _Unusable(f"a token spans the end of the prompt ({spans[start]} vs {cut})")
    return _Sample(whole[:cut], ids[:start], whole[cut:], ids[start:])


def _normalized(text: str, config: PrefsConfig) -> str:
    if not config.normalize:
        return text
    from limamono import style

    return style.normalize(text)[0]


def turn_pairs(source: str, chat: Conversation, index: int, tokenizer: Tokenizer,
               config: PrefsConfig, tok: SampleTokenizer | None = None,
               phrases: Sequence[Phrase] | None = None) -> tuple[list[Pair], list[Skip]]:
    """The pairs of the character turn ``chat.messages[index]`` and what was skipped."""
    tok = tok or SampleTokenizer(tokenizer)
    policy = config.prompt_policy()
    message = chat.messages[index]
    kept = message.swipe_id
    texts = [_normalized(s.text, config) for s in message.swipes]
    label = reply_label(message, texts[kept], policy)
    history_messages = [m for m in chat.messages[:index] if not m.hidden]
    history = [Message(m.role, _normalized(m.text, config), m.length)
               for m in history_messages]
    # Labels are decided on the whole history once, so leaving turns out changes none.
    header = replace(chat, messages=history)
    labelled = policy.label(header, response_length=label).messages if history else []
    skips: list[Skip] = []

    def skip(reason: str, swipe: int | None = None) -> tuple[list[Pair], list[Skip]]:
        skips.append(Skip(source, index, reason, swipe))
        return [], skips

    if not texts[kept].strip():
        return skip("the kept swipe is empty")
    failures = {i: reply_failures(t, char_name=chat.character.name,
                                  user_name=chat.user.name, label=label,
                                  bounds=config.length_bounds, phrases=phrases)
                for i, t in enumerate(texts)} if config.lint_rejects else {}
    if failures.get(kept):
        return skip(f"the kept swipe fails lints: {'; '.join(failures[kept])}", kept)
    rejected = []
    for i, text in enumerate(texts):
        if i == kept:
            continue
        if not text.strip():
            skips.append(Skip(source, index, "empty swipe", i))
        elif text == texts[kept]:
            skips.append(Skip(source, index, "same text as the kept swipe", i))
        else:
            rejected.append(i)
    if not rejected:
        return [], skips
    eos = getattr(tokenizer, "eos_token", None)
    dropped = 0
    try:
        sides = {i: _sample(labelled, header, texts[i], label, config, tok, eos)
                 for i in [kept, *rejected]}
        longest = max(len(s.prompt_ids) + len(s.reply_ids) for s in sides.values())
        if longest > config.seq_len:
            reply_tokens = max(len(s.reply_ids) for s in sides.values())
            fitted = policy.fit(replace(header, messages=labelled),
                                lambda t: len(tokens.encode(tokenizer, t)), config.seq_len,
                                reply_tokens, response_length=label)
            dropped = fitted.dropped
            sides = {i: _sample(labelled[dropped:], header, texts[i], label, config, tok,
                                eos) for i in sides}
            longest = max(len(s.prompt_ids) + len(s.reply_ids) for s in sides.values())
            if longest > config.seq_len:
                return skip(f"too long: {longest} tokens > seq_len {config.seq_len} with "
                            f"{dropped} oldest turn(s) left out")
    except PromptTooLongError as exc:
        return skip(f"too long: {exc.needed} prompt tokens leave no room for the replies "
                    f"within seq_len {config.seq_len}")
    except fmt.FormatError as exc:
        return skip(f"cannot render: {exc}")
    except _Unusable as exc:
        return skip(f"token boundary: {exc}")
    chosen = sides[kept]
    pairs = []
    for i in rejected:
        side = sides[i]
        if side.prompt_ids != chosen.prompt_ids or side.prompt != chosen.prompt:
            skips.append(Skip(source, index, "token boundary: the prompt tokenises "
                              "differently before this reply", i))
            continue
        pairs.append(Pair(source, index, kept, i, label, [NOT_KEPT, *failures.get(i, [])],
                          chosen.prompt, chosen.reply, side.reply, chosen.prompt_ids,
                          chosen.reply_ids, side.reply_ids, dropped))
    return pairs, skips


def build_prefs(chats: Sequence[tuple[str, Conversation]], tokenizer: Tokenizer,
                config: PrefsConfig | None = None,
                phrases: Sequence[Phrase] | None = None) -> PrefsResult:
    """Preference pairs of every character turn with swipes in ``chats`` (name, chat).

    Raises:
        PrefsError: two chats share a name (the name is how a pair says where it came from).
    """
    config = config or PrefsConfig()
    names = [name for name, _ in chats]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PrefsError(f"chat names must be unique: {', '.join(twice)}")
    result = PrefsResult(config, chats=len(chats))
    tok = SampleTokenizer(tokenizer)
    splits = split_records([Record(chat, name) for name, chat in chats], config.val,
                           config.seed)
    for name, chat in chats:
        for i, message in enumerate(chat.messages):
            if message.role != "char" or message.hidden:
                continue
            result.char_turns += 1
            if len(message.swipes) < 2:
                continue
            result.turns_with_swipes += 1
            pairs, skips = turn_pairs(name, chat, i, tokenizer, config, tok, phrases)
            for pair in pairs:
                pair.split = splits[name]
            result.pairs += pairs
            result.skipped += skips
    return result


# --------------------------------------------------------------------------- files

def write_prefs(result: PrefsResult, out: str | Path, tokenizer: Tokenizer,
                model: str | None = None) -> dict[str, Any]:
    """Write ``out/pairs.jsonl`` and ``out/prefs.json`` (config, tokenizer, counts).

    The folder is written whole beside ``out`` and renamed into place; an existing
    ``out`` is replaced only when it is an earlier prefs folder.

    Raises:
        PrefsError: ``out`` is a file or a folder with other content, or cannot be written.
    """
    from limamono.dataset.output import tokenizer_fingerprint

    out = Path(out)
    if out.exists() and not (out.is_dir() and (is_prefs(out) or not any(out.iterdir()))):
        raise PrefsError(f"{out}: exists and is not a prefs folder (limamono data prefs "
                         "output); choose another --output")
    meta = {"prefs": {"version": PREFS_VERSION, "format_version": fmt.FORMAT_VERSION,
                      "model": model, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "config": asdict(result.config)},
            **result.stats()}
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        atomic.write_text(staging / PAIRS_FILE, "".join(
            json.dumps(p.row(), ensure_ascii=False) + "\n" for p in result.pairs))
        atomic.write_text(staging / PREFS_FILE,
                          json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except (OSError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PrefsError(f"{out}: cannot write ({getattr(exc, 'strerror', None) or exc}); "
                         "nothing was changed") from None
    return meta


#: The keys and types every row of ``pairs.jsonl`` has.
_ROW_TYPES: dict[str, type] = {"source": str, "prompt": str, "chosen": str, "rejected": str,
                               "prompt_ids": list, "chosen_ids": list, "rejected_ids": list,
                               "split": str}


def read_prefs(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``prefs.json`` and the rows of ``pairs.jsonl`` of a prefs folder, checked.

    Raises:
        PrefsError: not a prefs folder, or a file or row that is not what the writer writes
            (naming the file and line).
    """
    path = Path(path)
    if not is_prefs(path):
        raise PrefsError(f"{path}: not a prefs folder (no {PREFS_FILE} and {PAIRS_FILE}); "
                         "fix: write one with `limamono data prefs`")
    try:
        meta = untrusted.load_json((path / PREFS_FILE).read_text(encoding="utf-8"))
        lines = (path / PAIRS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, untrusted.UntrustedError) as exc:
        raise PrefsError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prefs"), dict):
        raise PrefsError(f"{path / PREFS_FILE}: no 'prefs' mapping; rewrite it with "
                         "`limamono data prefs`")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path / PAIRS_FILE}:{number}"
        try:
            row = untrusted.load_json(line)
        except untrusted.UntrustedError as exc:
            raise PrefsError(f"{where}: {exc}") from None
        if not isinstance(row, dict):
            raise PrefsError(f"{where}: expected a JSON object")
        for key, kind in _ROW_TYPES.items():
            if not isinstance(row.get(key), kind):
                raise PrefsError(f"{where}: field {key!r} must be a {kind.__name__}")
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in row[key]):
                raise PrefsError(f"{where}: field {key!r} must hold token ids")
        if not row["chosen_ids"] or not row["rejected_ids"]:
            raise PrefsError(f"{where}: an empty reply")
        rows.append(row)
    return meta, rows
