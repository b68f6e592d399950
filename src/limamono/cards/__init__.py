"""Character cards: SillyTavern V1/V2/V3 JSON and PNG, wiki-style sheets, and conversations.

Read anything with ``read_card`` (or ``read_card_bytes``), write with ``write_card`` (PNG or
JSON) or ``export_card`` (also YAML conversation headers and sheet text). Every failure is a
``CardError`` naming the file and the problem.

Layout: ``limits`` (the error type and the ceilings on hostile input), ``png`` (strict chunk
walking), ``model`` (the Card and its JSON), ``sheet`` (macros, sheets, conversations),
``io`` (files).
"""

from limamono.cards.io import (
    atomic_write,
    card_png_bytes,
    export_card,
    read_card,
    read_card_bytes,
    write_card,
)
from limamono.cards.limits import DEFAULT_LIMITS, CardError, CardLimits
from limamono.cards.model import (
    SPEC_V1,
    SPEC_V2,
    SPEC_V3,
    Card,
    card_from_json,
    new_card,
    to_json_obj,
    to_json_text,
)
from limamono.cards.sheet import (
    SheetParts,
    card_to_conversation,
    card_to_sheet,
    conversation_to_card,
    greetings,
    sheet_to_card,
    substitute,
    to_house_style,
)

__all__ = [
    "DEFAULT_LIMITS",
    "SPEC_V1",
    "SPEC_V2",
    "SPEC_V3",
    "Card",
    "CardError",
    "CardLimits",
    "SheetParts",
    "atomic_write",
    "card_from_json",
    "card_png_bytes",
    "card_to_conversation",
    "card_to_sheet",
    "conversation_to_card",
    "export_card",
    "greetings",
    "new_card",
    "read_card",
    "read_card_bytes",
    "sheet_to_card",
    "substitute",
    "to_house_style",
    "to_json_obj",
    "to_json_text",
    "write_card",
]
