"""The Limamono prompt format: render, parse, length labels and the HF chat template.

This module is the only place that writes ``### Instruction:``, ``### Input:`` and
``### Response:``. Training (through ``render_segments``), inference (``render``), the
chat template and the SillyTavern presets (``limamono.cards.presets``) are all built from the
constants below, so every path produces the same bytes (SPEC §2).

Layout (blocks joined by one blank line, no trailing newline)::

    {trigger}

    ### Instruction:
    {name}
    {description}
    Scenario: {scenario}

    ### Response: (length = long)
    {char}: {text}

    ### Input: (length = tiny)
    {user}: {text}

    ### Response: (length = long)
    {char}:
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from limamono.core.conversation import LENGTHS, Character, Conversation, Message, User
from limamono.util.untrusted import quote

#: Bumped when the rendered bytes change; stored in adapters and datasets.
FORMAT_VERSION = "limamono-1"

#: The trigger phrases: the card's (default) and the published SillyTavern preset's.
TRIGGERS: dict[str, str] = {
    "card": "Below is an instruction that describes background information for a story-rich "
            "chat. Write an appropriate response for both the instruction and user input.",
    "preset": "Below is an instruction that describes background information for a chat. "
              "Write appropriate responses for both the instruction and user input.",
}
DEFAULT_TRIGGER = "card"

INSTRUCTION = "### Instruction:"
INPUT = "### Input:"
RESPONSE = "### Response:"
SCENARIO_PREFIX = "Scenario: "
BLOCK_SEP = "\n\n"
#: The stop string of the published preset: any header the model starts to write.
HEADER_STOP = "###"

#: Defaults at inference (card advice): long responses, tiny inputs.
DEFAULT_RESPONSE_LENGTH = "long"
DEFAULT_INPUT_LENGTH = "tiny"

#: Upper word-count bound of each label but the last (SPEC §6); above the last: ``huge``.
DEFAULT_LENGTH_BOUNDS: tuple[int, ...] = (10, 30, 60, 120, 240, 480)

SegmentKind = Literal["system", "header", "name", "text"]

_HEADER_LINE = re.compile(r"^### (Instruction|Input|Response):(?: \(length = ([a-z]+)\))?$")
_TURN_HEADER = re.compile(r"\n\n### (Input|Response):(?: \(length = ([^)\n]*)\))?\n")
_HEADER_IN_TEXT = re.compile(r"(^|\n)### ")


class FormatError(ValueError):
    """Text that does not follow the Limamono format, or a conversation that cannot be rendered.

    Attributes:
        line: 1-based line of the rendered text where the problem is, if known.
        message_index: index of the offending message, if known.
    """

    def __init__(self, message: str, line: int | None = None,
                 message_index: int | None = None) -> None:
        self.line = line
        self.message_index = message_index
        where = []
        if line is not None:
            where.append(f"line {line}")
        if message_index is not None:
            where.append(f"message {message_index}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered prompt; ``render`` is the concatenation of the segments.

    ``kind`` says what the piece is (the trigger and Instruction block, a turn header, a
    speaker prefix ``Name:``, or the turn's text, which starts with its space); ``role`` and
    ``index`` say which message it belongs to. The dataset builder masks by these fields.
    """

    text: str
    kind: SegmentKind
    role: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    """What ``parse`` recovers: the conversation and how its end was rendered."""

    conversation: Conversation
    open_response: bool
    response_length: str | None
    trigger: str


# --------------------------------------------------------------------------- lengths

def check_length(length: str | None, what: str = "length") -> str | None:
    """Return ``length`` if it is None or a known label, else raise FormatError."""
    if length is not None and length not in LENGTHS:
        raise FormatError(f"{what} {quote(length)} is not one of {', '.join(LENGTHS)}")
    return length


def length_for_words(words: int, bounds: Sequence[int] = DEFAULT_LENGTH_BOUNDS) -> str:
    """The length label for a word count: the first label whose upper bound it does not exceed.

    >>> length_for_words(10), length_for_words(11), length_for_words(481)
    ('micro', 'tiny', 'huge')
    """
    if len(bounds) != len(LENGTHS) - 1 or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"length bounds must be {len(LENGTHS) - 1} increasing numbers, "
                         f"got {list(bounds)}")
    for label, bound in zip(LENGTHS, bounds, strict=False):
        if words <= bound:
            return label
    return LENGTHS[-1]


def word_count(text: str) -> int:
    """Words as whitespace-separated runs (the unit of the length labels)."""
    return len(text.split())


def label_lengths(conversation: Conversation, bounds: Sequence[int] = DEFAULT_LENGTH_BOUNDS,
                  overwrite: bool = False) -> Conversation:
    """A copy whose messages carry length labels from their word counts.

    Args:
        conversation: the conversation to label.
        bounds: upper word bounds per label (see ``DEFAULT_LENGTH_BOUNDS``).
        overwrite: also relabel messages that already have a label.
    """
    messages = [m if (m.length and not overwrite)
                else replace(m, length=length_for_words(word_count(m.text), bounds))
                for m in conversation.messages]
    return replace(conversation, messages=messages)


# --------------------------------------------------------------------------- rendering

def header(role: str, length: str | None) -> str:
    """The header line of a turn: ``### Response: (length = long)`` or ``### Input:``."""
    base = RESPONSE if role == "char" else INPUT
    return base if length is None else f"{base} (length = {check_length(length)})"


def render_sheet(character: Character, scenario: str) -> str:
    """The Instruction block body: name line, description, ``Scenario: ...`` last."""
    lines = [character.name]
    if character.description:
        lines.append(character.description)
    if scenario:
        lines.append(SCENARIO_PREFIX + scenario)
    return "\n".join(lines)


def render_segments(conversation: Conversation, open_response: bool = False,
                    response_length: str | None = DEFAULT_RESPONSE_LENGTH,
                    input_length: str | None = None,
                    trigger: str = DEFAULT_TRIGGER) -> list[Segment]:
    """The prompt as labelled pieces; see ``render`` for the arguments."""
    check_length(response_length, "response_length")
    check_length(input_length, "input_length")
    phrase = _trigger_text(trigger)
    sheet = render_sheet(conversation.character, conversation.scenario)
    segments = [Segment(f"{phrase}{BLOCK_SEP}{INSTRUCTION}\n{sheet}", "system")]
    for i, message in enumerate(conversation.messages):
        if message.hidden:  # kept in the chat, never in a prompt
            continue
        _check_turn_text(message, i)
        length = message.length
        if length is None and message.role == "user":
            length = input_length
        segments.append(Segment(f"{BLOCK_SEP}{header(message.role, length)}\n", "header",
                                message.role, i))
        segments.append(Segment(f"{message.speaker(conversation)}:", "name", message.role, i))
        segments.append(Segment(f" {message.text}", "text", message.role, i))
    if open_response:
        index = len(conversation.messages)
        segments.append(Segment(f"{BLOCK_SEP}{header('char', response_length)}\n", "header",
                                "char", index))
        segments.append(Segment(f"{conversation.character.name}:", "name", "char", index))
    return segments


def render(conversation: Conversation, open_response: bool = False,
           response_length: str | None = DEFAULT_RESPONSE_LENGTH,
           input_length: str | None = None, trigger: str = DEFAULT_TRIGGER) -> str:
    """Render a conversation as a Limamono prompt (SPEC §2), byte for byte.

    Args:
        conversation: the conversation; each message's own length label is used.
        open_response: end with an open character turn (``### Response: ...\\n{char}:``)
            for generation.
        response_length: the open turn's length label (None: no modifier).
        input_length: label for user turns that have none of their own.
        trigger: ``"card"`` (default), ``"preset"``, or a literal trigger phrase.

    Raises:
        FormatError: a turn contains a header line, or a length label is unknown.
    """
    return "".join(s.text for s in render_segments(
        conversation, open_response, response_length, input_length, trigger))


def card_generation_prompt(name: str | None = None, trigger: str = DEFAULT_TRIGGER) -> str:
    """The text-completion prompt from which the model writes a character sheet."""
    return f"{_trigger_text(trigger)}{BLOCK_SEP}{INSTRUCTION}\n{name or ''}"


def stop_strings(user_name: str) -> list[str]:
    """Stop strings for a reply: any header (``###``) and the user starting a line."""
    return [HEADER_STOP, f"\n{user_name}:"]


def _trigger_text(trigger: str) -> str:
    if trigger in TRIGGERS:
        return TRIGGERS[trigger]
    if not trigger.strip() or "\n" in trigger:
        raise FormatError(f"trigger must be one of {', '.join(TRIGGERS)} or one line of text")
    return trigger


def _check_turn_text(message: Message, index: int) -> None:
    if _HEADER_IN_TEXT.search(message.text):
        raise FormatError("the text contains a '### ' header line, which would break the "
                          "format", message_index=index)


# --------------------------------------------------------------------------- parsing

def parse(text: str) -> ParsedPrompt:
    """Recover the conversation from a rendered prompt; the inverse of ``render``.

    Raises:
        FormatError: naming the line where the text stops following the format.
    """
    trigger_key = next((k for k, v in TRIGGERS.items() if text.startswith(v)), None)
    if trigger_key is None:
        first = text.split("\n", 1)[0]
        if not first.strip():
            raise FormatError("expected the trigger phrase on the first line", line=1)
        trigger_key, start = first, len(first)  # a custom trigger phrase
    else:
        start = len(TRIGGERS[trigger_key])
    opening = f"{BLOCK_SEP}{INSTRUCTION}\n"
    if not text.startswith(opening, start):
        raise FormatError(f"expected a blank line and {INSTRUCTION!r} after the trigger phrase",
                          line=2)
    body_start = start + len(opening)
    turns = list(_TURN_HEADER.finditer(text, body_start))
    sheet_end = turns[0].start() if turns else len(text)
    character, scenario = _parse_sheet(text[body_start:sheet_end], _line_at(text, body_start))
    user_name: str | None = None
    messages: list[Message] = []
    open_length: str | None = None
    is_open = False
    for n, match in enumerate(turns):
        kind, length = match.group(1), match.group(2)
        line = _line_at(text, match.start() + 2)
        if length is not None and length not in LENGTHS:
            raise FormatError(f"unknown length label {length!r}", line=line)
        end = turns[n + 1].start() if n + 1 < len(turns) else len(text)
        body = text[match.end():end]
        if kind == "Response":
            if body == f"{character.name}:" and n == len(turns) - 1:
                is_open, open_length = True, length
                break
            prefix = f"{character.name}: "
            if not body.startswith(prefix):
                raise FormatError(f"a Response turn must start with {prefix!r}", line=line + 1)
            messages.append(Message("char", body[len(prefix):], length))
        else:
            name, sep, rest = body.partition(": ")
            if not sep or "\n" in name or not name:
                raise FormatError("an Input turn must start with 'Name: '", line=line + 1)
            if user_name is not None and name != user_name:
                raise FormatError(f"Input turns switch speaker from {user_name!r} to {name!r}",
                                  line=line + 1)
            user_name = name
            messages.append(Message("user", rest, length))
    conversation = Conversation(character, User(user_name or "User"), scenario, messages)
    return ParsedPrompt(conversation, is_open, open_length, trigger_key)


def _parse_sheet(sheet: str, first_line: int) -> tuple[Character, str]:
    if not sheet or sheet.startswith("\n"):
        raise FormatError("the Instruction block must start with the character's name",
                          line=first_line)
    lines = sheet.split("\n")
    for bad, line in enumerate(lines):
        if _HEADER_LINE.match(line):
            raise FormatError(f"unexpected header {quote(line)} in the Instruction block",
                              line=first_line + bad)
    name, rest = lines[0], lines[1:]
    scenario = ""
    scenario_at = max((i for i, line in enumerate(rest) if line.startswith(SCENARIO_PREFIX)),
                      default=None)
    if scenario_at is not None:
        scenario = "\n".join(rest[scenario_at:])[len(SCENARIO_PREFIX):]
        rest = rest[:scenario_at]
    return Character(name, "\n".join(rest)), scenario


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# --------------------------------------------------------------------------- chat messages

def to_chat_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """OpenAI-style messages for a conversation: the sheet as system, then the turns.

    Each turn carries ``name`` and, where set, ``length``; ``CHAT_TEMPLATE`` renders the list
    to exactly ``render(conversation)``.
    """
    out: list[dict[str, Any]] = [{"role": "system", "content": render_sheet(
        conversation.character, conversation.scenario)}]
    for m in conversation.messages:
        if m.hidden:
            continue
        item: dict[str, Any] = {"role": "assistant" if m.role == "char" else "user",
                                "name": m.speaker(conversation), "content": m.text}
        if m.length is not None:
            item["length"] = m.length
        out.append(item)
    return out


def from_chat_messages(messages: Sequence[dict[str, Any]], user_name: str = "User",
                       char_name: str | None = None) -> Conversation:
    """The conversation behind OpenAI-style messages (system = sheet, user/assistant turns).

    Several system messages are joined by newlines; a message's ``name`` names its speaker
    and ``length`` sets its label. Raises FormatError naming the message at fault.
    """
    system = [m for m in messages if m.get("role") == "system"]
    sheet = "\n".join(_content(m, i) for i, m in enumerate(messages) if m in system).strip("\n")
    if not sheet and not char_name:
        raise FormatError("a system message with the character sheet (name on the first line) "
                          "is required", message_index=0)
    if char_name and sheet and sheet.split("\n", 1)[0] != char_name:
        sheet = f"{char_name}\n{sheet}"  # a sheet that does not start with the name
    character, scenario = _parse_sheet(sheet, 1) if sheet else (Character(char_name or ""), "")
    turns: list[Message] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise FormatError(f"role {role!r} is not system, user or assistant", message_index=i)
        name = m.get("name")
        if role == "user" and isinstance(name, str) and name.strip():
            user_name = name.strip()
        length = m.get("length")
        check_length(length, f"messages[{i}].length")
        turns.append(Message("char" if role == "assistant" else "user", _content(m, i), length))
    return Conversation(character, User(user_name), scenario, turns)


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise FormatError("content must be text", message_index=index)
    return content


def _jinja_str(value: str) -> str:
    """A Jinja string literal for a constant (Jinja unescapes ``\\n`` in literals)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template(trigger: str = DEFAULT_TRIGGER) -> str:
    """The HF chat template (Jinja) producing ``render`` from ``to_chat_messages`` output.

    Extra template variables: ``response_length`` (default ``long``; empty for none) for the
    generation prompt, ``user_name`` for user messages without ``name``.
    """
    sep, resp, inp = _jinja_str(BLOCK_SEP), _jinja_str(RESPONSE), _jinja_str(INPUT)
    return (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{ raise_exception('The first message must be the system message holding the "
        "character sheet.') }}{%- endif -%}"
        "{%- set char = messages[0]['content'].split('\\n')[0] -%}"
        "{%- set rlen = response_length if response_length is defined else "
        f"{_jinja_str(DEFAULT_RESPONSE_LENGTH)} -%}}"
        "{%- set uname = user_name if user_name is defined else 'User' -%}"
        f"{{{{ {_jinja_str(_trigger_text(trigger) + BLOCK_SEP + INSTRUCTION)} }}}}"
        "{{ '\\n' + messages[0]['content'] }}"
        "{%- for m in messages[1:] -%}"
        f"{{{{ {sep} + ({resp} if m['role'] == 'assistant' else {inp}) }}}}"
        "{%- if m['length'] is defined and m['length'] %}{{ ' (length = ' + m['length'] + ')' }}"
        "{%- endif -%}"
        "{%- if m['name'] is defined and m['name'] %}{% set who = m['name'] %}"
        "{%- elif m['role'] == 'assistant' %}{% set who = char %}{% else %}{% set who = uname %}"
        "{%- endif -%}"
        "{{ '\\n' + who + ': ' + m['content'] }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        f"{{{{ {sep} + {resp} }}}}"
        "{%- if rlen %}{{ ' (length = ' + rlen + ')' }}{% endif -%}"
        "{{ '\\n' + char + ':' }}"
        "{%- endif -%}"
    )
