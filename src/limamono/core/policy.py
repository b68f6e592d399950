"""The one prompt policy: trigger, length labels, the Input label, fitting a token budget.

Everything that turns a conversation into a prompt asks a :class:`PromptPolicy` (the chat,
the server's chat route, the evaluation, ``limamono render`` and the dataset builder), so
the same conversation under the same policy gives the same bytes everywhere. ``format``
still writes every header; this module only decides which label each header carries and
which turns are left out.

Named policies (``POLICIES``), chosen explicitly:

- ``training`` (the default): every turn without its own label is labelled from its word
  count with the training bounds, exactly as the dataset builder labels training samples;
  a requested input label applies to the newest user turn only.
- ``sillytavern``: what the exported SillyTavern presets make SillyTavern send (history
  character turns unlabelled, every user turn ``tiny`` or the requested input label).

In both, a message's own label wins, and the open reply gets the requested label (``long``
by default, card advice).

Fitting (:meth:`PromptPolicy.fit`, :func:`fit_text`): when a prompt does not fit its token
budget, the oldest whole turns after the Instruction block go first. The Instruction block,
the newest user turn (and whatever follows it) and the open Response header are never left
out; when even they do not fit, :class:`PromptTooLongError` names the token counts and the
fix. The engine never re-cuts a fitted prompt; it only cuts raw text or refuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Conversation, Message

PolicyName = Literal["training", "sillytavern"]
POLICIES: tuple[str, ...] = ("training", "sillytavern")
DEFAULT_POLICY: PolicyName = "training"

#: The labels the exported SillyTavern presets hard-code (``limamono.cards.presets`` uses these):
#: every Input turn ``tiny``, history Response turns none, the open reply ``long``.
SILLYTAVERN_INPUT_LENGTH = fmt.DEFAULT_INPUT_LENGTH
SILLYTAVERN_HISTORY_RESPONSE_LENGTH: str | None = None
SILLYTAVERN_OPEN_RESPONSE_LENGTH = fmt.DEFAULT_RESPONSE_LENGTH

#: Token count of a text, as the engine will feed it.
CountTokens = Callable[[str], int]

#: Where a turn of a Limamono prompt starts (a left cut may fall only there).
_TURN_START = re.compile(
    re.escape(fmt.BLOCK_SEP) + f"(?:{re.escape(fmt.INPUT)}|{re.escape(fmt.RESPONSE)})")


class ContextOverflowError(ValueError):
    """The prompt does not fit the context and truncation was not allowed."""


class PromptTooLongError(ContextOverflowError):
    """Even the parts a reply answers (sheet, newest user turn, open header) do not fit.

    Attributes:
        needed: tokens of the smallest prompt that may be sent.
        budget: prompt tokens allowed (context minus the reply's tokens).
    """

    def __init__(self, needed: int, context: int, max_new_tokens: int) -> None:
        self.needed = needed
        self.budget = context - max_new_tokens
        super().__init__(
            f"the prompt needs {needed} tokens even with every older turn left out (the "
            f"Instruction block, the newest user turn and the open reply header), but only "
            f"{max(self.budget, 0)} fit (context {context} minus {max_new_tokens} for the "
            "reply); fix: shorten the character sheet or the newest message, lower the reply "
            "length (max_tokens), or raise the context")


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits its budget, and what was left out to make it fit.

    Attributes:
        text: the prompt to send.
        tokens: its token count.
        tokens_before: the token count of the whole prompt, nothing left out.
        dropped: whole turns left out (the oldest ones).
        budget: prompt tokens allowed.
    """

    text: str
    tokens: int
    tokens_before: int
    dropped: int
    budget: int

    @property
    def cut(self) -> bool:
        """Whether anything was left out."""
        return self.dropped > 0

    def describe(self) -> str:
        """One line for a log or a chat note."""
        return (f"prompt cut to fit: {self.tokens_before} -> {self.tokens} tokens (budget "
                f"{self.budget}), {self.dropped} oldest turn(s) dropped")


@dataclass(frozen=True)
class PromptPolicy:
    """How prompts are labelled and fitted; see the module docstring for the named rules.

    Attributes:
        name: ``training`` or ``sillytavern``.
        trigger: ``card``, ``preset`` or a literal trigger phrase.
        length_bounds: upper word counts of the labels (the training bounds).
        stops: stop strings of a reply besides the user's line (``###``).
    """

    name: str = DEFAULT_POLICY
    trigger: str = fmt.DEFAULT_TRIGGER
    length_bounds: tuple[int, ...] = fmt.DEFAULT_LENGTH_BOUNDS
    stops: tuple[str, ...] = (fmt.HEADER_STOP,)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"prompt policy {self.name!r} is not one of {', '.join(POLICIES)}")
        fmt.length_for_words(0, self.length_bounds)  # checks the bounds
        fmt.card_generation_prompt(trigger=self.trigger)  # checks the trigger

    # ------------------------------------------------------------------ labels

    def label(self, conversation: Conversation, input_length: str | None = None,
              continuing: bool = False,
              response_length: str | None = fmt.DEFAULT_RESPONSE_LENGTH) -> Conversation:
        """A copy whose every message carries the label (or None) its header will show.

        Args:
            conversation: the conversation (a message's own label always wins).
            input_length: requested label of user turns (training: the newest only).
            continuing: the last message is a reply being continued: it gets
                ``response_length``, the label it is being generated with.
            response_length: the label of the reply being generated.
        """
        fmt.check_length(input_length, "input_length")
        fmt.check_length(response_length, "response_length")
        conversation = _visible(conversation)
        messages = conversation.messages
        newest_user = _newest_user(messages)
        out: list[Message] = []
        for i, m in enumerate(messages):
            length = m.length
            if length is None:
                if continuing and i == len(messages) - 1 and m.role == "char":
                    length = response_length
                elif self.name == "sillytavern":
                    length = (input_length or SILLYTAVERN_INPUT_LENGTH if m.role == "user"
                              else SILLYTAVERN_HISTORY_RESPONSE_LENGTH)
                elif i == newest_user and input_length is not None:
                    length = input_length
                else:
                    length = fmt.length_for_words(fmt.word_count(m.text), self.length_bounds)
            out.append(m if length == m.length else replace(m, length=length))
        return replace(conversation, messages=out)

    def segments(self, conversation: Conversation, open_response: bool = True,
                 response_length: str | None = fmt.DEFAULT_RESPONSE_LENGTH,
                 input_length: str | None = None,
                 continuing: bool = False) -> list[fmt.Segment]:
        """The labelled prompt as ``format`` segments (see :meth:`render`)."""
        labelled = self.label(conversation, input_length, continuing, response_length)
        return fmt.render_segments(labelled, open_response=open_response,
                                   response_length=response_length, trigger=self.trigger)

    def render(self, conversation: Conversation, open_response: bool = True,
               response_length: str | None = fmt.DEFAULT_RESPONSE_LENGTH,
               input_length: str | None = None, continuing: bool = False) -> str:
        """The prompt of a conversation under this policy, nothing left out.

        Args:
            conversation: the conversation.
            open_response: end with the open reply header ``### Response: ...\\n{char}:``.
            response_length: the open reply's label (None: no label).
            input_length: requested label of user turns (see :meth:`label`).
            continuing: the last message is a reply being continued (no open header).

        Raises:
            limamono.core.format.FormatError: a turn holds a header line, or a label is unknown.
        """
        return "".join(s.text for s in self.segments(
            conversation, open_response, response_length, input_length, continuing))

    def stop_strings(self, user_name: str) -> list[str]:
        """Stop strings of a reply: any header (or the adapter's) and the user's line."""
        return list(dict.fromkeys([*self.stops, *fmt.stop_strings(user_name)[1:]]))

    # ------------------------------------------------------------------ fitting

    def fit(self, conversation: Conversation, count_tokens: CountTokens, context: int,
            max_new_tokens: int, open_response: bool = True,
            response_length: str | None = fmt.DEFAULT_RESPONSE_LENGTH,
            input_length: str | None = None, continuing: bool = False,
            at_least: int = 0, step: int = 1) -> Fitted:
        """The prompt of :meth:`render`, with the oldest whole turns left out until it fits.

        Labels are decided on the whole conversation first, so leaving turns out never
        changes the label of a turn that stays.

        Args:
            count_tokens: the engine's token count of a text.
            context: the context length (prompt + reply) in tokens.
            max_new_tokens: tokens reserved for the reply.
            at_least: leave out at least this many turns (a chat keeps its earlier cut, so
                the prompt's start stays the same and the engine's KV cache stays useful).
            step: leave turns out this many at a time.

        Raises:
            PromptTooLongError: even the Instruction block, the newest user turn and the
                open header do not fit.
        """
        conversation = _visible(conversation)
        segments = self.segments(conversation, open_response, response_length,
                                 input_length, continuing)
        head = "".join(s.text for s in segments if s.kind == "system")
        blocks: dict[int, str] = {}
        for s in segments:
            if s.index is not None:
                blocks[s.index] = blocks.get(s.index, "") + s.text
        ordered = [blocks[i] for i in sorted(blocks)]
        messages = conversation.messages
        keep_from = _newest_user(messages)
        if keep_from is None:
            keep_from = len(messages) if open_response else max(len(messages) - 1, 0)
        return fit_blocks(head, ordered, min(keep_from, max(len(ordered) - 1, 0)),
                          count_tokens, context, max_new_tokens, at_least, step)


# Tokens a reply of a length label may take: its upper word bound (twice the last bound for
# the open-ended ``huge``) at this many tokens per word, a generous figure for English prose
# on both tokenizer families, so a reply is rarely cut before it ends on its own.
TOKENS_PER_WORD = 1.6


def reply_token_budget(length: str, cap: int,
                       bounds: Sequence[int] = fmt.DEFAULT_LENGTH_BOUNDS) -> int:
    """Tokens allowed for a reply (or drafted turn) of ``length``, at most ``cap``."""
    upper = (*bounds, bounds[-1] * 2)
    return min(cap, math.ceil(upper[LENGTHS.index(length)] * TOKENS_PER_WORD))


def get_policy(name: str = DEFAULT_POLICY, trigger: str = fmt.DEFAULT_TRIGGER,
               length_bounds: Sequence[int] = fmt.DEFAULT_LENGTH_BOUNDS,
               stops: Sequence[str] = (fmt.HEADER_STOP,)) -> PromptPolicy:
    """The named policy with a trigger and length bounds (ValueError names a bad value)."""
    return PromptPolicy(name, trigger, tuple(length_bounds), tuple(stops))


# --------------------------------------------------------------------------- fitting

def fit_blocks(head: str, blocks: Sequence[str], keep_from: int, count_tokens: CountTokens,
               context: int, max_new_tokens: int, at_least: int = 0,
               step: int = 1) -> Fitted:
    """``head`` + the newest ``blocks`` that fit ``context - max_new_tokens`` tokens.

    ``blocks[keep_from:]`` are never left out. Per-block counts estimate where to cut; the
    joined text is counted to confirm, since tokens may merge across a block boundary.

    Raises:
        PromptTooLongError: ``head`` + ``blocks[keep_from:]`` does not fit.
    """
    budget = context - max_new_tokens
    whole = head + "".join(blocks)
    before = count_tokens(whole)
    first = min(max(at_least, 0), keep_from)
    if first == 0 and before <= budget:
        return Fitted(whole, before, before, 0, budget)
    step = max(step, 1)
    if first < keep_from:
        sizes = [count_tokens(b) for b in blocks]
        estimate = count_tokens(head) + sum(sizes[first:])
        while first < keep_from and estimate > budget:
            nxt = min(first + step, keep_from)
            estimate -= sum(sizes[first:nxt])
            first = nxt
    while True:
        text = head + "".join(blocks[first:])
        tokens = count_tokens(text) if first else before
        if tokens <= budget:
            return Fitted(text, tokens, before, first, budget)
        if first >= keep_from:
            raise PromptTooLongError(tokens, context, max_new_tokens)
        first = min(first + step, keep_from)


def split_turns(prompt: str) -> tuple[str, list[str]] | None:
    """A Limamono prompt as (trigger + Instruction block, turn blocks); None for other text.

    Each block starts with its ``\\n\\n### Input:``/``### Response:`` header; the last one
    is the open reply header (or the reply being continued).
    """
    starts = [m.start() for m in _TURN_START.finditer(prompt)]
    if not starts or f"{fmt.INSTRUCTION}\n" not in prompt[:starts[0]]:
        return None
    ends = [*starts[1:], len(prompt)]
    return prompt[:starts[0]], [prompt[a:b] for a, b in zip(starts, ends, strict=True)]


def closed_sheet_without_turn(prompt: str) -> bool:
    """Whether ``prompt`` is a Limamono sheet closed by a blank line, with no turn after it.

    SillyTavern sends this when the sheet alone fills its prompt budget (context minus
    response length minus padding): the story string, ending in its blank line, and no
    history, no user turn and no ``### Response:`` header. A model given it writes
    whatever follows a sheet, so it is refused rather than generated. A sheet that is not
    closed (a card-generation prompt: ``### Instruction:`` and the start of a sheet) and
    every prompt with a turn are not this.
    """
    if not prompt.endswith(fmt.BLOCK_SEP) or _TURN_START.search(prompt):
        return False
    head, found, sheet = prompt.partition(f"{fmt.INSTRUCTION}\n")
    return bool(found) and "\n" not in head.strip("\n") and bool(sheet.strip())


def fit_text(prompt: str, count_tokens: CountTokens, context: int,
             max_new_tokens: int) -> Fitted | None:
    """Fit a rendered Limamono prompt (a text-completion request) by whole turns.

    The bytes the client sent are kept; only whole turns before the newest Input turn go.

    Returns:
        The fitted prompt, or None when ``prompt`` is not a Limamono prompt (the engine then
        cuts raw tokens from the left, as KoboldCpp does).

    Raises:
        PromptTooLongError: the Instruction block, the newest Input turn and what follows
            it do not fit.
    """
    split = split_turns(prompt)
    if split is None:
        return None
    head, blocks = split
    inputs = [i for i, b in enumerate(blocks) if b.startswith(fmt.BLOCK_SEP + fmt.INPUT)]
    keep_from = min(inputs[-1] if inputs else len(blocks) - 1, len(blocks) - 1)
    return fit_blocks(head, blocks, keep_from, count_tokens, context, max_new_tokens)


def _visible(conversation: Conversation) -> Conversation:
    """The conversation without its hidden messages (they are never rendered)."""
    if not any(m.hidden for m in conversation.messages):
        return conversation
    return replace(conversation, messages=[m for m in conversation.messages if not m.hidden])


def _newest_user(messages: Sequence[Message]) -> int | None:
    return max((i for i, m in enumerate(messages) if m.role == "user"), default=None)


class Tokenizes(Protocol):
    """What :func:`token_counter` needs of an engine: its ``tokenize`` (``prompt_ids`` too,
    when the engine adds start tokens to every prompt)."""

    def tokenize(self, text: str) -> list[int]: ...


def token_counter(engine: Tokenizes) -> CountTokens:
    """The token count of a prompt as ``engine`` will feed it (the one place that says how).

    An engine that adds start tokens (BOS) to every prompt says so with ``prompt_ids``;
    otherwise its ``tokenize`` is the count.
    """
    ids_of = getattr(engine, "prompt_ids", None) or engine.tokenize
    return lambda text: len(ids_of(text))
