"""Tests for limamono.cards: PNG/JSON reading and writing, hostile files, sheets, the CLI."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from limamono import cards
from limamono.cards import (
    SPEC_V1,
    SPEC_V2,
    SPEC_V3,
    Card,
    CardError,
    CardLimits,
    card_to_conversation,
    card_to_sheet,
    conversation_to_card,
    greetings,
    new_card,
    read_card,
    read_card_bytes,
    sheet_to_card,
    substitute,
    write_card,
)
from limamono.cards import png as cpng
from limamono.cli import app
from limamono.core import format
from limamono.core.conversation import Character, Message, User, dump_yaml, loads_yaml

ASSETS = Path(__file__).parent / "assets"
MALFORMED = ASSETS / "malformed_cards"
EXPECTED = json.loads((MALFORMED / "EXPECTED.json").read_text())


def _edda(shared: Path) -> Path:
    return shared / "testdata" / "sillytavern" / "limamono-presets" / "Edda_Varn.png"


def _seraphina(shared: Path) -> Path:
    return shared / "testdata" / "cards" / "default_Seraphina.png"


def _text_chunks(data: bytes) -> list[tuple[str, bytes]]:
    chunks = cpng.read_chunks(data, "t", cards.DEFAULT_LIMITS)
    return [(c.data.split(b"\0")[0].decode(), c.data.split(b"\0", 1)[1])
            for c in chunks if c.type == b"tEXt"]


def _idat(data: bytes) -> list[bytes]:
    return [c.data for c in cpng.read_chunks(data, "t", cards.DEFAULT_LIMITS)
            if c.type == b"IDAT"]


def _png_with(*extra: cpng.Chunk) -> bytes:
    chunks = cpng.read_chunks(cpng.placeholder_png((2, 3)), "t", cards.DEFAULT_LIMITS)
    return cpng.with_card_chunks(chunks, list(extra), "t")


def _b64(obj: Any) -> bytes:
    return base64.b64encode(json.dumps(obj).encode())


V3_CARD: dict[str, Any] = {
    "spec": "chara_card_v3", "spec_version": "3.0",
    "data": {
        "name": "Mara Quell", "description": "Maps the floating city of Aster.",
        "personality": "patient, dry", "scenario": "{{user}} asks for a map.",
        "first_mes": "Mara rolled out a chart for {{user}}.", "mes_example": "",
        "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
        "alternate_greetings": ["<BOT> waved."], "tags": ["fantasy"], "creator": "tests",
        "character_version": "2", "extensions": {"limamono": {"depth": [1, {"x": None}]}},
        "group_only_greetings": ["Hello, all."], "nickname": "Mo", "source": ["here"],
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "creation_date": 1700000000, "future_field": {"kept": True},
    },
    "top_level_unknown": [1, 2, 3],
}


# --------------------------------------------------------------------------- hostile input

def test_corpus_is_complete_and_large_enough() -> None:
    on_disk = {p.name for p in MALFORMED.iterdir()} - {"EXPECTED.json"}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_malformed_card_fails_fast_with_a_named_reason(name: str) -> None:
    path = MALFORMED / name
    start = time.perf_counter()
    with pytest.raises(CardError) as info:
        read_card(path)
    assert time.perf_counter() - start < 1.0
    assert info.value.path.endswith(name)
    assert EXPECTED[name] in info.value.reason
    assert str(info.value).startswith(str(path))


def test_file_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"name": "Mara"}' + b" " * 200)
    with pytest.raises(CardError, match="the file is 216 bytes, over the limit of 100"):
        read_card(path, CardLimits(max_file_bytes=100))
    with pytest.raises(CardError, match="over the limit of 100"):
        read_card_bytes(path.read_bytes(), "big.json", CardLimits(max_file_bytes=100))


def test_text_limit_applies_to_uncompressed_json() -> None:
    payload = json.dumps({"name": "Mara", "description": "x" * 500}).encode()
    with pytest.raises(CardError, match="over the limit of 300"):
        read_card_bytes(payload, "m.json", CardLimits(max_text_bytes=300))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="no such file"):
        read_card(tmp_path / "nope.png")
    with pytest.raises(CardError, match="not a file"):
        read_card(tmp_path)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_text_chunks"):
        CardLimits(max_text_chunks=0)


# --------------------------------------------------------------------------- reading variants

def test_ccv3_is_preferred_over_chara() -> None:
    data = _png_with(cpng.text_chunk("chara", _b64({"name": "Old"})),
                     cpng.text_chunk("CCV3", _b64(V3_CARD)))
    card = read_card_bytes(data, "both.png")
    assert (card.name, card.spec) == ("Mara Quell", SPEC_V3)


@pytest.mark.parametrize("chunk", [
    cpng.Chunk(b"zTXt", b"chara\0\0" + zlib.compress(_b64({"name": "Zed"}))),
    cpng.Chunk(b"iTXt", b"chara\0\x01\0en\0chara\0" + zlib.compress(_b64({"name": "Zed"}))),
    cpng.Chunk(b"iTXt", b"chara\0\0\0\0\0" + _b64({"name": "Zed"})),
])
def test_compressed_and_international_text_chunks(chunk: cpng.Chunk) -> None:
    card = read_card_bytes(_png_with(chunk), "z.png")
    assert (card.name, card.spec) == ("Zed", SPEC_V1)


def test_card_after_idat_and_wrapped_base64() -> None:
    wrapped = b"\n".join(_b64(V3_CARD)[i:i + 76] for i in range(0, len(_b64(V3_CARD)), 76))
    card = read_card_bytes(_png_with(cpng.text_chunk("ccv3", wrapped)), "w.png")
    assert card.data["nickname"] == "Mo"


def test_huge_ihdr_is_never_decoded(tmp_path: Path) -> None:
    # A 20000x20000 header over a 10-byte IDAT: decoding would be a pixel bomb; we never do.
    ihdr = cpng.Chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 6, 0, 0, 0))
    chunks = [ihdr, cpng.Chunk(b"acTL", bytes(8)), cpng.Chunk(b"IDAT", b"0123456789"),
              cpng.text_chunk("ccv3", _b64(V3_CARD)), cpng.Chunk(b"IEND", b"")]
    data = cpng.PNG_SIGNATURE + b"".join(c.encode() for c in chunks)
    start = time.perf_counter()
    card = read_card_bytes(data, "bomb.png")
    assert time.perf_counter() - start < 1.0
    assert card.name == "Mara Quell"
    write_card(card, tmp_path / "out.png")
    out = cpng.read_chunks((tmp_path / "out.png").read_bytes(), "o", cards.DEFAULT_LIMITS)
    assert [c.type for c in out] == [b"IHDR", b"acTL", b"IDAT", b"tEXt", b"tEXt", b"IEND"]
    assert cpng.image_size(out) == (20000, 20000)


def test_v1_bom_pygmalion_and_future_spec() -> None:
    v1 = read_card_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "Ivo", "avatar": "none"}).encode(),
                         "ivo.json")
    assert (v1.spec, v1.name, v1.data["first_mes"], v1.raw["avatar"]) == (
        SPEC_V1, "Ivo", "", "none")
    pyg = read_card_bytes(json.dumps({"char_name": "Pia", "char_greeting": "Hi.",
                                      "world_scenario": "A fair."}).encode(), "pia.json")
    assert (pyg.name, pyg.data["first_mes"], pyg.data["scenario"]) == ("Pia", "Hi.", "A fair.")
    assert "Gradio/Pygmalion" in pyg.warnings[0]
    v4 = read_card_bytes(json.dumps({"spec": "chara_card_v4", "spec_version": "4.0",
                                     "data": {"name": "Quin"}}).encode(), "q.json")
    assert (v4.spec, v4.name) == (SPEC_V3, "Quin")
    assert v4.warnings == ["spec 'chara_card_v4' is newer than this reader; read as V3"]


def test_v2_data_wins_over_top_level_and_defaults_are_filled() -> None:
    obj = {"spec": "chara_card_v2", "name": "Top", "data": {"name": "Inner"}}
    card = read_card_bytes(json.dumps(obj).encode(), "x.json")
    assert card.name == "Inner"
    assert card.data["alternate_greetings"] == [] and card.data["extensions"] == {}
    assert card.data["mes_example"] == ""


# --------------------------------------------------------------------------- round trips

def test_json_round_trips_keep_everything(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(V3_CARD))
    card = read_card(source)
    write_card(card, tmp_path / "out.json")
    again = read_card(tmp_path / "out.json")
    assert again.spec == SPEC_V3
    assert again.data == V3_CARD["data"]
    assert again.raw["top_level_unknown"] == [1, 2, 3]
    assert again.raw["first_mes"] == V3_CARD["data"]["first_mes"]  # V1 mirror written
    write_card(again, tmp_path / "v2.json", spec=SPEC_V2)
    as_v2 = read_card(tmp_path / "v2.json")
    assert (as_v2.spec, as_v2.data) == (SPEC_V2, V3_CARD["data"])


def test_v1_json_becomes_v2_and_keeps_unknown_fields(tmp_path: Path) -> None:
    v1 = {"name": "Ivo", "description": "A ferryman.", "first_mes": "Ivo nodded.",
          "chat": "Ivo - 2024", "fav": True}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    write_card(read_card(tmp_path / "v1.json"), tmp_path / "v2.json")
    written = json.loads((tmp_path / "v2.json").read_text())
    assert (written["spec"], written["spec_version"]) == ("chara_card_v2", "2.0")
    assert (written["chat"], written["fav"]) == ("Ivo - 2024", True)
    assert written["data"]["first_mes"] == "Ivo nodded."
    again = read_card(tmp_path / "v2.json")
    assert again.data == read_card(tmp_path / "v1.json").data


def test_png_round_trip_keeps_pixels_and_fields(tmp_path: Path) -> None:
    card = read_card_bytes(json.dumps(V3_CARD).encode(), "m.json")
    write_card(card, tmp_path / "m.png")  # no image: a placeholder
    first = read_card(tmp_path / "m.png")
    assert cpng.image_size(cpng.read_chunks(first.image, "m", cards.DEFAULT_LIMITS)) == (400, 600)
    assert first.data == V3_CARD["data"] and first.raw["top_level_unknown"] == [1, 2, 3]
    first.data["first_mes"] = "Changed."
    write_card(first, tmp_path / "m2.png")
    second = (tmp_path / "m2.png").read_bytes()
    assert [k for k, _ in _text_chunks(second)] == ["chara", "ccv3"]  # old ones replaced
    assert _idat(second) == _idat(first.image)
    chara = json.loads(base64.b64decode(dict(_text_chunks(second))["chara"]))
    assert (chara["spec"], chara["data"]["first_mes"]) == ("chara_card_v2", "Changed.")
    assert read_card(tmp_path / "m2.png").data["first_mes"] == "Changed."
    from PIL import Image  # an independent reader agrees the file is a sound PNG

    with Image.open(tmp_path / "m2.png") as image:
        image.load()
        assert image.size == (400, 600)
        assert image.text["chara"].encode() == dict(_text_chunks(second))["chara"]


def test_write_refuses_unknown_extension_and_missing_folder(tmp_path: Path) -> None:
    card = new_card("Mara")
    with pytest.raises(CardError, match=r"cannot write a card as \.gif"):
        write_card(card, tmp_path / "m.gif")
    with pytest.raises(CardError, match="cannot write"):
        write_card(card, tmp_path / "missing" / "m.json")
    write_card(card, tmp_path / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temp file left


def test_edda_varn_png_renders_the_verified_sillytavern_prompt(shared_dir: Path) -> None:
    card = read_card(_edda(shared_dir))
    assert (card.spec, card.name) == (SPEC_V2, "Edda Varn")
    conversation = card_to_conversation(card, "Corin")
    conversation.messages.append(Message("user", "Hello?"))
    expected = (_edda(shared_dir).parent / "expected" / "turn1.txt").read_text()
    assert format.render(conversation, open_response=True, input_length="tiny") == expected


def test_edda_varn_round_trips_png_json_sheet_and_yaml(shared_dir: Path, tmp_path: Path) -> None:
    card = read_card(_edda(shared_dir))
    write_card(card, tmp_path / "e.png")
    from_png = read_card(tmp_path / "e.png")
    assert from_png.data == card.data
    assert _idat(from_png.image) == _idat(_edda(shared_dir).read_bytes())
    sheet = card_to_sheet(card, "Corin")
    assert sheet_to_card(sheet).card.data == {**card.data, "first_mes": ""}
    conv = loads_yaml(dump_yaml(card_to_conversation(card, "Corin")))
    back = conversation_to_card(conv)
    assert {k: back.data[k] for k in ("name", "description", "scenario", "first_mes")} == {
        k: card.data[k] for k in ("name", "description", "scenario", "first_mes")}


def test_seraphina_imports_with_lorebook_and_legacy_fields(shared_dir: Path,
                                                           tmp_path: Path) -> None:
    card = read_card(_seraphina(shared_dir))
    assert (card.name, card.spec, card.data["creator"]) == ("Seraphina", SPEC_V2, "OtisAlejandro")
    assert card.data["extensions"] == {"talkativeness": "0.5", "fav": False, "world": "Eldoria"}
    assert len(card.data["character_book"]["entries"]) == 4
    write_card(card, tmp_path / "s.png")
    again = read_card(tmp_path / "s.png")
    assert again.data == card.data
    assert {k: again.raw[k] for k in ("avatar", "chat", "create_date", "creatorcomment")} == {
        k: card.raw[k] for k in ("avatar", "chat", "create_date", "creatorcomment")}
    assert _idat(again.image) == _idat(card.image)


def test_seraphina_converts_to_house_style_and_round_trips(shared_dir: Path) -> None:
    pytest.importorskip("limamono.style")
    card = read_card(_seraphina(shared_dir))
    conv = card_to_conversation(card, "Corin", house_style=True)
    greeting = conv.messages[0].text
    assert greeting.startswith("You wake with a start, recalling the events")
    assert "*" not in greeting and "\r" not in conv.character.description
    assert "Corin: \"Describe your traits?\"" in conv.character.description
    assert format.render(conv, open_response=True).endswith("### Response: (length = long)\n"
                                                          "Seraphina:")
    back = card_to_conversation(conversation_to_card(loads_yaml(dump_yaml(conv))), "Corin")
    assert (back.character, back.scenario, back.messages) == (
        conv.character, conv.scenario, conv.messages)


EXAMPLES = sorted((Path(__file__).parents[1] / "examples" / "characters").glob("*.txt"))


@pytest.mark.parametrize("sheet", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_bundled_characters_sheet_yaml_and_card_agree(sheet: Path) -> None:
    text = sheet.read_text()
    parts = sheet_to_card(text, str(sheet))
    assert (parts.missing, parts.notes) == ([], [])
    assert card_to_sheet(parts.card) == text.rstrip("\n")
    conversation = loads_yaml(sheet.with_suffix(".yaml").read_text())
    assert (conversation.character.name, conversation.scenario) == (parts.name, parts.scenario)
    if sheet.with_suffix(".png").exists():
        from_png = card_to_conversation(read_card(sheet.with_suffix(".png")),
                                        conversation.user.name)
        assert (from_png.character, from_png.scenario) == (conversation.character,
                                                           conversation.scenario)
        assert [m.text for m in from_png.messages] == [conversation.messages[0].text]


# --------------------------------------------------------------------------- macros, sheets

@pytest.mark.parametrize(("text", "expected"), [
    ("{{char}} greets {{user}}.", "Edda greets Corin."),
    ("{{CHAR}} and {{User}}", "Edda and Corin"),
    ("<BOT> to <user>; <Bot>", "Edda to Corin; Edda"),
    ("{{random:a,b}} {{char }}", "{{random:a,b}} {{char }}"),
])
def test_substitute(text: str, expected: str) -> None:
    assert substitute(text, "Edda", "Corin") == expected


def test_substitute_is_one_pass() -> None:
    assert substitute("{{user}} meets {{char}}", "Edda", "{{char}}") == "{{char}} meets Edda"


def test_card_to_conversation_fields_personality_nickname_and_greetings() -> None:
    card = read_card_bytes(json.dumps(V3_CARD).encode(), "m.json")
    conv = card_to_conversation(card, "Corin")
    assert conv.character == Character("Mara Quell", "Personality: patient, dry\n"
                                       "Maps the floating city of Aster.")
    assert (conv.user, conv.scenario) == (User("Corin"), "Corin asks for a map.")
    assert conv.messages == [Message("char", "Mara rolled out a chart for Corin.")]
    assert conv.meta == {"source": "m.json"}
    assert greetings(card, "Corin") == ["Mara rolled out a chart for Corin.", "Mo waved."]
    back = conversation_to_card(conv)
    assert (back.data["personality"], back.data["description"]) == (
        "patient, dry", "Maps the floating city of Aster.")


def test_card_without_greeting_has_no_messages() -> None:
    card = new_card("Ivo", description="Line one\r\nline two", first_mes="\r\n",
                    alternate_greetings=["Alt."])
    conv = card_to_conversation(card)
    assert conv.messages == []
    assert conv.character.description == "Line one\nline two"
    assert greetings(card) == ["Alt."]


SHEET = """Tova Renn
Occupation: glassblower
Age: 41
Tova runs a furnace on the harbour.
She speaks little and sings while she works.
- She collects sea glass.
- She cannot whistle.
Scenario: A storm has closed the harbour."""


def test_sheet_to_card_parts_and_round_trip() -> None:
    parts = sheet_to_card(SHEET)
    assert parts.name == "Tova Renn"
    assert parts.attributes == [("Occupation", "glassblower"), ("Age", "41")]
    assert parts.paragraphs == ["Tova runs a furnace on the harbour.",
                                "She speaks little and sings while she works."]
    assert parts.trivia == ["She collects sea glass.", "She cannot whistle."]
    assert (parts.scenario, parts.missing, parts.notes) == (
        "A storm has closed the harbour.", [], [])
    assert card_to_sheet(parts.card) == SHEET
    personality = "Tova Renn\nPersonality: quiet\nAge: 41\nScenario: Dawn."
    card = sheet_to_card(personality).card
    assert (card.data["personality"], card.data["description"]) == ("quiet", "Age: 41")
    assert card_to_sheet(card) == personality


def test_sheet_reports_missing_parts_and_layout_notes() -> None:
    parts = sheet_to_card("Tova Renn\nShe blows glass.\nAge: 41\n")
    assert parts.missing == ["trivia", "scenario"]
    assert parts.notes == ["line 3: attribute 'Age' comes after the description "
                           "(attributes go first)"]
    assert sheet_to_card("Tova").missing == ["attributes", "paragraphs", "trivia", "scenario"]


def test_card_from_fields_rejects_wrong_types() -> None:
    with pytest.raises(CardError, match=r"'data\.tags' must be a list of text"):
        new_card("Mara", tags="fantasy")
    assert isinstance(new_card("Mara"), Card)


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.mark.parametrize("args", [["card", "--help"], ["card", "show", "--help"],
                                  ["card", "convert", "--help"]])
def test_cli_help(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200


def test_cli_show_summary_and_json(shared_dir: Path) -> None:
    result = runner.invoke(app, ["card", "show", str(_edda(shared_dir))])
    assert result.exit_code == 0
    assert "Edda Varn" in result.output and "chara_card_v2" in result.output
    assert "64x64 PNG" in result.output
    result = runner.invoke(app, ["card", "show", "--json", str(_edda(shared_dir))])
    assert result.exit_code == 0
    obj = json.loads(result.output)
    assert (obj["spec"], obj["data"]["name"]) == ("chara_card_v2", "Edda Varn")


def test_cli_show_prints_card_markup_literally(tmp_path: Path) -> None:
    write_card(new_card("[bold]Mallory[/bold]", description="<script>x</script>"),
               tmp_path / "m.json")
    result = runner.invoke(app, ["card", "show", str(tmp_path / "m.json")])
    assert result.exit_code == 0
    assert "[bold]Mallory[/bold]" in result.output


def test_cli_convert_every_format(shared_dir: Path, tmp_path: Path) -> None:
    edda = str(_edda(shared_dir))
    for name in ("e.yaml", "e.txt", "e.json", "e.png"):
        result = runner.invoke(app, ["card", "convert", edda, str(tmp_path / name),
                                     "--user", "Corin"])
        assert result.exit_code == 0, result.output
    conv = loads_yaml((tmp_path / "e.yaml").read_text())
    assert conv.user == User("Corin") and conv.messages[0].role == "char"
    sheet = (tmp_path / "e.txt").read_text()
    assert sheet.startswith("Edda Varn\n") and sheet.endswith(
        "Scenario: A courier knocks during a storm.\n")
    result = runner.invoke(app, ["card", "convert", str(tmp_path / "e.txt"),
                                 str(tmp_path / "from_sheet.json")])
    assert result.exit_code == 0
    assert read_card(tmp_path / "from_sheet.json").data["description"].startswith("Occupation")


def test_cli_bad_card_exits_2_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["card", "show", str(MALFORMED / "ztxt_bomb.png")])
    assert result.exit_code == 2
    assert "decompression bomb" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["card", "convert", str(MALFORMED / "bad_crc.png"),
                                 str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "bad CRC" in result.output
    result = runner.invoke(app, ["card", "convert", str(MALFORMED / "bad_crc.png"),
                                 str(tmp_path / "x.gif")])
    assert result.exit_code == 2
    assert not (tmp_path / "x.json").exists()


def test_png_helpers_make_valid_chunks() -> None:
    chunk = cpng.text_chunk("chara", b"abc")
    encoded = chunk.encode()
    assert encoded[:8] == struct.pack(">I4s", 9, b"tEXt")
    assert encoded[-4:] == struct.pack(">I", zlib.crc32(b"tEXtchara\0abc") & 0xFFFFFFFF)
    assert read_card_bytes(_png_with(cpng.text_chunk("chara", _b64({"name": "A"}))),
                           "a.png").name == "A"


# --------------------------------------------------------------------------- properties

_GOOD_PNG = _png_with(cpng.text_chunk("chara", _b64(V3_CARD)))
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, len(_GOOD_PNG)), at=st.integers(0, len(_GOOD_PNG) - 1),
       byte=st.integers(0, 255), insert=st.binary(max_size=16))
def test_damaged_png_gives_a_card_or_card_error(cut: int, at: int, byte: int,
                                                insert: bytes) -> None:
    for data in (_GOOD_PNG[:cut], _GOOD_PNG[:at] + bytes([byte]) + _GOOD_PNG[at + 1:],
                 _GOOD_PNG[:at] + insert + _GOOD_PNG[at:]):
        try:
            card = read_card_bytes(data, "fuzz.png")
        except CardError as exc:
            assert exc.path == "fuzz.png" and exc.reason
        else:
            assert card.name


@settings(max_examples=150, deadline=None)
@given(value=_JSON, data=st.dictionaries(st.sampled_from(
    ["name", "description", "tags", "extensions", "alternate_greetings", "nickname",
     "character_book", "creation_date", "other"]), _JSON, max_size=6))
def test_any_json_gives_a_card_or_card_error(value: Any, data: dict[str, Any]) -> None:
    for obj in (value, {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}):
        try:
            card = read_card_bytes(json.dumps(obj).encode(), "fuzz.json")
        except CardError as exc:
            assert exc.path == "fuzz.json" and exc.reason
        else:
            assert card.name.strip()
            again = read_card_bytes(cards.to_json_text(card).encode(), "again.json")
            assert again.data == card.data


_LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=8))
def test_sheet_parse_is_stable(lines: list[str]) -> None:
    try:
        first = sheet_to_card("\n".join(lines))
    except CardError:
        return
    second = sheet_to_card(card_to_sheet(first.card))
    assert second.card.data == first.card.data
    assert (second.attributes, second.trivia, second.scenario) == (
        first.attributes, first.trivia, first.scenario)
