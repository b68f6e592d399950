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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from limamono.util import untrusted
from limamono.util.untrusted import quote

#: Length labels, shortest to longest (the card's list; SPEC §2).
LENGTHS: tuple[str, ...] = ("micro", "tiny", "short", "medium", "long", "massive", "huge")

Role = Literal["char", "user"]
ROLES: tuple[str, ...] = ("char", "user")

_TOP_KEYS = ("character", "user", "scenario", "messages", "meta", "title", "created")
_CHARACTER_KEYS = ("name", "description")
_USER_KEYS = ("name", "persona")
_MESSAGE_KEYS = ("role", "text", "length", "swipes", "swipe_id", "hidden", "send_date", "meta")
_SWIPE_KEYS = ("text", "cut", "finish_reason", "info")


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


#: Why the impersonation guard ended a generated swipe: the user's turn or a ``###`` header.
Cut = Literal["user", "header"]
CUTS: tuple[str, ...] = ("user", "header")


@dataclass
class Swipe:
    """One alternative text of a message.

    Attributes:
        text: the text, without the ``Name: `` prefix.
        cut: ``"user"`` or ``"header"`` when the impersonation guard ended the reply there.
        finish_reason: how generation ended (``stop``, ``length``, ``cancelled``); None for
            text a person wrote.
        info: data kept from an imported file (SillyTavern ``swipe_info``), never rendered.
    """

    text: str
    cut: Cut | None = None
    finish_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(init=False)
class Message:
    """One turn: who speaks, its alternatives (swipes), the one shown, an optional label.

    ``Message(role, text, length)`` is a turn with one swipe (what dataset files hold); a chat
    message keeps every alternative reply in ``swipes`` and shows ``swipes[swipe_id]``.
    ``text`` is the shown swipe's text. Given together with ``swipes``, ``text`` wins for the
    shown swipe (SillyTavern's rule for ``mes``, and what :meth:`with_text` and
    ``dataclasses.replace(m, text=...)`` mean), so a file edited by hand never disagrees with
    itself.

    Attributes:
        role: ``char`` or ``user``.
        swipes: the alternatives, at least one.
        swipe_id: index of the shown (and rendered) swipe.
        length: a fixed length label; None lets the caller label the turn.
        hidden: never rendered into a prompt (SillyTavern's ``is_system`` messages).
        send_date: when it was written, as the source wrote it (ISO 8601 for new messages).
        meta: data of an imported file that limamono does not model, kept for export; never
            rendered.
    """

    role: Role
    swipes: list[Swipe]
    swipe_id: int
    length: str | None
    hidden: bool
    send_date: str
    meta: dict[str, Any]

    def __init__(self, role: Role, text: str | None = None, length: str | None = None, *,
                 swipes: Sequence[Swipe] | None = None, swipe_id: int = 0,
                 hidden: bool = False, send_date: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        if swipes is None:
            if text is None:
                raise ValueError("a message needs a text or swipes")
            swipes = [Swipe(text)]
        if not swipes:
            raise ValueError("a message needs at least one swipe")
        if not 0 <= swipe_id < len(swipes):
            raise ValueError(f"swipe_id {swipe_id} is out of range 0..{len(swipes) - 1}")
        self.role = role
        self.swipes = list(swipes)  # each message owns its list (replace() must not share it)
        self.swipe_id = swipe_id
        if text is not None and self.swipes[swipe_id].text != text:
            self.swipes[swipe_id] = replace(self.swipes[swipe_id], text=text)
        self.length = length
        self.hidden = hidden
        self.send_date = send_date
        self.meta = {} if meta is None else meta

    def with_text(self, text: str) -> Message:
        """A copy whose shown swipe has ``text`` (the other swipes and fields unchanged)."""
        return Message(self.role, text, self.length, swipes=self.swipes,
                       swipe_id=self.swipe_id, hidden=self.hidden, send_date=self.send_date,
                       meta=self.meta)

    @property
    def current(self) -> Swipe:
        """The swipe shown and rendered."""
        return self.swipes[self.swipe_id]

    @property
    def text(self) -> str:
        """The text of the shown swipe."""
        return self.current.text

    def speaker(self, conversation: Conversation) -> str:
        """The name this message is written under in the prompt."""
        return conversation.character.name if self.role == "char" else conversation.user.name


@dataclass
class Conversation:
    """A roleplay conversation or chat: the header (sheet, user, scenario) and the turns.

    The one model of a chat: dataset files, the chat session, the chat store and SillyTavern
    chat files all hold this (conversions: ``to_dict``/``from_dict`` for YAML and JSONL,
    ``limamono.store`` for SQLite rows and SillyTavern JSONL).

    Attributes:
        character: who the model plays.
        user: who it talks to.
        scenario: the situation at the start (the sheet's last line, ``Scenario: ...``).
        messages: the turns, oldest first.
        meta: free-form data carried along but never rendered (source, split, tags...).
        title: a chat's title (its file name when imported); empty for dataset files.
        created: when the chat began, as its source wrote it; empty when unknown.
    """

    character: Character
    user: User
    scenario: str = ""
    messages: list[Message] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    created: str = ""

    def transcript(self) -> Conversation:
        """What a reader sees: the visible messages, each with its shown swipe only.

        This is the conversation-file form of a chat (``chats export x.yaml``): no hidden
        messages, no alternatives, no metadata, title or date.
        """
        return Conversation(self.character, self.user, self.scenario,
                            [Message(m.role, m.text, m.length) for m in self.messages
                             if not m.hidden])

    def to_dict(self) -> dict[str, Any]:
        """The schema form (what YAML and JSONL files hold); ``from_dict`` inverts it.

        Fields at their defaults are left out, so a dataset conversation stays
        ``role``/``text``/``length`` per message.
        """
        character: dict[str, Any] = {"name": self.character.name,
                                     "description": self.character.description}
        user: dict[str, Any] = {"name": self.user.name}
        if self.user.persona:
            user["persona"] = self.user.persona
        out: dict[str, Any] = {"character": character, "user": user,
                               "scenario": self.scenario,
                               "messages": [_message_dict(m) for m in self.messages]}
        if self.meta:
            out["meta"] = self.meta
        if self.title:
            out["title"] = self.title
        if self.created:
            out["created"] = self.created
        return out


def _message_dict(m: Message) -> dict[str, Any]:
    item: dict[str, Any] = {"role": m.role, "text": m.text}
    if m.length is not None:
        item["length"] = m.length
    if len(m.swipes) > 1 or m.swipes[0] != Swipe(m.text):
        item["swipes"] = [_swipe_dict(s) for s in m.swipes]
        if m.swipe_id:
            item["swipe_id"] = m.swipe_id
    if m.hidden:
        item["hidden"] = True
    if m.send_date:
        item["send_date"] = m.send_date
    if m.meta:
        item["meta"] = m.meta
    return item


def _swipe_dict(s: Swipe) -> str | dict[str, Any]:
    if s == Swipe(s.text):
        return s.text
    out: dict[str, Any] = {"text": s.text}
    if s.cut is not None:
        out["cut"] = s.cut
    if s.finish_reason is not None:
        out["finish_reason"] = s.finish_reason
    if s.info:
        out["info"] = s.info
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
    title = c.text(top.get("title"), "title", required=False)
    created = c.text(top.get("created"), "created", required=False)
    return Conversation(character, user, scenario, messages, dict(meta), title, created)


def _message(c: _Checker, item: Any, path: str) -> Message:
    m = c.mapping(item, path, _MESSAGE_KEYS)
    role = m.get("role")
    if role not in ROLES:
        raise c.fail(f"{path}.role", f"expected one of {', '.join(ROLES)}, got {quote(role)}")
    length = m.get("length")
    if length is not None and length not in LENGTHS:
        raise c.fail(f"{path}.length",
                     f"expected one of {', '.join(LENGTHS)}, got {quote(length)}")
    swipes = _swipes(c, m.get("swipes"), f"{path}.swipes")
    swipe_id = m.get("swipe_id", 0)
    if swipes is None and "swipe_id" in m:
        raise c.fail(f"{path}.swipe_id", "swipe_id needs a swipes list")
    if not isinstance(swipe_id, int) or isinstance(swipe_id, bool) \
            or not 0 <= swipe_id < len(swipes or [None]):
        raise c.fail(f"{path}.swipe_id", f"expected an index into swipes (0.."
                     f"{len(swipes or [None]) - 1}), got {quote(swipe_id)}")
    # With swipes, ``text`` may be left out: the shown swipe's text is the message's text.
    raw_text = m.get("text")
    if raw_text is None and swipes is not None:
        raw_text = swipes[swipe_id].text
    text = c.text(raw_text, f"{path}.text").strip("\n")
    hidden = m.get("hidden", False)
    if not isinstance(hidden, bool):
        raise c.fail(f"{path}.hidden", f"expected true or false, got {quote(hidden)}")
    send_date = c.text(m.get("send_date"), f"{path}.send_date", required=False)
    meta = m.get("meta")
    meta = {} if meta is None else c.mapping(meta, f"{path}.meta")
    c.plain_data(meta, f"{path}.meta")
    return Message(role, text, length, swipes=swipes, swipe_id=swipe_id, hidden=hidden,
                   send_date=send_date, meta=dict(meta))


def _swipes(c: _Checker, value: Any, path: str) -> list[Swipe] | None:
    """A message's ``swipes``: each a text, or a mapping with its text and generation data."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise c.fail(path, "expected a non-empty list of swipes")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            out.append(Swipe(item.strip("\n")))
            continue
        s = c.mapping(item, where, _SWIPE_KEYS)
        cut = s.get("cut")
        if cut is not None and cut not in CUTS:
            raise c.fail(f"{where}.cut", f"expected one of {', '.join(CUTS)}, got {quote(cut)}")
        reason = s.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise c.fail(f"{where}.finish_reason", f"expected text, got {quote(reason)}")
        info = s.get("info")
        info = {} if info is None else c.mapping(info, f"{where}.info")
        c.plain_data(info, f"{where}.info")
        out.append(Swipe(c.text(s.get("text"), f"{where}.text").strip("\n"), cut, reason,
                         dict(info)))
    return out


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
    """Load one conversation from a YAML file (of at most ``untrusted.MAX_YAML_BYTES``)."""
    path = Path(path)
    return loads_yaml(read_yaml_text(path), str(path))


def load_jsonl(path: str | Path) -> list[Conversation]:
    """Load every conversation of a JSONL file (one per line; blank lines are skipped),
    reading it a line at a time (each line at most ``untrusted.MAX_LINE_BYTES``)."""
    path = Path(path)
    return list(_iter_jsonl_lines(_file_lines(path), str(path)))


def iter_jsonl(text: str, source: str = "<string>") -> Iterator[Conversation]:
    """Yield the conversations of JSONL text, each error naming its line."""
    yield from _iter_jsonl_lines(((n, line) for n, line in
                                  enumerate(text.split("\n"), start=1) if line.strip()), source)


def _iter_jsonl_lines(lines: Iterable[tuple[int, str]],
                      source: str) -> Iterator[Conversation]:
    for number, line in lines:
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


def read_yaml_text(path: Path) -> str:
    """The text of a YAML conversation file, bounded (``untrusted.read_text``).

    Raises:
        ConversationError: missing, unreadable, not a regular file, too big or not UTF-8.
    """
    try:
        return untrusted.read_text(path, untrusted.MAX_YAML_BYTES, "YAML file")
    except FileNotFoundError:
        raise ConversationError("no such file", str(path)) from None
    except OSError as exc:
        raise ConversationError(f"cannot read: {exc.strerror}", str(path)) from None
    except untrusted.UntrustedError as exc:
        raise ConversationError(exc.reason, str(path), exc.line) from None


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        yield from untrusted.iter_lines(path)
    except FileNotFoundError:
        raise ConversationError("no such file", str(path)) from None
    except OSError as exc:
        raise ConversationError(f"cannot read: {exc.strerror}", str(path)) from None
    except untrusted.UntrustedError as exc:
        raise ConversationError(exc.reason, str(path), exc.line) from None


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|`` block scalars."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)
