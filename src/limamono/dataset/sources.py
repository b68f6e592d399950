"""Dataset inputs: find conversation files, import LimaRP YAML, and lint every record.

A dataset is a folder (searched recursively) of conversation YAML files, JSONL files (one
conversation per line) and LimaRP YAML files. Loading never stops at the first bad file:
every schema error, every rule broken by every conversation is collected as a ``Problem``
naming the file, the message index and the rule, so one ``limamono data lint`` run shows
everything there is to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core.conversation import (
    Character,
    Conversation,
    ConversationError,
    Message,
    Role,
    User,
)
from limamono.dataset.folders import PREFS_FILE, STATS_FILE, is_built, is_prefs
from limamono.util import untrusted

Severity = Literal["error", "warning", "note"]
#: Top-level keys of which a conversation file has at least one.
_CONVERSATION_KEYS = ("character", "user", "messages")


class NotAConversation(ConversationError):
    """A YAML file that is some other document (a training config, say), not a conversation."""

#: File suffixes read from a dataset folder.
SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".jsonl")

#: LimaRP placeholders: the character the model plays and the other side.
LIMARP_FIRST, LIMARP_SECOND = "<FIRST>", "<SECOND>"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset file or conversation.

    Attributes:
        file: the file it was found in.
        rule: a stable rule id (``schema``, ``duplicate``, ``empty-turn``, a style rule id...).
        message: what is wrong and how to fix it.
        severity: ``error`` blocks a build; ``warning`` is reported only; ``note`` says what
            was skipped.
        message_index: the offending message, when the problem belongs to one.
        line: 1-based line in the file, when known.
        record: index of the conversation in a JSONL file (0 for YAML files).
    """

    file: str
    rule: str
    message: str
    severity: Severity = "error"
    message_index: int | None = None
    line: int | None = None
    record: int = 0

    def where(self) -> str:
        """``file[:line]`` plus the message index, for one-line reports."""
        place = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.message_index is not None:
            place += f" message {self.message_index}"
        return place


@dataclass(frozen=True)
class Record:
    """A loaded conversation and where it came from (file, and record index within it)."""

    conversation: Conversation
    file: str
    index: int = 0

    @property
    def name(self) -> str:
        """``file`` or ``file#index`` for JSONL records after the first."""
        return self.file if self.index == 0 else f"{self.file}#{self.index}"


def find_files(root: str | Path, follow_links: bool = False) -> list[Path]:
    """Every dataset file under ``root`` (or ``root`` itself if it is a file), sorted; see
    ``walk_dataset`` for what is skipped.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    return walk_dataset(root, follow_links)[0]


def walk_dataset(root: str | Path,
                 follow_links: bool = False) -> tuple[list[Path], list[Problem]]:
    """The dataset files under ``root`` (sorted) and a ``note`` for every one skipped.

    Hidden files and folders, files of other types and built datasets are passed over as
    before. A symbolic link is read only when it stays inside the dataset, unless
    ``follow_links``; a link to a folder inside the dataset is not entered (its files are
    read where they are), so no link loop is walked. Broken links, link loops, FIFOs,
    devices and sockets are skipped, each with a note saying why.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if not root.is_dir():
        return [root], []  # one file: its reader refuses what it cannot read
    real_root = root.resolve()
    builds = set(built_folders(root))
    files: list[Path] = []
    notes: list[Problem] = []

    def skip(path: Path, reason: str) -> None:
        notes.append(Problem(str(path), "skipped", f"{reason}, so it is skipped",
                             severity="note"))

    entered = {real_root}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skip(folder, f"the folder cannot be read ({exc.strerror})")
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or path in builds:
                continue
            wanted = path.suffix.lower() in SUFFIXES
            target = path
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", 0) == 40
                    skip(path, "a symbolic link loop" if loop else
                         f"a broken symbolic link (to {os.readlink(path)})")
                    continue
                inside = target == real_root or real_root in target.parents
                if target.is_dir() and inside:
                    skip(path, f"a link to a folder inside the dataset ({target}); its "
                         "files are read where they are")
                    continue
                if not inside and not follow_links and (wanted or target.is_dir()):
                    skip(path, f"a link to {target}, outside the dataset (--follow-links "
                         "reads it)")
                    continue
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                skip(path, f"it cannot be read ({exc.strerror})")
                continue
            if stat.S_ISDIR(mode):
                if target in entered:
                    skip(path, f"a link to {target}, a folder already read")
                    continue
                entered.add(target)
                stack.append(path)
            elif wanted and not stat.S_ISREG(mode):
                kind = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
                        stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(
                            stat.S_IFMT(mode), "not a plain file")
                skip(path, f"not a regular file ({kind})")
            elif wanted:
                files.append(path)
    return sorted(files), sorted(notes, key=lambda p: p.file)


def built_folders(root: Path) -> list[Path]:
    """The folders under ``root`` that hold a ``limamono data build`` or ``data prefs``
    output: their rows are not conversations, so the dataset tools skip them (with a note)."""
    return sorted({p.parent for p in root.rglob(STATS_FILE) if is_built(p.parent)}
                  | {p.parent for p in root.rglob(PREFS_FILE) if is_prefs(p.parent)})


# --------------------------------------------------------------------------- LimaRP

def is_limarp(data: Any) -> bool:
    """Whether a parsed YAML document is a LimaRP record (``names`` + ``conversation``)."""
    return isinstance(data, dict) and "conversation" in data and "names" in data


def from_limarp(data: dict[str, Any], source: str = "<limarp>") -> Conversation:
    """Convert a LimaRP record into a Conversation.

    ``<FIRST>`` is the character the model plays (its persona becomes the sheet body),
    ``<SECOND>`` the user; placeholders are replaced by the names everywhere.

    Raises:
        ConversationError: a field is missing or has the wrong type.
    """
    names = _limarp_map(data, "names", source)
    personas = _limarp_map(data, "persona", source, required=False)
    char = _limarp_text(names.get(LIMARP_FIRST), f"names.{LIMARP_FIRST}", source).strip()
    user = _limarp_text(names.get(LIMARP_SECOND), f"names.{LIMARP_SECOND}", source).strip()

    def fill(text: str) -> str:
        return text.replace(LIMARP_FIRST, char).replace(LIMARP_SECOND, user)

    turns = data.get("conversation")
    if not isinstance(turns, list):
        raise ConversationError("expected a list of {name, text} turns", source,
                                field="conversation")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversationError("expected a mapping with name and text", source,
                                    field=f"conversation[{i}]")
        text = _limarp_text(turn.get("text"), f"conversation[{i}].text", source)
        role: Role = "char" if turn.get("name") == LIMARP_FIRST else "user"
        messages.append(Message(role, fill(text).strip("\n")))
    description = fill(_limarp_text(personas.get(LIMARP_FIRST, ""), "persona", source))
    user_persona = fill(_limarp_text(personas.get(LIMARP_SECOND, ""), "persona", source))
    scenario = fill(_limarp_text(data.get("scenario", ""), "scenario", source)).strip()
    return Conversation(Character(char, description.strip("\n")), User(user, user_persona),
                        scenario, messages, {"format": "limarp"})


def _limarp_map(data: dict[str, Any], key: str, source: str,
                required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConversationError(f"expected a mapping keyed {LIMARP_FIRST}/{LIMARP_SECOND}",
                                source, field=key)
    return value


def _limarp_text(value: Any, field: str, source: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConversationError(f"expected text, got {type(value).__name__}", source,
                                field=field)
    return value


# --------------------------------------------------------------------------- loading

def load_file(path: str | Path) -> list[Conversation]:
    """The conversations of one file: limamono YAML, LimaRP YAML or JSONL.

    Raises:
        NotAConversation: a YAML mapping with none of the conversation keys.
        ConversationError: naming the file, line and field at fault.
    """
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml_document(path)
        if is_limarp(data):
            return [from_limarp(data, str(path))]
        check_is_conversation(path, data)
    return conv_mod.load(path)


def yaml_document(path: Path) -> Any:
    """The parsed YAML of a file (bounded, ``limamono.util.untrusted``), None if empty.

    Raises:
        ConversationError: unreadable, too big (``untrusted.MAX_YAML_BYTES``), not UTF-8 or
            not acceptable YAML, with its line.
    """
    text = conv_mod.read_yaml_text(path)
    try:
        return untrusted.load_yaml(text)
    except untrusted.UntrustedError as exc:
        raise ConversationError(exc.reason, str(path), exc.line) from None


def check_is_conversation(path: Path, data: Any) -> None:
    """Refuse a YAML document that is something else: a mapping with none of the
    conversation keys (a training config, say). The one place that decides it, for the
    dataset tools and the style linter.

    Raises:
        NotAConversation: naming the keys it lacks.
    """
    if isinstance(data, dict) and not is_limarp(data) \
            and not any(key in data for key in _CONVERSATION_KEYS):
        raise NotAConversation("not a conversation, so it is skipped (it has none of "
                               f"{', '.join(_CONVERSATION_KEYS)})", str(path))


def load_dir(root: str | Path,
             follow_links: bool = False) -> tuple[list[Record], list[Problem]]:
    """Load every file under ``root``; schema errors become problems instead of stopping,
    and a YAML file that is not a conversation (a training config) and every file
    ``walk_dataset`` skips (links outside the dataset, FIFOs, ...) become a ``note``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    records: list[Record] = []
    problems: list[Problem] = [
        Problem(str(folder), "skipped", "a built dataset (limamono data build output), so it "
                "is skipped", severity="note")
        for folder in (built_folders(Path(root)) if Path(root).is_dir() else [])]
    paths, skipped = walk_dataset(root, follow_links)
    problems.extend(skipped)
    for path in paths:
        try:
            found = load_file(path)
        except NotAConversation as exc:
            problems.append(Problem(str(path), "skipped", exc.reason, severity="note"))
            continue
        except ConversationError as exc:
            problems.append(Problem(str(path), "schema", _schema_message(exc), line=exc.line))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), "schema", f"cannot read: {exc}"))
            continue
        records.extend(Record(c, str(path), i) for i, c in enumerate(found))
    return records, problems


def _schema_message(exc: ConversationError) -> str:
    field = f"field {exc.field!r}: " if exc.field else ""
    return f"{field}{exc.reason}"


# --------------------------------------------------------------------------- checks

def content_hash(conversation: Conversation) -> str:
    """SHA-256 of what a conversation says (sheet, names, scenario, turns; not ``meta``)."""
    body = replace(conversation, meta={}).to_dict()
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def check_record(record: Record) -> list[Problem]:
    """Every problem of one conversation: format, empty turns, alternation, scenario, style."""
    conv, out = record.conversation, []

    def add(rule: str, message: str, severity: Severity = "error",
            index: int | None = None) -> None:
        out.append(Problem(record.file, rule, message, severity, index, record=record.index))

    if conv.meta.get("draft") is True:
        add("draft", "a model's draft (meta.draft: true) not yet reviewed: check and edit it, "
            "then remove `draft: true` (data build refuses it without --include-drafts)",
            "warning")
    if not conv.scenario:
        add("missing-scenario", "no scenario: add `scenario:` (the card strongly advises a "
            "Scenario line at the end of every sheet)", "warning")
    if not any(m.role == "char" for m in conv.messages):
        add("no-char-turn", "no character turn, so nothing would be trained", "warning")
    for i, message in enumerate(conv.messages):
        if not message.text.strip():
            add("empty-turn", "the turn is empty: write its text or delete it", index=i)
        if i and message.role == conv.messages[i - 1].role:
            add("alternation", f"two {message.role} turns in a row (messages {i - 1} and "
                f"{i}): merge them or add the missing turn between", "warning", i)
        try:
            fmt.render_segments(replace(conv, messages=[message]))
        except fmt.FormatError as exc:
            add("header-in-text", str(exc).split(": ", 1)[-1], index=i)
    out.extend(_style_problems(record))
    return out


def _style_problems(record: Record) -> list[Problem]:
    """Problems from ``limamono.style.lint_conversation`` when that module provides it."""
    try:
        from limamono import style
    except ImportError:  # pragma: no cover - the style package is part of the project
        return []
    lint = getattr(style, "lint_conversation", None)
    if lint is None:
        return []
    problems = []
    for issue in lint(record.conversation):
        is_error = getattr(issue, "severity", "warning") == "error"
        severity: Severity = "error" if is_error else "warning"
        problems.append(Problem(record.file, str(issue.rule), str(issue.message), severity,
                                getattr(issue, "message_index", None), record=record.index))
    return problems


def duplicate_problems(records: Iterable[Record]) -> list[Problem]:
    """One problem per conversation whose content repeats an earlier one."""
    seen: dict[str, Record] = {}
    out = []
    for record in records:
        digest = content_hash(record.conversation)
        if digest in seen:
            first = seen[digest]
            out.append(Problem(record.file, "duplicate", f"same content as {first.name} "
                               f"(sha256 {digest[:12]}): delete one copy", record=record.index))
        else:
            seen[digest] = record
    return out
