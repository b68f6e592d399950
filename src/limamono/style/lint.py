"""Run the house-style rules on text, conversations and cards, and apply the safe fixes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from limamono.core.conversation import Conversation, Message
from limamono.style.rules import CHECKS, RULES, Context, Issue, StyleConfig

#: Rules whose fix only swaps quote/ellipsis characters or removes spaces.
TYPOGRAPHY_RULES: tuple[str, ...] = ("LM001", "LM002", "LM003", "LM004", "LM005")
#: Rules that check paired markers.
MARKER_RULES: tuple[str, ...] = ("LM010", "LM011", "LM012", "LM013")
#: Rules that make sense on sheet text (descriptions, scenarios), which is not a turn.
SHEET_RULES: tuple[str, ...] = TYPOGRAPHY_RULES + MARKER_RULES
#: The prose rules of SPEC §3 a reply must pass to count as in house style: typography,
#: balanced markers and chat-RP asterisk actions. The narration-person/tense rules are
#: heuristics (they stay in the lint output) and the format rules (LM020-LM022) are judged
#: on their own. The evaluation's style compliance and the preference builder's
#: ``--lint-rejects`` both read this set.
COMPLIANCE_RULES: frozenset[str] = frozenset((*TYPOGRAPHY_RULES, *MARKER_RULES, "LM030"))

#: Card fields linted as turns of the character (all rules) and as sheet text.
CARD_TURN_FIELDS: tuple[str, ...] = ("first_mes", "alternate_greetings")
CARD_SHEET_FIELDS: tuple[str, ...] = ("description", "personality", "scenario", "mes_example")


def select_rules(rules: Iterable[str] | None) -> list[str]:
    """Rule ids for a selection of ids or names (``None``: every rule), in id order.

    Raises:
        ValueError: naming the unknown id or name and listing the known ones.
    """
    if rules is None:
        return list(RULES)
    by_name = {r.name: r.id for r in RULES.values()}
    chosen = set()
    for item in rules:
        key = item.strip()
        rule_id = key.upper() if key.upper() in RULES else by_name.get(key)
        if rule_id is None:
            known = ", ".join(f"{r.id} ({r.name})" for r in RULES.values())
            raise ValueError(f"unknown style rule {item!r}; known rules: {known}")
        chosen.add(rule_id)
    return [r for r in RULES if r in chosen]


def lint(text: str, *, char_name: str | None = None, user_name: str | None = None,
         role: Literal["char", "user"] = "char", rules: Iterable[str] | None = None,
         config: StyleConfig | None = None) -> list[Issue]:
    """Check one turn (or any prose) against the house style.

    Args:
        text: the text, without the ``Name: `` prefix of the format.
        char_name: the character's name (for impersonation and present-tense subjects).
        user_name: the user's name.
        role: who wrote ``text``; a line starting with the *other* speaker's ``Name:`` is
            impersonation (LM021), with the speaker's own name LM022.
        rules: ids or names of the rules to run (default: all).
        config: thresholds of the heuristic rules.

    Returns:
        The issues ordered by offset, then rule id.

    Raises:
        ValueError: for an unknown rule or a ``role`` other than ``char``/``user``.
    """
    if role not in ("char", "user"):
        raise ValueError(f"role must be 'char' or 'user', got {role!r}")
    ctx = Context(text, char_name, user_name, role, config or StyleConfig())
    found = [i for rule_id in select_rules(rules) for i in CHECKS[rule_id](ctx)]
    return sorted(found, key=lambda i: (i.start, i.rule))


def lint_conversation(conversation: Conversation, *, rules: Iterable[str] | None = None,
                      config: StyleConfig | None = None) -> list[Issue]:
    """Lint every message of a conversation, names taken from it.

    Returns:
        The issues of all messages, each with its ``message_index``, in message order.
    """
    out: list[Issue] = []
    for index, message in enumerate(conversation.messages):
        found = lint(message.text, char_name=conversation.character.name,
                     user_name=conversation.user.name, role=message.role, rules=rules,
                     config=config)
        out.extend(dataclasses.replace(i, message_index=index) for i in found)
    return out


def apply_fixes(text: str, issues: Iterable[Issue]) -> str:
    """Apply the replacements of ``issues`` to ``text``; overlapping ones after the first skip."""
    pieces: list[str] = []
    pos = 0
    for item in sorted((i for i in issues if i.replacement is not None),
                       key=lambda i: (i.start, i.end)):
        if item.start < pos:
            continue
        pieces.append(text[pos:item.start])
        pieces.append(item.replacement or "")
        pos = item.end
    pieces.append(text[pos:])
    return "".join(pieces)


def normalize(text: str, *, rules: Iterable[str] | None = None) -> tuple[str, list[Issue]]:
    """Apply every safe fix (quotes, ellipsis, spaces) until none is left.

    Only the characters named by the typography rules change: letters, digits and words
    never do, and ``normalize(normalize(t)[0])[0] == normalize(t)[0]``.

    Args:
        text: any prose.
        rules: restrict to these fixable rules (ids or names; default: all fixable ones).

    Returns:
        The fixed text and the issues found in the *original* text (offsets into it).
    """
    chosen = [r for r in select_rules(rules) if RULES[r].fixable]
    first: list[Issue] | None = None
    # Fixes can uncover one another ("a …" becomes "a ..." and then "a..."), so repeat
    # until clean; each pass strictly removes non-ASCII characters or spaces, so it ends.
    while True:
        found = lint(text, rules=chosen)
        if first is None:
            first = found
        if not found:
            return text, first
        text = apply_fixes(text, found)


def normalize_conversation(conversation: Conversation, *, rules: Iterable[str] | None = None
                           ) -> tuple[Conversation, list[Issue]]:
    """A copy of the conversation with every message text normalized.

    Returns:
        The new conversation and the issues fixed, each with its ``message_index``.
    """
    messages: list[Message] = []
    fixed: list[Issue] = []
    for index, message in enumerate(conversation.messages):
        text, found = normalize(message.text, rules=rules)
        messages.append(message.with_text(text))
        fixed.extend(dataclasses.replace(i, message_index=index) for i in found)
    return dataclasses.replace(conversation, messages=messages), fixed


def card_texts(data: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """The lintable texts of a V2 card's ``data``: ``(field, text, is_turn)`` triples.

    Greetings are turns of the character; ``alternate_greetings[i]`` is named with its index.
    Fields that are missing or not strings are skipped.
    """
    out: list[tuple[str, str, bool]] = []
    for key in (*CARD_TURN_FIELDS, *CARD_SHEET_FIELDS):
        value = data.get(key)
        is_turn = key in CARD_TURN_FIELDS
        if isinstance(value, str) and value:
            out.append((key, value, is_turn))
        elif isinstance(value, list):
            out.extend((f"{key}[{i}]", v, is_turn) for i, v in enumerate(value)
                       if isinstance(v, str) and v)
    return out


def lint_card_data(data: Mapping[str, Any], *, rules: Iterable[str] | None = None,
                   config: StyleConfig | None = None) -> list[tuple[str, Issue]]:
    """Lint the text fields of a card's V2 ``data`` dict.

    Greetings get every rule, with the character's ``name`` and ``{{user}}`` as the names
    (so a greeting line starting with ``{{user}}:`` is impersonation); the sheet fields get
    the typography and marker rules only (a wiki sheet is neither narration nor a turn).

    Returns:
        ``(field, issue)`` pairs in field order.
    """
    selected = set(select_rules(rules))
    name = data.get("name") if isinstance(data.get("name"), str) else None
    out: list[tuple[str, Issue]] = []
    for key, text, is_turn in card_texts(data):
        allowed = selected if is_turn else selected & set(SHEET_RULES)
        found = lint(text, char_name=name, user_name="{{user}}", role="char",
                     rules=sorted(allowed), config=config)
        out.extend((key, i) for i in found)
    return out
