"""Drafting with a model in text-completion mode: character sheets and whole conversations.

Sheets: the card-generation prompt (SPEC §2) is the trigger phrase and an open
``### Instruction:`` block; the model writes a wiki-style sheet there because that is what
follows in every training sample. A name and hint lines, when given, are written first and
the model carries on after them. The result is a draft: it is parsed with
``cards.sheet_to_card`` and what the layout expects but the model did not write (e.g. no
``Scenario:`` line) is reported, never filled in (SPEC §8: generated sheets hallucinate and
must be checked by a person).

Conversations (``draft_conversation``): the way the card's dataset was made, a base model
writes both sides turn by turn. Each turn's prompt is the conversation so far rendered by
the prompt policy (``limamono.core.policy``) with an open header of the requested length and the
speaker's name prefilled; the model writes until it starts the next header. Drafts are
marked ``meta.draft`` and ``data build`` refuses them until a person has edited them.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Conversation, Message, Role
from limamono.core.policy import reply_token_budget
from limamono.engine.protocol import Engine

if TYPE_CHECKING:
    from limamono.cards import SheetParts
    from limamono.core.policy import PromptPolicy

#: Default budget of a generated sheet, in tokens (the bundled sheets are 300-450).
DEFAULT_SHEET_TOKENS = 400


@dataclass(frozen=True)
class SheetDraft:
    """A generated character sheet and what parsing it found.

    Attributes:
        prompt: the exact text-completion prompt.
        sheet: the sheet (given start + generated text), name on the first line.
        parts: the parsed sheet (its ``missing`` and ``notes`` say what to check), or None
            when it could not be parsed.
        error: why parsing failed (e.g. the model wrote nothing), else None.
        finish_reason: how generation ended (``stop`` at ``###``, ``length``, ``cancelled``).
        completion_tokens: tokens generated.
    """

    prompt: str
    sheet: str
    parts: SheetParts | None
    error: str | None
    finish_reason: str
    completion_tokens: int


def sheet_start(name: str | None = None, hint: str | None = None) -> str:
    """The beginning of the sheet that the model continues: the name line, then hint lines.

    Both end with a newline, so the model starts a new line after them; with neither, the
    model writes the name itself.
    """
    start = ""
    if name and name.strip():
        if "\n" in name.strip():
            raise ValueError("the name must be one line (it is the sheet's first line)")
        start += name.strip() + "\n"
    if hint and hint.strip():
        start += hint.strip() + "\n"
    return start


def sheet_prompt(name: str | None = None, hint: str | None = None,
                 trigger: str = fmt.DEFAULT_TRIGGER) -> str:
    """The card-generation prompt with the sheet's given start appended."""
    return fmt.card_generation_prompt(None, trigger) + sheet_start(name, hint)


def draft_sheet(engine: Engine, settings: Any, name: str | None = None, hint: str | None = None,
                max_new_tokens: int = DEFAULT_SHEET_TOKENS, trigger: str = fmt.DEFAULT_TRIGGER,
                cancel: threading.Event | None = None) -> SheetDraft:
    """Let the model write a character sheet and parse it.

    Args:
        engine: any Engine.
        settings: sampler settings, passed to the engine as they are.
        name: the character's name (the model invents one when None).
        hint: the first lines of the sheet after the name, e.g. ``Occupation: ferry pilot``.
        max_new_tokens: the most tokens to generate.
        trigger: the trigger phrase key or text.
        cancel: stops generation when set.
    """
    from limamono.cards import CardError, sheet_to_card

    prompt = sheet_prompt(name, hint, trigger)
    completion = engine.generate(prompt, settings, max_new_tokens, stop=[fmt.HEADER_STOP],
                                 cancel=cancel)
    sheet = clean_sheet(sheet_start(name, hint) + completion.text)
    parts, error = None, None
    try:
        parts = sheet_to_card(sheet, "<generated sheet>")
    except CardError as exc:
        error = str(exc)
    return SheetDraft(prompt, sheet, parts, error, completion.finish_reason,
                      completion.completion_tokens)


def clean_sheet(text: str) -> str:
    """Trim the generated text to sheet lines: no blank lines, no trailing space.

    A sheet is one block (blank lines would end the Instruction block in a prompt); the
    model's blank lines are layout noise, so they go. Nothing else is changed.
    """
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    return "\n".join(line for line in lines if line)


def draft_report(draft: SheetDraft) -> list[str]:
    """What a person should check in a draft, one line each (empty when nothing)."""
    if draft.parts is None:
        return [f"the sheet could not be read: {draft.error}"]
    notes = [f"missing: {part} (not invented; add it by hand)" for part in draft.parts.missing]
    notes += list(draft.parts.notes)
    if draft.finish_reason == "length":
        notes.append("the model stopped at the token limit; the last line may be cut off")
    return notes


# --------------------------------------------------------------------------- conversations

#: Length labels of drafted turns when none are asked for: the card's dataset (bot turns
#: mostly ``long``/``massive``, a ``huge`` greeting, short user turns).
DEFAULT_USER_LENGTHS: tuple[str, ...] = ("tiny", "short")
DEFAULT_CHAR_LENGTHS: tuple[str, ...] = ("long", "massive")
DEFAULT_GREETING_LENGTH = "huge"
#: Cap on the tokens of one drafted turn (a ``huge`` turn's budget is larger).
DEFAULT_TURN_TOKENS = 1024


@dataclass(frozen=True)
class DraftPlan:
    """What to draft: how many turns and the length labels to ask for.

    Attributes:
        turns: messages to write (the greeting counts as one).
        user_lengths: labels for user turns, one picked per turn (seeded).
        char_lengths: labels for character turns after the greeting.
        greeting_length: the label of the first character turn of an empty conversation.
        max_new_tokens: cap on the tokens of one turn.
        retries: new seeds to try when the model writes an empty turn.
    """

    turns: int = 6
    user_lengths: tuple[str, ...] = DEFAULT_USER_LENGTHS
    char_lengths: tuple[str, ...] = DEFAULT_CHAR_LENGTHS
    greeting_length: str = DEFAULT_GREETING_LENGTH
    max_new_tokens: int = DEFAULT_TURN_TOKENS
    retries: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.turns < 1:
            problems.append(f"turns must be at least 1, got {self.turns}")
        for what, labels in (("user_lengths", self.user_lengths),
                             ("char_lengths", self.char_lengths),
                             ("greeting_length", (self.greeting_length,))):
            bad = [x for x in labels if x not in LENGTHS]
            if bad or not labels:
                problems.append(f"{what} {list(labels)} must be labels from "
                                f"{', '.join(LENGTHS)}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.retries < 0:
            problems.append(f"retries must be at least 0, got {self.retries}")
        if problems:
            raise ValueError("invalid draft plan: " + "; ".join(problems))


@dataclass
class ConversationDraft:
    """A drafted conversation and how its drafting went.

    Attributes:
        conversation: the conversation with the new turns (normalised text).
        new_turns: turns written by the model this time.
        finish: ``done``, ``cancelled`` (Ctrl-C: the finished turns are kept) or ``empty``
            (the model wrote nothing for a turn, with every retry).
        notes: what a person should know (a turn cut at the token limit, a prompt that had
            to leave old turns out, a turn cut where the model began the other side's).
        prompts: the exact prompt of each new turn.
    """

    conversation: Conversation
    new_turns: int = 0
    finish: str = "done"
    notes: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)


def next_role(conversation: Conversation) -> Role:
    """Who speaks next: the character opens, then the two sides alternate."""
    messages = conversation.messages
    return "user" if messages and messages[-1].role == "char" else "char"


def turn_prompt(policy: PromptPolicy, conversation: Conversation, role: Role,
                length: str) -> str:
    """The prompt of the next turn: the conversation so far, then the open header of
    ``role`` with ``length`` and the speaker's name (``...\n\n### Input: (length = tiny)\nTom:``).

    The open turn is rendered as an empty message whose text piece is left off, so the
    policy and ``format`` write it exactly as they write every other turn.
    """
    opened = replace(conversation, messages=[*conversation.messages,
                                             Message(role, "", length)])
    segments = policy.segments(opened, open_response=False)
    if segments[-1].kind != "text" or segments[-1].text != " ":  # pragma: no cover
        raise RuntimeError("format.render_segments no longer ends a turn with its text piece")
    return "".join(s.text for s in segments[:-1])


def turn_budget(length: str, cap: int) -> int:
    """Tokens allowed for a drafted turn of ``length``: the policy's reply budget."""
    return reply_token_budget(length, cap)


def clean_turn(text: str) -> str:
    """The generated text of a turn as a message: the space after ``Name:`` and the blank
    lines before the next header go, and so does trailing space on each line."""
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    return "\n".join(lines).strip()


def draft_conversation(engine: Engine, settings: Any, start: Conversation, plan: DraftPlan,
                       seed: int, policy: PromptPolicy | None = None,
                       cancel: threading.Event | None = None,
                       on_turn: Callable[[int, int, Message], None] | None = None
                       ) -> ConversationDraft:
    """Let the model write ``plan.turns`` more turns of ``start``, one at a time.

    Turns already in ``start`` are never changed. Each turn is generated up to the next
    header (or the other speaker starting a line), cleaned and normalised with the style
    module's safe fixes.

    Args:
        engine: any Engine (text completion).
        settings: sampler settings; turn k of the draft uses ``seed + k`` (retries add
            1000 each), so a draft is repeatable.
        start: the conversation to extend (sheet and scenario; maybe turns already).
        plan: turns and labels.
        seed: the draft's seed (labels are picked with it too).
        policy: the prompt policy (default: ``limamono.core.policy.get_policy()``).
        cancel: when set, the turn being written is dropped and drafting stops.
        on_turn: called as ``on_turn(done, total, message)`` after each finished turn.
    """
    from limamono.core.policy import get_policy, token_counter
    from limamono.style import normalize

    policy = policy or get_policy()
    count = token_counter(engine)
    rng = random.Random(seed)
    draft = ConversationDraft(start)
    for k in range(plan.turns):
        conv = draft.conversation
        index, role = len(conv.messages), next_role(conv)
        length = _pick_length(plan, conv, role, rng)
        budget = turn_budget(length, plan.max_new_tokens)
        fitted = _fit(turn_prompt(policy, conv, role, length), count, engine.context_length,
                      budget)
        if fitted.cut:
            draft.notes.append(f"turn {index}: {fitted.describe()}")
        other = conv.user.name if role == "char" else conv.character.name
        seeds = [seed + k + 1000 * attempt for attempt in range(plan.retries + 1)]
        done, text = _write_turn(engine, settings, fitted.text, budget,
                                 policy.stop_strings(other), seeds, normalize, cancel)
        if done.finish_reason == "cancelled":
            draft.finish = "cancelled"
            return draft
        if not text:
            draft.finish = "empty"
            draft.notes.append(f"turn {index}: the model wrote nothing ({len(seeds)} seeds); "
                               "drafting stopped there")
            return draft
        if done.finish_reason == "length":
            draft.notes.append(f"turn {index}: cut at the {budget}-token limit; the last "
                               "sentence may be unfinished")
        if done.stop_string == f"\n{other}:":
            draft.notes.append(f"turn {index}: the model began {other}'s turn without a "
                               "header; cut there")
        message = Message(role, text, length)
        draft.conversation = replace(conv, messages=[*conv.messages, message])
        draft.prompts.append(fitted.text)
        draft.new_turns += 1
        if on_turn:
            on_turn(k + 1, plan.turns, message)
    return draft


def _pick_length(plan: DraftPlan, conv: Conversation, role: Role, rng: random.Random) -> str:
    """The label of the next turn: the greeting's, else one of the role's (seeded)."""
    if role == "user":
        return rng.choice(plan.user_lengths)
    return plan.greeting_length if not conv.messages else rng.choice(plan.char_lengths)


def _write_turn(engine: Engine, settings: Any, prompt: str, budget: int, stops: list[str],
                seeds: list[int], normalize: Callable[[str], tuple[str, Any]],
                cancel: threading.Event | None) -> tuple[Any, str]:
    """Generate one turn, a new seed per try while the model writes nothing.

    Returns:
        The last completion and its cleaned, normalised text ("" when every try was empty
        or the turn was cancelled).
    """
    text, done = "", None
    for turn_seed in seeds:
        turn_settings = (settings.replace(seed=turn_seed) if hasattr(settings, "replace")
                         else settings)
        done = engine.generate(prompt, turn_settings, budget, stop=stops, cancel=cancel)
        if done.finish_reason == "cancelled":
            return done, ""
        text = normalize(clean_turn(done.text))[0]
        if text:
            break
    return done, text


def _fit(prompt: str, count: Callable[[str], int], context: int, budget: int) -> Any:
    """The prompt fitted to the context by whole turns (``policy.fit_text``)."""
    from limamono.core.policy import Fitted, fit_text

    fitted = fit_text(prompt, count, context, budget)
    if fitted is None:  # not reachable for a rendered prompt; kept total for the type
        tokens = count(prompt)
        return Fitted(prompt, tokens, tokens, 0, context - budget)
    return fitted


def draft_findings(conversation: Conversation) -> list[dict[str, Any]]:
    """The lint findings of a draft: the dataset rules, the style rules and the quality
    checks, each as ``{message_index, rule, message}`` in message order."""
    from limamono.dataset import Record, check_record
    from limamono.quality import check_turn

    found = [{"message_index": p.message_index, "rule": p.rule, "message": p.message}
             for p in check_record(Record(conversation, "<draft>")) if p.rule != "draft"]
    for i, m in enumerate(conversation.messages):
        found += [{"message_index": i, "rule": f.rule, "message": f.message}
                  for f in check_turn(m.text, m.role, user_name=conversation.user.name,
                                      length=m.length)]
    return sorted(found, key=lambda f: (-1 if f["message_index"] is None
                                        else f["message_index"], f["rule"]))


def mark_draft(draft: ConversationDraft, model: str, adapter: str | None, seed: int,
               settings: Any) -> Conversation:
    """The drafted conversation with ``meta.draft`` and what a person needs to review it:
    the model, adapter, seed, sampler settings, how drafting ended and the lint findings."""
    import dataclasses

    sampler = ({k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(settings).items()}
               if dataclasses.is_dataclass(settings) and not isinstance(settings, type)
               else None)
    conv = draft.conversation
    meta = {**conv.meta, "draft": True, "model": model, "adapter": adapter or "none",
            "seed": seed, "sampler": sampler, "finish": draft.finish,
            "notes": list(draft.notes), "lint": draft_findings(conv)}
    return replace(conv, meta=meta)


def is_draft(conversation: Conversation) -> bool:
    """Whether a conversation is an unreviewed model draft (``meta.draft`` is true)."""
    return conversation.meta.get("draft") is True


def parse_lengths(text: str, what: str) -> tuple[str, ...]:
    """Comma-separated length labels (``tiny,short``); ValueError names the bad one."""
    labels = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in labels if x not in LENGTHS]
    if bad or not labels:
        raise ValueError(f"{what} {text!r}: expected labels from {', '.join(LENGTHS)}")
    return labels

