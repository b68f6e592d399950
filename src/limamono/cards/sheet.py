"""Cards as Limamono sheets and conversations: macros, the wiki-style sheet, the greeting.

Mapping (SPEC §4): the card's name is the sheet's first line; ``personality`` (when set)
becomes a ``Personality: ...`` line right after the name, followed by ``description``;
``scenario`` is the closing ``Scenario: ...`` line; ``first_mes`` is the first Response and
``alternate_greetings`` are its swipes. The sheet text itself is made by
``format.render_sheet``, so a sheet file and the prompt's Instruction block are the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from limamono.cards.limits import CardError
from limamono.cards.model import Card, new_card
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.core.format import SCENARIO_PREFIX, render_sheet

PERSONALITY_PREFIX = "Personality: "
DEFAULT_USER = "User"

# One pass over all four macros, so a name that itself contains "{{user}}" is not expanded
# again. The legacy angle-bracket forms are the CCv1 spec's.
_MACRO = re.compile(r"\{\{(char|user)\}\}|<(bot|user)>", re.IGNORECASE)
# `Key: value`: a key of one to four words that starts with a letter, then a non-empty value.
_ATTRIBUTE = re.compile(r"^([^\W\d_][\w'()/&.-]*(?: [\w'()/&.-]+){0,3}):[ \t]+(\S.*)$")
_TRIVIA = re.compile(r"^[-*•] +(\S.*)$")
_HEADER = re.compile(r"^### ")

#: Card text fields converted by ``to_house_style``.
_PROSE_FIELDS = ("description", "personality", "scenario", "first_mes", "mes_example")
_PROSE_LISTS = ("alternate_greetings",)


def substitute(text: str, char: str, user: str) -> str:
    """Expand ``{{char}}``/``<BOT>`` to ``char`` and ``{{user}}``/``<USER>`` to ``user``.

    Matching is case-insensitive (CCv1 spec), e.g. ``{{Char}}`` and ``<bot>`` count too.

    >>> substitute("<BOT> waves at {{USER}}.", "Edda", "Corin")
    'Edda waves at Corin.'
    """
    def expand(match: re.Match[str]) -> str:
        key = (match.group(1) or match.group(2)).lower()
        return char if key in ("char", "bot") else user

    return _MACRO.sub(expand, text)


def _prompt_text(card: Card, text: str, user: str) -> str:
    # SillyTavern drops every "\r" from card fields before they reach a prompt; so do we.
    macro_name = card.data.get("nickname") or card.name
    return substitute(text.replace("\r", ""), str(macro_name).strip(), user).strip()


# --------------------------------------------------------------------------- card -> text

def sheet_body(card: Card, user_name: str = DEFAULT_USER) -> str:
    """The sheet between the name line and the Scenario line: personality line + description."""
    lines = []
    personality = _prompt_text(card, card.data["personality"], user_name)
    if personality:
        lines.append(PERSONALITY_PREFIX + personality)
    description = _prompt_text(card, card.data["description"], user_name)
    if description:
        lines.append(description)
    return "\n".join(lines)


def card_to_sheet(card: Card, user_name: str = DEFAULT_USER, house_style: bool = False) -> str:
    """The wiki-style sheet of a card (SPEC §4), exactly as the prompt's Instruction block.

    Args:
        card: the card.
        user_name: what ``{{user}}`` becomes.
        house_style: first convert asterisk-style prose to the house style.
    """
    if house_style:
        card = to_house_style(card)
    character = Character(card.name.strip(), sheet_body(card, user_name))
    return render_sheet(character, _prompt_text(card, card.data["scenario"], user_name))


def greetings(card: Card, user_name: str = DEFAULT_USER, house_style: bool = False) -> list[str]:
    """Every greeting, macros expanded: ``first_mes`` first, then ``alternate_greetings``.

    Empty greetings are left out; index 0 is the one ``card_to_conversation`` uses.
    """
    if house_style:
        card = to_house_style(card)
    texts = [card.data["first_mes"], *card.data["alternate_greetings"]]
    return [t for t in (_prompt_text(card, text, user_name) for text in texts) if t]


def card_to_conversation(card: Card, user_name: str = DEFAULT_USER,
                         house_style: bool = False) -> Conversation:
    """The conversation header a card stands for: sheet, scenario and the greeting.

    Args:
        card: the card.
        user_name: the user's name (also what ``{{user}}`` becomes).
        house_style: convert asterisk-style prose (``*She smiled.*``) to the house style
            through ``limamono.style.from_asterisk_style``.

    Returns:
        A conversation whose only message (if the card has a greeting) is ``first_mes``; the
        alternates are in ``greetings(card, user_name)``.
    """
    if house_style:
        card = to_house_style(card)
    character = Character(card.name.strip(), sheet_body(card, user_name))
    scenario = _prompt_text(card, card.data["scenario"], user_name)
    greeting = _prompt_text(card, card.data["first_mes"], user_name)
    first = [Message("char", greeting)] if greeting else []
    # The file name only: a conversation file should not carry the converter's folders.
    meta: dict[str, Any] = {"source": Path(card.source).name} if card.source != "<card>" else {}
    return Conversation(character, User(user_name), scenario, first, meta)


def to_house_style(card: Card) -> Card:
    """A copy whose prose fields went through ``limamono.style.from_asterisk_style``."""
    from limamono.style import from_asterisk_style  # the style module owns the rules

    data = dict(card.data)
    for key in _PROSE_FIELDS:
        data[key] = from_asterisk_style(data[key].replace("\r", ""))
    for key in _PROSE_LISTS:
        data[key] = [from_asterisk_style(t.replace("\r", "")) for t in data[key]]
    return replace(card, data=data)


# --------------------------------------------------------------------------- text -> card

@dataclass(frozen=True)
class SheetParts:
    """A wiki-style sheet taken apart, with what the SPEC §4 layout expects but is missing.

    Attributes:
        name: the first line.
        attributes: ``Key: value`` lines, in order (keys may repeat).
        paragraphs: description lines that are neither attributes nor trivia.
        trivia: ``- item`` lines, without the dash.
        scenario: the text after the last ``Scenario: `` line ("" if none).
        description: everything between the name line and the Scenario line.
        card: the card the sheet makes (a leading ``Personality:`` line is its personality).
        missing: layout parts absent from the sheet: ``attributes``, ``paragraphs``,
            ``trivia``, ``scenario`` (a generated draft should be checked for these).
        notes: other departures from the layout, e.g. an attribute after a paragraph.
    """

    name: str
    attributes: list[tuple[str, str]]
    paragraphs: list[str]
    trivia: list[str]
    scenario: str
    description: str
    card: Card
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sheet_to_card(text: str, source: str = "<sheet>") -> SheetParts:
    """Parse a wiki-style sheet (name, attributes, paragraphs, trivia, Scenario).

    Raises:
        CardError: the sheet is empty (no name line) or holds a ``### `` header line.
    """
    lines = text.replace("\r", "").strip().split("\n")
    name = lines[0].strip()
    if not name:
        raise CardError(source, "the sheet is empty: its first line must be the character's "
                                "name")
    for number, line in enumerate(lines, start=1):
        if _HEADER.match(line):
            raise CardError(source, f"line {number} is a '### ' header, which a sheet cannot "
                                    "hold (it would end the Instruction block)")
    body, scenario = _split_scenario(lines[1:])
    attributes, paragraphs, trivia, notes = _classify(body)
    missing = [part for part, have in (("attributes", attributes), ("paragraphs", paragraphs),
                                       ("trivia", trivia), ("scenario", scenario)) if not have]
    # Stripped as card_to_sheet strips them, so sheet -> card -> sheet is stable.
    description = "\n".join(body).strip()
    personality = ""
    if body and body[0].startswith(PERSONALITY_PREFIX):
        personality = body[0][len(PERSONALITY_PREFIX):].strip()
        description = "\n".join(body[1:]).strip()
    card = new_card(name, source, description=description, personality=personality,
                    scenario=scenario)
    return SheetParts(name, attributes, paragraphs, trivia, scenario, "\n".join(body).strip("\n"),
                      card, missing, notes)


def _split_scenario(lines: list[str]) -> tuple[list[str], str]:
    # As format's parser does: the last "Scenario: " line starts the scenario, to the end.
    at = max((i for i, line in enumerate(lines) if line.startswith(SCENARIO_PREFIX)),
             default=None)
    if at is None:
        return lines, ""
    return lines[:at], "\n".join(lines[at:])[len(SCENARIO_PREFIX):].strip()


def _classify(body: list[str]) -> tuple[list[tuple[str, str]], list[str], list[str], list[str]]:
    attributes: list[tuple[str, str]] = []
    paragraphs: list[str] = []
    trivia: list[str] = []
    notes: list[str] = []
    for number, raw in enumerate(body, start=2):
        line = raw.strip()
        if not line:
            continue
        if match := _TRIVIA.match(line):
            trivia.append(match.group(1))
        elif match := _ATTRIBUTE.match(line):
            if paragraphs or trivia:
                notes.append(f"line {number}: attribute {match.group(1)!r} comes after the "
                             "description (attributes go first)")
            attributes.append((match.group(1), match.group(2)))
        else:
            if trivia:
                notes.append(f"line {number}: a paragraph after the trivia (trivia go last, "
                             "before the Scenario)")
            paragraphs.append(line)
    return attributes, paragraphs, trivia, notes


def conversation_to_card(conversation: Conversation, source: str = "<conversation>") -> Card:
    """A V2 card from a conversation's header: sheet, scenario, and its greeting.

    The first message becomes ``first_mes`` when the character speaks it; later messages
    are not part of a card and are left out. A leading ``Personality: ...`` line of the
    description becomes the card's ``personality`` (the inverse of ``card_to_conversation``).
    """
    body = conversation.character.description.split("\n")
    personality = ""
    if body and body[0].startswith(PERSONALITY_PREFIX):
        personality, body = body[0][len(PERSONALITY_PREFIX):], body[1:]
    messages = conversation.messages
    first_mes = messages[0].text if messages and messages[0].role == "char" else ""
    return new_card(conversation.character.name, source, description="\n".join(body),
                    personality=personality, scenario=conversation.scenario,
                    first_mes=first_mes)
