"""Drafting with a model in text-completion mode: character sheets from (nearly) empty context.

The card-generation prompt (SPEC §2) is the trigger phrase and an open ``### Instruction:``
block; the model writes a wiki-style sheet there because that is what follows in every
training sample. A name and hint lines, when given, are written first and the model carries
on after them. The result is a draft: it is parsed with ``cards.sheet_to_card`` and what the
layout expects but the model did not write (e.g. no ``Scenario:`` line) is reported, never
filled in (SPEC §8: generated sheets hallucinate and must be checked by a person).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limamono import format as fmt
from limamono.generation import Engine

if TYPE_CHECKING:
    from limamono.cards import SheetParts

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
