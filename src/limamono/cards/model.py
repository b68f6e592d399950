"""The Card dataclass and the JSON side of cards: V1/V2/V3 in, V2/V3 out, nothing lost.

Field names are the exact keys of the character-card specs (CCv2 ``spec_v2.md``, CCv3
``SPEC_V3.md``), so a card's ``data`` dict is what SillyTavern and every other frontend
read. What this module does not understand (unknown top-level keys, unknown ``data`` keys,
``extensions``) it carries along untouched.
"""

from __future__ import annotations

import codecs
import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

from limamono.cards.limits import DEFAULT_LIMITS, CardError, CardLimits, NotACard
from limamono.util import untrusted
from limamono.util.untrusted import quote

SPEC_V1 = "chara_card_v1"
SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"
SPEC_VERSIONS: dict[str, str] = {SPEC_V2: "2.0", SPEC_V3: "3.0"}

#: The V1 fields: flat at the top level of V1 cards, mirrored there by V2/V3 writers.
V1_FIELDS: tuple[str, ...] = ("name", "description", "personality", "scenario", "first_mes",
                              "mes_example")
#: Text fields of V2 ``data`` (every one defaults to ``""``).
TEXT_FIELDS: tuple[str, ...] = (*V1_FIELDS, "creator_notes", "system_prompt",
                                "post_history_instructions", "creator", "character_version")
#: List-of-text fields of ``data`` (``group_only_greetings`` is V3's, SillyTavern writes it
#: on every card, so every card read here has it).
TEXT_LIST_FIELDS: tuple[str, ...] = ("alternate_greetings", "tags", "group_only_greetings")
#: Optional V3 additions, type-checked only when present.
OPTIONAL_TEXT = ("nickname",)
OPTIONAL_TEXT_LISTS = ("source",)
OPTIONAL_NUMBERS = ("creation_date", "modification_date")
OPTIONAL_MAPPINGS = ("character_book", "creator_notes_multilingual")

#: Gradio/Pygmalion JSON keys and the V1 fields they mean (as SillyTavern imports them).
_PYGMALION = {"char_name": "name", "char_persona": "description", "world_scenario": "scenario",
              "char_greeting": "first_mes", "example_dialogue": "mes_example"}


@dataclass
class Card:
    """A character card, as read from (or to be written to) a PNG or JSON file.

    Attributes:
        data: the V2/V3 ``data`` object, exact spec keys; every V2 key is present.
        spec: the spec it came from: ``chara_card_v1``, ``chara_card_v2`` or ``chara_card_v3``.
        raw: the top-level JSON object as read; its unknown keys are written back unchanged.
        image: the PNG file the card came from (pixels are never decoded), or None.
        source: the file name, for messages.
        warnings: things read without failing but worth saying (e.g. a newer spec version).
    """

    data: dict[str, Any]
    spec: str = SPEC_V2
    raw: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None
    source: str = "<card>"
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The character's name."""
        return str(self.data["name"])

    def greeting_count(self) -> int:
        """How many greetings the card offers (``first_mes`` plus the alternates)."""
        return int(bool(self.data["first_mes"])) + len(self.data["alternate_greetings"])


def new_card(name: str, source: str = "<card>", **fields: Any) -> Card:
    """A V2 card from field values; unset fields get their spec defaults.

    Raises:
        CardError: a field has the wrong type or the name is empty.
    """
    return Card(check_data({"name": name, **fields}, source), SPEC_V2, {}, None, source)


# --------------------------------------------------------------------------- JSON in

def parse_json(payload: bytes, source: str, limits: CardLimits = DEFAULT_LIMITS) -> Any:
    """Decode card JSON bytes strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded depth.

    A UTF-8 byte-order mark is allowed (Windows editors add one); nothing else is repaired.

    Raises:
        CardError: saying what is wrong and where (line and column for syntax errors).
    """
    if len(payload) > limits.max_text_bytes:
        raise CardError(source, f"card JSON is {len(payload)} bytes, over the limit of "
                                f"{limits.max_text_bytes}")
    payload = payload.removeprefix(codecs.BOM_UTF8)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(source, f"card JSON is not UTF-8 (invalid byte {payload[exc.start]:#04x}"
                                f" at offset {exc.start})") from None
    try:
        return untrusted.load_json(text, limits.max_json_depth)
    except untrusted.UntrustedError as exc:
        where = "" if exc.line is None else f" (line {exc.line})"
        reason = exc.reason.replace("not valid JSON", "card JSON is not valid", 1)
        if reason == exc.reason:
            joint = ":" if reason.startswith(("field ", "the ")) else " is"
            reason = f"card JSON{joint} {reason}"
        raise CardError(source, reason + where) from None


def card_from_json(obj: Any, source: str) -> Card:
    """A Card from a parsed top-level JSON value (V1 flat, V2, V3, or Gradio/Pygmalion).

    Raises:
        CardError: not an object, an unknown spec, a missing name or a wrongly typed field.
    """
    if not isinstance(obj, dict):
        raise CardError(source, f"card JSON must be an object, got {_kind(obj)}")
    spec = obj.get("spec")
    if spec is None:
        return _card_v1(obj, source)
    if not isinstance(spec, str):
        raise CardError(source, f"field 'spec' must be text, got {_kind(spec)}")
    warnings: list[str] = []
    if spec not in (SPEC_V2, SPEC_V3):
        spec = _future_spec(spec, source)
        warnings.append(f"spec {obj['spec']!r} is newer than this reader; read as V3")
    elif spec == SPEC_V3:
        warnings.extend(_check_v3_version(obj.get("spec_version"), source))
    data = obj.get("data")
    if not isinstance(data, dict):
        raise CardError(source, f"field 'data' must be an object for spec {quote(spec)}, "
                                f"got {_kind(data)}")
    return Card(check_data(data, source), spec, copy.deepcopy(obj), None, source, warnings)


def _card_v1(obj: dict[str, Any], source: str) -> Card:
    if "name" not in obj and "char_name" in obj:
        data = {v1: obj[key] for key, v1 in _PYGMALION.items() if key in obj}
        return Card(check_data(data, source), SPEC_V1, copy.deepcopy(obj), None, source,
                    ["read as a Gradio/Pygmalion card (char_name, char_persona, ...)"])
    if "name" not in obj:
        raise NotACard(source, "not a character card: no 'spec' and no 'name' field")
    data = {key: obj[key] for key in V1_FIELDS if key in obj}
    return Card(check_data(data, source), SPEC_V1, copy.deepcopy(obj), None, source)


def _future_spec(spec: str, source: str) -> str:
    number = spec.removeprefix("chara_card_v")
    if spec.startswith("chara_card_v") and number.isdigit() and len(number) < 6 \
            and int(number) > 3:
        return SPEC_V3
    raise CardError(source, f"unknown spec {quote(spec)} (expected {SPEC_V2!r} or "
                            f"{SPEC_V3!r})")


def _check_v3_version(version: Any, source: str) -> list[str]:
    # The V3 spec says spec_version is parsed as a float; a newer minor/major still reads.
    try:
        number = float(version)
    except (TypeError, ValueError, OverflowError):
        raise CardError(source, f"field 'spec_version' must be a version like '3.0', "
                                f"got {quote(version)}") from None
    if not math.isfinite(number):
        raise CardError(source, f"field 'spec_version' must be a version like '3.0', "
                                f"got {quote(version)}")
    return [f"spec_version {quote(version)} is newer than 3.0"] if number >= 4 else []


def check_data(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A checked copy of a ``data`` object with every V2 default filled in.

    Unknown keys are kept as they are. Nothing of the wrong type is coerced.

    Raises:
        CardError: naming the field (``data.tags[2]``), what it is and what it should be.
    """
    out = copy.deepcopy(data)
    for key in TEXT_FIELDS:
        out.setdefault(key, "")
        _expect_text(out[key], f"data.{key}", source)
    if not out["name"].strip():
        raise CardError(source, "the card has no name (field 'data.name' is empty); "
                                "give the character a name")
    if "\n" in out["name"] or "\r" in out["name"]:
        # The name is a line of its own in the sheet and the prefix of every turn.
        raise CardError(source, "field 'data.name' holds a line break; a name must be one "
                                "line")
    for key in TEXT_LIST_FIELDS:
        out.setdefault(key, [])
        _expect_text_list(out[key], f"data.{key}", source)
    out.setdefault("extensions", {})
    if not isinstance(out["extensions"], dict):
        raise CardError(source, f"field 'data.extensions' must be an object, "
                                f"got {_kind(out['extensions'])}")
    _check_optional(out, source)
    return out


def _check_optional(data: dict[str, Any], source: str) -> None:
    for key in OPTIONAL_TEXT:
        if data.get(key) is not None:
            _expect_text(data[key], f"data.{key}", source)
    for key in OPTIONAL_TEXT_LISTS:
        if data.get(key) is not None:
            _expect_text_list(data[key], f"data.{key}", source)
    for key in OPTIONAL_NUMBERS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise CardError(source, f"field 'data.{key}' must be a number (unix seconds), "
                                    f"got {_kind(value)}")
    for key in OPTIONAL_MAPPINGS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise CardError(source, f"field 'data.{key}' must be an object, "
                                    f"got {_kind(data[key])}")
    assets = data.get("assets")
    if assets is not None and not (isinstance(assets, list)
                                   and all(isinstance(a, dict) for a in assets)):
        raise CardError(source, "field 'data.assets' must be a list of objects")


def _expect_text(value: Any, where: str, source: str) -> None:
    if not isinstance(value, str):
        raise CardError(source, f"field {where!r} must be text, got {_kind(value)}")


def _expect_text_list(value: Any, where: str, source: str) -> None:
    if not isinstance(value, list):
        raise CardError(source, f"field {where!r} must be a list of text, got {_kind(value)}")
    for i, item in enumerate(value):
        _expect_text(item, f"{where}[{i}]", source)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return f"{names.get(type(value), type(value).__name__)} ({_short(value)})"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- JSON out

def to_json_obj(card: Card, spec: str | None = None) -> dict[str, Any]:
    """The top-level JSON object of a card in ``spec`` (V2 or V3; default: V3 if it was V3).

    Unknown top-level keys of ``card.raw`` are kept; the V1 fields are mirrored at the top
    level (what SillyTavern writes, and what V1-only readers need); ``data`` wins.
    """
    spec = spec or (SPEC_V3 if card.spec == SPEC_V3 else SPEC_V2)
    if spec not in SPEC_VERSIONS:
        raise ValueError(f"spec must be {SPEC_V2!r} or {SPEC_V3!r}, got {spec!r}")
    top = copy.deepcopy(card.raw)
    top["spec"] = spec
    top["spec_version"] = SPEC_VERSIONS[spec]
    top["data"] = copy.deepcopy(card.data)
    for key in V1_FIELDS:
        top[key] = card.data[key]
    return top


def to_json_text(card: Card, spec: str | None = None, indent: int | None = 2) -> str:
    """The card as JSON text (pretty by default, UTF-8 characters kept as they are)."""
    separators = None if indent else (",", ":")
    return json.dumps(to_json_obj(card, spec), ensure_ascii=False, indent=indent,
                      separators=separators)
