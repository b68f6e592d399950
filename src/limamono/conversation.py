"""The one data model: a character, a user, a scenario and the messages between them.

Everything in limamono (the renderer, the dataset builder, the chat, the server, the
evaluation) speaks in these dataclasses. Files come in as YAML (one conversation per file)
or JSONL (one conversation per line); every loading error names the file, the line and the
field, so a typo in a 40-turn conversation is found at once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from limamono import untrusted
from limamono.untrusted import quote

#: Length labels, shortest to longest (the card's list; SPEC §2).
LENGTHS: tuple[str, ...] = ("micro", "tiny", "short", "medium", "long", "massive", "huge")

Role = Literal["char", "user"]
ROLES: tuple[str, ...] = ("char", "user")

_TOP_KEYS = ("character", "user", "scenario", "messages", "meta")
_CHARACTER_KEYS = ("name", "description")
_USER_KEYS = ("name", "persona")
_MESSAGE_KEYS = ("role", "text", "length")


class ConversationError(ValueError):
    """A conversation file or record does not follow the schema.

    Attributes:
        source: file path (or "<string>") the record came from.
        line: 1-based line in that file where the offending value starts, if known.
        field: dotted path of the offending field, e.g. ``messages[3].role``.
    """

    def __init__(self, message: str, source: str = "<data>", line: int | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.reason = message
        where = source if line is None else f"{source}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True)
class Character:
    """The character the model plays.

    Attributes:
        name: the name on the sheet's first line and in front of every character turn.
        description: the sheet body between the name line and the ``Scenario:`` line
            (attributes, paragraphs, trivia), without a trailing newline.
    """

    name: str
    description: str = ""


@dataclass(frozen=True)
class User:
    """The person talking to the character (the prompt never shows the persona)."""

    name: str
    persona: str = ""


@dataclass(frozen=True)
class Message:
    """One turn: who speaks, the text without the ``Name: `` prefix, an optional length label."""

    role: Role
    text: str
    length: str | None = None

    def speaker(self, conversation: Conversation) -> str:
        """The name this message is written under in the prompt."""
        return conversation.character.name if self.role == "char" else conversation.user.name


@dataclass
class Conversation:
    """A roleplay conversation: the character sheet, the user, the scenario and the turns.

    Attributes:
        character: who the model plays.
        user: who it talks to.
        scenario: the situation at the start (the sheet's last line, ``Scenario: ...``).
        messages: the turns, oldest first.
        meta: free-form data carried along but never rendered (source, split, tags...).
    """

    character: Character
    user: User
    scenario: str = ""
    messages: list[Message] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The schema form (what YAML and JSONL files hold); ``from_dict`` inverts it."""
        character: dict[str, Any] = {"name": self.character.name,
                                     "description": self.character.description}
        user: dict[str, Any] = {"name": self.user.name}
        if self.user.persona:
            user["persona"] = self.user.persona
        messages = []
        for m in self.messages:
            item: dict[str, Any] = {"role": m.role, "text": m.text}
            if m.length is not None:
                item["length"] = m.length
            messages.append(item)
        out: dict[str, Any] = {"character": character, "user": user,
                               "scenario": self.scenario, "messages": messages}
        if self.meta:
            out["meta"] = self.meta
        return out


# --------------------------------------------------------------------------- validation

def _lines_of(node: yaml.Node | None, path: str = "") -> dict[str, int]:
    """Map every dotted field path under a YAML node to its 1-based start line."""
    out: dict[str, int] = {}
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            out[sub] = key.start_mark.line + 1
            for p, line in _lines_of(value, sub).items():
                out.setdefault(p, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_lines_of(item, f"{path}[{i}]"))
    return out


class _Checker:
    """Collects the location of a record so errors can point at file, line and field."""

    def __init__(self, source: str, lines: dict[str, int] | None = None,
                 base_line: int | None = None) -> None:
        self.source = source
        self.lines = lines or {}
        self.base_line = base_line

    def fail(self, path: str, message: str) -> ConversationError:
        # The field itself may be absent (a missing key): fall back to its nearest parent.
        probe = path
        line = self.lines.get(probe)
        while line is None and probe:
            probe = re.sub(r"(\.?[^.\[\]]+|\[\d+\])$", "", probe)
            line = self.lines.get(probe)
        return ConversationError(message, self.source, line or self.base_line, path or None)

    def mapping(self, value: Any, path: str,
                allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A mapping whose keys are all in ``allowed`` (any keys when it is None)."""
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        unknown = [k for k in value if allowed is not None and k not in allowed]
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}" if path else str(unknown[0]),
                            f"unknown field (allowed: {', '.join(allowed or ())})")
        return value

    def name(self, value: Any, path: str, empty: str) -> str:
        """A name: one line of text (it heads the sheet and prefixes every turn)."""
        name = self.text(value, path).strip()
        if not name:
            raise self.fail(path, empty)
        if "\n" in name or "\r" in name:
            raise self.fail(path, "holds a line break; a name must be one line")
        return name

    def plain_data(self, value: Any, path: str) -> None:
        """Refuse what JSON cannot hold (dates, binary, non-text keys, NaN), so a record
        that loads can always be written out again."""
        stack = [(value, path)]
        while stack:
            item, where = stack.pop()
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise self.fail(where, f"key {quote(key)} is not text")
                    stack.append((child, f"{where}.{key}"))
            elif isinstance(item, list):
                stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
            elif isinstance(item, float) and not math.isfinite(item):
                raise self.fail(where, f"{item!r} is not a number JSON can hold")
            elif item is not None and not isinstance(item, (str, int, float, bool)):
                raise self.fail(where, f"expected text, a number, true/false, a list or a "
                                       f"mapping, got {type(item).__name__}")

    def text(self, value: Any, path: str, required: bool = True) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            kind = "missing" if value is None else f"a {type(value).__name__}"
            raise self.fail(path, f"expected text, got {kind}")
        return value


def from_dict(data: Any, source: str = "<data>", lines: dict[str, int] | None = None,
              base_line: int | None = None) -> Conversation:
    """Build a Conversation from its schema form, checking every field.

    Args:
        data: the parsed record (a mapping with character, user, scenario, messages).
        source: file name used in error messages.
        lines: field path -> line, when the record came from YAML.
        base_line: the record's line, when it came from a JSONL file.

    Raises:
        ConversationError: naming the file, line and field at fault.
    """
    c = _Checker(source, lines, base_line)
    top = c.mapping(data, "", _TOP_KEYS)
    for key in ("character", "user", "messages"):
        if key not in top:
            raise c.fail(key, "required field is missing")
    ch = c.mapping(top["character"], "character", _CHARACTER_KEYS)
    name = c.name(ch.get("name"), "character.name", "the character needs a name")
    character = Character(name, c.text(ch.get("description"), "character.description",
                                       required=False).rstrip("\n"))
    us = top["user"]
    if isinstance(us, str):  # shorthand: `user: Tom`
        us = {"name": us}
    us = c.mapping(us, "user", _USER_KEYS)
    user_name = c.name(us.get("name"), "user.name", "the user needs a name")
    user = User(user_name, c.text(us.get("persona"), "user.persona", required=False))
    scenario = c.text(top.get("scenario"), "scenario", required=False).strip()
    raw_messages = top["messages"]
    if not isinstance(raw_messages, list):
        raise c.fail("messages", f"expected a list, got {type(raw_messages).__name__}")
    messages = [_message(c, item, f"messages[{i}]") for i, item in enumerate(raw_messages)]
    meta = top.get("meta")
    meta = {} if meta is None else c.mapping(meta, "meta")
    c.plain_data(meta, "meta")
    return Conversation(character, user, scenario, messages, dict(meta))


def _message(c: _Checker, item: Any, path: str) -> Message:
    m = c.mapping(item, path, _MESSAGE_KEYS)
    role = m.get("role")
    if role not in ROLES:
        raise c.fail(f"{path}.role", f"expected one of {', '.join(ROLES)}, got {quote(role)}")
    text = c.text(m.get("text"), f"{path}.text")
    length = m.get("length")
    if length is not None and length not in LENGTHS:
        raise c.fail(f"{path}.length",
                     f"expected one of {', '.join(LENGTHS)}, got {quote(length)}")
    return Message(role, text.strip("\n"), length)


# --------------------------------------------------------------------------- files

def loads_yaml(text: str, source: str = "<string>") -> Conversation:
    """Parse one conversation from YAML text."""
    try:
        node = untrusted.compose_yaml(text)
        data = untrusted.construct(node)
    except untrusted.UntrustedError as exc:
        raise ConversationError(exc.reason, source, exc.line) from None
    if data is None:
        raise ConversationError("the file is empty", source, 1)
    return from_dict(data, source, _lines_of(node))


def load_yaml(path: str | Path) -> Conversation:
    """Load one conversation from a YAML file."""
    path = Path(path)
    return loads_yaml(_read(path), str(path))


def load_jsonl(path: str | Path) -> list[Conversation]:
    """Load every conversation of a JSONL file (one per line; blank lines are skipped)."""
    path = Path(path)
    return list(iter_jsonl(_read(path), str(path)))


def iter_jsonl(text: str, source: str = "<string>") -> Iterator[Conversation]:
    """Yield the conversations of JSONL text, each error naming its line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = untrusted.load_json(line)
        except untrusted.UntrustedError as exc:
            raise ConversationError(exc.reason, source, number) from None
        yield from_dict(data, source, base_line=number)


def load(path: str | Path) -> list[Conversation]:
    """Load a ``.yaml``/``.yml`` or ``.jsonl`` file into conversations, by extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return [load_yaml(path)]
    if suffix in (".jsonl", ".json"):
        return load_jsonl(path)
    raise ConversationError("unknown file type (expected .yaml, .yml or .jsonl)", str(path))


def dump_yaml(conversation: Conversation) -> str:
    """YAML text for one conversation, prose as block scalars so it stays hand-editable."""
    return yaml.dump(conversation.to_dict(), Dumper=_BlockDumper, sort_keys=False,
                     allow_unicode=True, width=100)


def dumps_jsonl(conversations: list[Conversation]) -> str:
    """JSONL text, one conversation per line."""
    return "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in conversations)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversationError("no such file", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConversationError(f"not UTF-8 text (byte {exc.start})", str(path)) from None
    except OSError as exc:
        raise ConversationError(f"cannot read: {exc.strerror}", str(path)) from None


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|`` block scalars."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)
