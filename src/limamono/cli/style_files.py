"""Lint and fix files: conversations (.yaml/.yml/.jsonl), prose (.txt) and cards (.png/.json).

``limamono lint`` is a thin loop over ``lint_file``; tests call it directly. Fixes are the
safe ones of ``normalize`` and are written atomically (a temp file in the same folder, then
``os.replace``), so a failed write leaves the original untouched. Only files that parsed
are ever written.

How a YAML conversation is fixed (decision): the message texts are patched in place in the
file's own text (located through the YAML node positions, new quotes escaped inside quoted
scalars), so comments and layout survive; the patched text is parsed again and must give
exactly the normalized conversation. If it does not, each fixed message that is not a block
scalar is written as a double-quoted scalar instead (a plain ``text: \u201cHi,\u201d she
said.`` cannot stay plain once it starts with ``"``); if even that fails (e.g. the curly
quote was written as a ``\u2019`` escape), the file is rewritten with
``conversation.dump_yaml``, which does not keep comments. JSONL files are patched as a whole
and rewritten with ``dumps_jsonl`` when that fails.

A ``.txt`` file is prose, linted with every rule, unless it is a wiki-style character sheet
(a line starts with ``Scenario:``): sheets are written in the present tense and are not
turns, so they get the typography and marker rules only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from limamono.core import conversation as conv_io
from limamono.core.conversation import Conversation, ConversationError
from limamono.style.lint import (
    SHEET_RULES,
    apply_fixes,
    lint,
    lint_card_data,
    lint_conversation,
    normalize,
    normalize_conversation,
    select_rules,
)
from limamono.style.rules import Issue, StyleConfig
from limamono.util import atomic, untrusted

FileKind = Literal["conversation", "text", "card"]

CONVERSATION_SUFFIXES = (".yaml", ".yml", ".jsonl")
TEXT_SUFFIXES = (".txt",)
CARD_SUFFIXES = (".png", ".json")
#: Every suffix a folder walk picks up.
LINTABLE_SUFFIXES = CONVERSATION_SUFFIXES + TEXT_SUFFIXES + CARD_SUFFIXES


@dataclass(frozen=True)
class Finding:
    """An issue with its place in a file.

    Attributes:
        issue: the issue; offsets are into the message, field or file text.
        conversation: index of the conversation in a JSONL file (None for YAML and others).
        field: the card field (``first_mes``, ``alternate_greetings[1]``) for cards.
        line: 1-based line of the issue start, for plain text files.
        column: 1-based column of the issue start, for plain text files.
    """

    issue: Issue
    conversation: int | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def location(self) -> str:
        """The place after the file name: ``message 3:17``, ``first_mes:0``, ``4:12``."""
        if self.line is not None:
            return f"{self.line}:{self.column}"
        parts = [] if self.conversation is None else [f"conversation {self.conversation}"]
        if self.field is not None:
            parts.append(self.field)
        if self.issue.message_index is not None:
            parts.append(f"message {self.issue.message_index}")
        return ":".join([*parts, str(self.issue.start)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the issue's fields plus the location fields."""
        return {**self.issue.to_dict(), "conversation": self.conversation, "field": self.field,
                "line": self.line, "column": self.column, "location": self.location()}


@dataclass
class FileReport:
    """The outcome for one file.

    Attributes:
        path: the file.
        kind: how it was read, or None when it could not be.
        findings: issues left (after fixing, when fixing).
        error: why the file could not be read or written (then exit code 2).
        fixed: number of issues fixed and written.
        note: something the user should know (e.g. the YAML was rewritten without comments).
    """

    path: Path
    kind: FileKind | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    fixed: int = 0
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": str(self.path), "kind": self.kind, "error": self.error,
                "fixed": self.fixed, "note": self.note,
                "issues": [f.to_dict() for f in self.findings]}


class FixWriteError(OSError):
    """The fixed text could not be written; the original file is unchanged."""


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand folders (recursively, sorted, skipping hidden entries) into lintable files.

    Paths named explicitly are yielded as given, whatever their suffix, so that
    ``lint_file`` can say why it cannot read them.
    """
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for child in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
            if child.is_file() and not hidden and child.suffix.lower() in LINTABLE_SUFFIXES:
                yield child


def lint_file(path: str | Path, *, fix: bool = False, rules: Iterable[str] | None = None,
              config: StyleConfig | None = None) -> FileReport:
    """Lint one file, and with ``fix`` apply the safe fixes to it first.

    Never raises for a bad file: the problem is in ``FileReport.error``.
    """
    path = Path(path)
    rules = None if rules is None else list(rules)
    suffix = path.suffix.lower()
    report = FileReport(path)
    if not path.exists():
        report.error = "no such file"
    elif suffix in CONVERSATION_SUFFIXES:
        _conversation_file(report, fix, rules, config)
    elif suffix in TEXT_SUFFIXES:
        _text_file(report, fix, rules, config)
    elif suffix in CARD_SUFFIXES:
        _card_file(report, rules, config)
    else:
        report.error = (f"unknown file type {suffix or '(none)'!r}: expected one of "
                        f"{', '.join(LINTABLE_SUFFIXES)}")
    return report


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) atomically (``limamono.util.atomic``).

    Raises:
        FixWriteError: the write failed; ``path`` is unchanged and no temp file is left.
    """
    try:
        atomic.write_text(path, text)
    except OSError as exc:
        raise FixWriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_text(report: FileReport) -> str | None:
    """The file's text with its line endings as they are (a fix must not convert CRLF)."""
    try:
        with open(report.path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        report.error = f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        report.error = f"cannot read: {exc.strerror or exc}"
    return None


def _write(report: FileReport, text: str, fixed: int) -> bool:
    try:
        atomic_write_text(report.path, text)
    except FixWriteError as exc:
        report.error = f"{exc}; the file is unchanged"
        return False
    report.fixed = fixed
    return True


def _text_file(report: FileReport, fix: bool, rules: list[str] | None,
               config: StyleConfig | None) -> None:
    text = _read_text(report)
    if text is None:
        return
    report.kind = "text"
    if _is_sheet(text):
        rules = [r for r in select_rules(rules) if r in SHEET_RULES]
    if fix:
        fixed_text, fixed = normalize(text, rules=rules)
        if fixed and _write(report, fixed_text, len(fixed)):
            text = fixed_text
    for item in lint(text, rules=rules, config=config):
        line = text.count("\n", 0, item.start) + 1
        column = item.start - (text.rfind("\n", 0, item.start) + 1) + 1
        report.findings.append(Finding(item, line=line, column=column))


def _is_sheet(text: str) -> bool:
    """A wiki-style character sheet (SPEC §4): some line starts with ``Scenario:``."""
    return any(line.startswith("Scenario:") for line in text.splitlines())


def _conversation_file(report: FileReport, fix: bool, rules: list[str] | None,
                       config: StyleConfig | None) -> None:
    from limamono.dataset.sources import NotAConversation, check_is_conversation, yaml_document

    try:
        if report.path.suffix.lower() != ".jsonl":
            check_is_conversation(report.path, yaml_document(report.path))
        conversations = conv_io.load(report.path)
    except NotAConversation as exc:
        report.note = exc.reason
        return
    except ConversationError as exc:
        where = "" if exc.line is None else f"line {exc.line}: "
        what = f"field {exc.field!r}: " if exc.field else ""
        report.error = f"{where}{what}{exc.reason}"
        return
    report.kind = "conversation"
    if fix:
        conversations = _fix_conversations(report, conversations, rules)
    many = report.path.suffix.lower() == ".jsonl"
    for k, conv in enumerate(conversations):
        for item in lint_conversation(conv, rules=rules, config=config):
            report.findings.append(Finding(item, conversation=k if many else None))


def _fix_conversations(report: FileReport, conversations: list[Conversation],
                       rules: list[str] | None) -> list[Conversation]:
    """Normalize and write; returns what the file now holds."""
    results = [normalize_conversation(c, rules=rules) for c in conversations]
    fixed = [c for c, _ in results]
    count = sum(len(issues) for _, issues in results)
    if not count:
        return conversations
    original = _read_text(report)
    if original is None:  # unreadable since it was loaded: write nothing
        return conversations
    candidates = (_patched_text(report.path, original, rules, requote)
                  for requote in (False, True))
    text = next((t for t in candidates if t is not None and _reparse(report.path, t) == fixed),
                None)
    if text is None:
        yaml_file = report.path.suffix.lower() != ".jsonl"
        text = conv_io.dump_yaml(fixed[0]) if yaml_file else conv_io.dumps_jsonl(fixed)
        report.note = ("rewritten from the data (YAML comments and layout not kept)"
                       if yaml_file else "rewritten from the data (JSON layout not kept)")
    return fixed if _write(report, text, count) else conversations


def _patched_text(path: Path, text: str, rules: list[str] | None,
                  requote: bool = False) -> str | None:
    """The file text with the safe fixes applied inside the message texts only.

    With ``requote``, a fixed message that is not a block scalar (``|``/``>``) is written
    again as a double-quoted scalar instead of being patched: a plain scalar that would now
    start with ``"`` (``text: \u201cHi,\u201d she said.``) cannot stay plain.
    """
    if path.suffix.lower() == ".jsonl":
        return None if requote else normalize(text, rules=rules)[0]
    try:
        root = untrusted.compose_yaml(text)
    except untrusted.UntrustedError:
        return None
    fixes: list[Issue] = []
    for node in _message_text_nodes(root):
        start, end = node.start_mark.index, node.end_mark.index
        found = normalize(text[start:end], rules=rules)[1]
        if requote and found and node.style not in ("|", ">"):
            # JSON string syntax is valid YAML double-quoted scalar syntax.
            value = json.dumps(normalize(node.value, rules=rules)[0], ensure_ascii=False)
            fixes.append(Issue(found[0].rule, found[0].severity, "requoted", start, end,
                               None, value))
            continue
        # Inside a quoted scalar the new ASCII quote must be escaped the YAML way.
        escape = _QUOTED_ESCAPES.get(node.style or "", {})
        for item in found:
            new = "".join(escape.get(ch, ch) for ch in item.replacement or "")
            fixes.append(Issue(item.rule, item.severity, item.message, start + item.start,
                               start + item.end, None, new))
    return apply_fixes(text, fixes)


_QUOTED_ESCAPES = {"'": {"'": "''"}, '"': {'"': '\\"'}}


def _message_text_nodes(root: yaml.Node | None) -> Iterator[yaml.ScalarNode]:
    """The scalar nodes of ``messages[*].text`` in a composed YAML document."""
    if not isinstance(root, yaml.MappingNode):
        return
    for key, value in root.value:
        if key.value != "messages" or not isinstance(value, yaml.SequenceNode):
            continue
        for item in value.value:
            if not isinstance(item, yaml.MappingNode):
                continue
            for k, v in item.value:
                if k.value == "text" and isinstance(v, yaml.ScalarNode):
                    yield v


def _reparse(path: Path, text: str) -> list[Conversation] | None:
    """The conversations in patched text, or None if it no longer parses."""
    try:
        if path.suffix.lower() == ".jsonl":
            return list(conv_io.iter_jsonl(text, str(path)))
        return [conv_io.loads_yaml(text, str(path))]
    except ConversationError:
        return None


def _card_file(report: FileReport, rules: list[str] | None,
               config: StyleConfig | None) -> None:
    try:
        from limamono.cards import CardError, read_card
    except ImportError:
        report.note = "skipped: card support (limamono.cards) is not installed"
        return
    from limamono.cards.limits import NotACard

    try:
        card = read_card(report.path)
    except NotACard as exc:
        report.note = f"{exc.reason}, so it is skipped"
        return
    except CardError as exc:
        report.error = exc.reason
        return
    report.kind = "card"
    for key, item in lint_card_data(card.data, rules=rules, config=config):
        report.findings.append(Finding(item, field=key))
