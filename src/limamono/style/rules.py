"""The house-style rules: a registry of stable ids, severities and checks (SPEC §3).

Each rule is a small function from a ``Context`` (the text, its spans, the speakers'
names) to the ``Issue`` values it finds, registered under an id that never changes
meaning (``LM001``...). Ids are grouped by tens: typography (safe automatic fixes), paired
markers, format breaks, asterisk actions, narration heuristics. A rule with a safe fix puts
the replacement text on its issues; ``limamono.style.lint.normalize`` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from limamono.style.convert import DEFAULT_MAX_SOUND_WORDS, is_action
from limamono.style.spans import DELIMITERS, Span, split_spans, stray_closers

Severity = Literal["error", "warning"]
SEVERITIES: tuple[str, ...] = ("error", "warning")


@dataclass(frozen=True)
class Rule:
    """One house-style rule.

    Attributes:
        id: stable id, e.g. ``LM001``; never reused for another meaning.
        name: short kebab-case name, accepted wherever an id is.
        severity: ``error`` (breaks the format or the style outright) or ``warning``.
        description: one sentence for ``limamono lint --list-rules`` and the docs.
        fixable: True when ``normalize`` fixes it safely (only characters change, never words).
    """

    id: str
    name: str
    severity: Severity
    description: str
    fixable: bool = False


@dataclass(frozen=True)
class Issue:
    """A finding at ``text[start:end]``.

    Attributes:
        rule: the rule id (``LM004``).
        severity: the rule's severity, copied so consumers need not look it up.
        message: what is wrong and how to fix it.
        start: character offset where the finding starts.
        end: offset just past it.
        message_index: index into ``Conversation.messages`` when linting a conversation.
        replacement: for fixable rules, the text that replaces ``text[start:end]``.
    """

    rule: str
    severity: Severity
    message: str
    start: int
    end: int
    message_index: int | None = None
    replacement: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``limamono lint --json`` prints per issue)."""
        return {"rule": self.rule, "name": RULES[self.rule].name, "severity": self.severity,
                "message": self.message, "start": self.start, "end": self.end,
                "message_index": self.message_index, "replacement": self.replacement}


@dataclass(frozen=True)
class StyleConfig:
    """Tunable thresholds of the heuristic rules.

    Attributes:
        max_sound_words: an asterisk span with more words than this is an action (LM030),
            unless it repeats one word (``*knock knock knock knock*``).
    """

    max_sound_words: int = DEFAULT_MAX_SOUND_WORDS

    def __post_init__(self) -> None:
        if self.max_sound_words < 1:
            raise ValueError(f"StyleConfig.max_sound_words must be at least 1, got "
                             f"{self.max_sound_words}")


@dataclass
class Context:
    """What a check sees: the text, its spans, who speaks and who the other speaker is."""

    text: str
    char_name: str | None = None
    user_name: str | None = None
    role: Literal["char", "user"] = "char"
    config: StyleConfig = field(default_factory=StyleConfig)
    spans: list[Span] = field(init=False)

    def __post_init__(self) -> None:
        self.spans = split_spans(self.text)

    @property
    def own_name(self) -> str | None:
        """The name of the speaker of this text."""
        return self.char_name if self.role == "char" else self.user_name

    @property
    def other_name(self) -> str | None:
        """The name of the other speaker (whose ``Name:`` line would be impersonation)."""
        return self.user_name if self.role == "char" else self.char_name

    def narration(self) -> Iterator[Span]:
        """The narration spans (text outside every delimiter)."""
        return (s for s in self.spans if s.kind == "narration")


Check = Callable[[Context], Iterator[Issue]]

#: Every rule by id, in id order.
RULES: dict[str, Rule] = {}
CHECKS: dict[str, Check] = {}


def _rule(rule_id: str, name: str, severity: Severity, description: str,
          fixable: bool = False) -> Callable[[Check], Check]:
    """Register a check function under a rule id."""
    def register(check: Check) -> Check:
        RULES[rule_id] = Rule(rule_id, name, severity, description, fixable)
        CHECKS[rule_id] = check
        return check
    return register


def issue(rule_id: str, start: int, end: int, message: str,
          replacement: str | None = None) -> Issue:
    """An ``Issue`` of a registered rule, its severity taken from the registry."""
    return Issue(rule_id, RULES[rule_id].severity, message, start, end, None, replacement)


# --------------------------------------------------------------------------- typography

_CURLY_DOUBLE = re.compile("[\u201c\u201d\u201e\u201f]")
_CURLY_SINGLE = re.compile("[\u2018\u2019\u201a\u201b]")
# Spaces before a run of sentence punctuation that ends a word: "Wait !" or "then ... no".
# A run glued to the next word (" ...Then", " .NET", " :D") is left alone.
# Curly quotes and the ellipsis character count as what LM001-LM003 turn them into, so
# that one pass finds every fix.
_SPACE_BEFORE_PUNCT = re.compile(
    "(?<=\\S)[ \t]+(?=[!?,.;:\u2026]+(?:[\\s\"'_*\u201c-\u201f\u2018-\u201b]|$))")
_REPEATED_SPACES = re.compile(r"(?<=\S) {2,}(?=\S)")


@_rule("LM001", "curly-double-quote", "warning",
       "Typographic double quotes; dialogue uses ASCII '\"'.", fixable=True)
def _curly_double(ctx: Context) -> Iterator[Issue]:
    for m in _CURLY_DOUBLE.finditer(ctx.text):
        yield issue("LM001", m.start(), m.end(),
                    f"curly quote {m.group()!r}: the house style uses ASCII '\"'", '"')


@_rule("LM002", "curly-single-quote", "warning",
       "Typographic single quotes and apostrophes; use ASCII \"'\".", fixable=True)
def _curly_single(ctx: Context) -> Iterator[Issue]:
    text = ctx.text
    for m in _CURLY_SINGLE.finditer(text):
        i = m.start()
        inside_word = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        what = "curly apostrophe" if inside_word else "curly single quote"
        yield issue("LM002", i, m.end(), f"{what} {m.group()!r}: use ASCII \"'\"", "'")


@_rule("LM003", "ellipsis-character", "warning",
       "The one-character ellipsis; write three full stops.", fixable=True)
def _ellipsis(ctx: Context) -> Iterator[Issue]:
    for m in re.finditer("\u2026", ctx.text):
        yield issue("LM003", m.start(), m.end(), "ellipsis character: write '...'", "...")


@_rule("LM004", "space-before-punctuation", "warning",
       "Space before ! ? , . ; : at the end of a word.", fixable=True)
def _space_before_punct(ctx: Context) -> Iterator[Issue]:
    for m in _SPACE_BEFORE_PUNCT.finditer(ctx.text):
        mark = ctx.text[m.end()]
        yield issue("LM004", m.start(), m.end(), f"space before {mark!r}: remove it", "")


@_rule("LM005", "repeated-spaces", "warning",
       "Two or more spaces between words.", fixable=True)
def _repeated_spaces(ctx: Context) -> Iterator[Issue]:
    for m in _REPEATED_SPACES.finditer(ctx.text):
        if _SPACE_BEFORE_PUNCT.match(ctx.text, m.start()):
            continue  # LM004 removes these spaces altogether
        yield issue("LM005", m.start(), m.end(),
                    f"{len(m.group())} spaces between words: use one", " ")


# --------------------------------------------------------------------------- paired markers

_MARKER_RULES = {"dialogue": "LM010", "thought": "LM011", "sound": "LM012", "title": "LM013"}
_MARKER_HINTS = {
    "dialogue": " (a quotation continued in the next paragraph may stay open; then ignore this)",
    "thought": " (an underscore inside a word, like snake_case, is not a marker)",
    "sound": "",
    "title": " (a single apostrophe is never a marker)",
}


def _unclosed(ctx: Context, kind: str) -> Iterator[Issue]:
    """Issues for spans of ``kind`` left open at the end of their paragraph."""
    rule_id, delimiter = _MARKER_RULES[kind], DELIMITERS[kind]
    for span in ctx.spans:
        if span.kind == kind and not span.closed:
            yield issue(rule_id, span.start, span.start + len(delimiter),
                        f"{delimiter!r} opens a {kind} that is not closed in its paragraph"
                        f"{_MARKER_HINTS[kind]}")


def _stray(ctx: Context, kind: str) -> Iterator[Issue]:
    """Issues for closing ``_``/``*`` markers with nothing open."""
    delimiter = DELIMITERS[kind]
    for i in stray_closers(ctx.text, ctx.spans):
        if ctx.text[i] == delimiter:
            yield issue(_MARKER_RULES[kind], i, i + 1,
                        f"{delimiter!r} closes a {kind} that was never opened")


@_rule("LM010", "unbalanced-double-quote", "warning",
       "A paragraph with an unclosed '\"' (dialogue).")
def _unbalanced_quote(ctx: Context) -> Iterator[Issue]:
    yield from _unclosed(ctx, "dialogue")


@_rule("LM011", "unbalanced-underscore", "error",
       "A paragraph with an unclosed or stray '_' (thoughts); snake_case is ignored.")
def _unbalanced_underscore(ctx: Context) -> Iterator[Issue]:
    yield from sorted([*_unclosed(ctx, "thought"), *_stray(ctx, "thought")],
                      key=lambda x: x.start)


@_rule("LM012", "unbalanced-asterisk", "error",
       "A paragraph with an unclosed or stray '*' (sounds).")
def _unbalanced_asterisk(ctx: Context) -> Iterator[Issue]:
    yield from sorted([*_unclosed(ctx, "sound"), *_stray(ctx, "sound")],
                      key=lambda x: x.start)


@_rule("LM013", "unbalanced-title-quotes", "error",
       "A paragraph with an unclosed \"''\" (titles, non-dialogue quotes).")
def _unbalanced_title(ctx: Context) -> Iterator[Issue]:
    yield from _unclosed(ctx, "title")


# --------------------------------------------------------------------------- format breaks

_HEADER_LINE = re.compile(r"(?m)^### .*$")


def _name_lines(text: str, name: str) -> Iterator[re.Match[str]]:
    return re.finditer(rf"(?m)^{re.escape(name)}:", text)


@_rule("LM020", "header-in-turn", "error",
       "A line starting with '### ' inside a turn breaks the prompt format.")
def _header_in_turn(ctx: Context) -> Iterator[Issue]:
    for m in _HEADER_LINE.finditer(ctx.text):
        yield issue("LM020", m.start(), m.end(),
                    "a line starting with '### ' would read as a prompt header: reword it")


@_rule("LM021", "impersonation", "error",
       "A line starting with the other speaker's 'Name:' (writing the other side's turn).")
def _impersonation(ctx: Context) -> Iterator[Issue]:
    other = ctx.other_name
    if not other:
        return
    for m in _name_lines(ctx.text, other):
        yield issue("LM021", m.start(), m.end(),
                    f"a line starts with {m.group()!r}: this turn speaks for {other}; "
                    f"cut the text from here")


@_rule("LM022", "own-name-prefix", "warning",
       "A line starting with the speaker's own 'Name:' (the prefix belongs to the format).")
def _own_name(ctx: Context) -> Iterator[Issue]:
    own = ctx.own_name
    if not own:
        return
    for m in _name_lines(ctx.text, own):
        yield issue("LM022", m.start(), m.end(),
                    f"a line starts with {m.group()!r}: the format adds the name; remove it")


# --------------------------------------------------------------------------- asterisks

@_rule("LM030", "asterisk-action", "warning",
       "An action written the chat-RP way in asterisks; narration has no delimiter "
       "(limamono.style.from_asterisk_style converts it).")
def _asterisk_action(ctx: Context) -> Iterator[Issue]:
    for span in ctx.spans:
        if span.kind == "sound" and span.closed and is_action(
                span.inner, ctx.config.max_sound_words):
            yield issue("LM030", span.start, span.end,
                        "action in asterisks: asterisks are for sounds (*thud*); "
                        "write the action as plain narration")


# --------------------------------------------------------------------------- narration

_FIRST_PERSON = re.compile(
    r"\b(?:I|[Mm]e|[Mm]y|[Mm]ine|[Mm]yself|[Ww]e|[Uu]s|[Oo]urs?|[Oo]urselves)\b")
# Only capitalised (sentence-initial) forms: chat-RP second-person narration starts its
# sentences with "You ..."/"Your ...", while the generic "you" of novel prose ("people told
# you more when...") sits mid-sentence and is fine.
_SECOND_PERSON = re.compile(r"\bYou(?:rs?|rself|rselves)?\b")
_SINGULAR = r"[Hh]e|[Ss]he|[Ii]t"
_ADVERB = r"(?:\w+ly|also|still|just|then|now|often|never|always|sometimes|finally)\s+"
# Words ending in -s that follow a pronoun without being a present-tense verb.
_NOT_VERBS = frozenset({
    "was", "its", "this", "his", "hers", "yours", "ours", "theirs", "as", "yes", "always",
    "sometimes", "perhaps", "towards", "afterwards", "besides", "nowadays", "sideways",
    "backwards", "forwards", "upwards", "downwards", "anyways", "whereas", "thus", "plus",
})
_PLURAL_PRESENT = frozenset(("are", "aren't", "have", "haven't", "do", "don't"))


def _is_present_singular(word: str) -> bool:
    """A third-person singular present verb (``walks``, ``is``, ``doesn't``), heuristically."""
    w = word.lower()
    if w in ("is", "has", "does", "isn't", "hasn't", "doesn't"):
        return True
    return w.endswith("s") and not w.endswith(("ss", "us", "is")) and w not in _NOT_VERBS


def _subjects(ctx: Context) -> str:
    """Regex alternation of singular subjects: the pronouns and the speakers' names."""
    names = [re.escape(n) for n in (ctx.char_name, ctx.user_name) if n]
    return "|".join([_SINGULAR, *names])


@_rule("LM040", "first-person-narration", "warning",
       "First-person pronoun outside dialogue, thoughts, sounds and titles (heuristic).")
def _first_person(ctx: Context) -> Iterator[Issue]:
    for span in ctx.narration():
        for m in _FIRST_PERSON.finditer(span.text):
            yield issue("LM040", span.start + m.start(), span.start + m.end(),
                        f"{m.group()!r} in narration: narrate in the third person")


@_rule("LM041", "second-person-narration", "warning",
       "Sentence-initial 'You'/'Your' outside dialogue, thoughts, sounds and titles "
       "(heuristic).")
def _second_person(ctx: Context) -> Iterator[Issue]:
    for span in ctx.narration():
        for m in _SECOND_PERSON.finditer(span.text):
            yield issue("LM041", span.start + m.start(), span.start + m.end(),
                        f"{m.group()!r} in narration: narrate in the third person, "
                        f"using names")


@_rule("LM042", "present-tense-narration", "warning",
       "A present-tense verb after a third-person subject in narration (heuristic).")
def _present_tense(ctx: Context) -> Iterator[Issue]:
    singular = re.compile(rf"\b(?:{_subjects(ctx)})\s+(?:{_ADVERB})?([\w']+)")
    # "they are" mid-sentence is mostly a general truth ("the way people do when they are
    # tired"); only a sentence-initial "They are" is counted.
    plural = re.compile(rf"\bThey\s+(?:{_ADVERB})?([\w']+)")
    for span in ctx.narration():
        hits = [m for m in singular.finditer(span.text) if _is_present_singular(m.group(1))]
        hits += [m for m in plural.finditer(span.text) if m.group(1).lower() in _PLURAL_PRESENT]
        for m in sorted(hits, key=lambda x: x.start()):
            yield issue("LM042", span.start + m.start(), span.start + m.end(),
                        f"{m.group()!r} reads as present tense: narrate in the past tense")
