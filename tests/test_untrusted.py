"""Bounded reading of untrusted YAML/JSON, and the loaders that use it (issue 11 items 3, 6,
7, 11, 12, 14, 16)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from limamono.core.conversation import ConversationError, loads_yaml
from limamono.util import untrusted
from limamono.util.untrusted import UntrustedError

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for p, k in zip(["", *"abcdefgh"], "abcdefghi", strict=True))

GOOD = ("character: {name: Mira}\nuser: Tom\nmessages:\n"
        "  - {role: char, text: Hi.}\n")


def refused(text: str) -> UntrustedError:
    with pytest.raises(UntrustedError) as info:
        untrusted.load_yaml(text)
    return info.value


def test_an_alias_bomb_is_measured_without_expanding_it():
    assert len(BOMB.encode()) < 400
    start = time.perf_counter()
    error = refused(BOMB)
    assert time.perf_counter() - start < 0.5
    assert str(error) == ("line 1: its aliases expand it to 490329064 values, over the limit "
                          "of 100000 (an alias bomb?)")


def test_aliases_that_stay_small_are_fine():
    assert untrusted.load_yaml("a: &x [1, 2]\nb: [*x, *x]\n") == {"a": [1, 2],
                                                                 "b": [[1, 2], [1, 2]]}


def test_nesting_is_bounded_in_yaml_and_json():
    assert untrusted.load_yaml("[" * 64 + "]" * 64) is not None
    assert str(refused("[" * 65 + "]" * 65)) == "line 1: nested more than 64 levels deep"
    assert str(refused("[" * 5000)) == "line 1: nested more than 64 levels deep"
    assert untrusted.load_json("[" * 64 + "]" * 64) is not None
    for text in ("[" * 65 + "]" * 65, "[" * 100_000):
        with pytest.raises(UntrustedError, match=r"^nested "):
            untrusted.load_json(text)


def test_duplicate_keys_recursive_aliases_and_unsafe_tags_are_refused():
    assert str(refused("a: 1\nb: 2\na: 3\n")) == ("line 3: duplicate key 'a' (lines 1 and 3; "
                                                  "which one is meant is ambiguous)")
    assert str(refused("a: &x [*x]\n")) == "line 1: an alias refers to a value that contains it"
    assert "could not determine a constructor" in str(refused("x: !!python/object:os.system {}"))
    with pytest.raises(UntrustedError, match="duplicate key 'a'"):
        untrusted.load_json('{"a": 1, "a": 2}')
    with pytest.raises(UntrustedError, match="NaN is not a JSON number"):
        untrusted.load_json('{"a": NaN}')


def test_quote_caps_what_a_message_repeats():
    assert untrusted.quote("x" * 1000) == repr("x" * 60) + "... (1000 characters)"
    assert untrusted.quote([[1]] * 10**6) == "a list of 1000000 items"
    assert untrusted.quote(10**100) == "an integer of about 100 digits"
    assert untrusted.quote("ok") == "'ok'"


# --------------------------------------------------------------------------- conversations

def conversation_error(text: str) -> str:
    with pytest.raises(ConversationError) as info:
        loads_yaml(text, "c.yaml")
    return str(info.value)


def test_the_conversation_loader_is_as_strict_as_the_card_loader():
    assert loads_yaml(GOOD).character.name == "Mira"
    assert conversation_error(GOOD + "user: Ann\n") == (
        "c.yaml:5: duplicate key 'user' (lines 2 and 5; which one is meant is ambiguous)")
    assert conversation_error(GOOD.replace("{name: Mira}", '{name: "Mi\\nra"}')) == (
        "c.yaml:1: field 'character.name': holds a line break; a name must be one line")
    assert conversation_error(GOOD.replace("user: Tom", 'user: "T\\nom"')) == (
        "c.yaml:2: field 'user.name': holds a line break; a name must be one line")
    assert conversation_error(GOOD + "meta: 0\n") == (
        "c.yaml:5: field 'meta': expected a mapping, got int")
    assert conversation_error(GOOD + "meta: {when: 2024-01-01}\n") == (
        "c.yaml:5: field 'meta.when': expected text, a number, true/false, a list or a "
        "mapping, got date")
    assert conversation_error(GOOD + "meta: {x: .nan}\n") == (
        "c.yaml:5: field 'meta.x': nan is not a number JSON can hold")
    assert conversation_error(BOMB + GOOD).startswith("c.yaml:1: its aliases expand it to ")
    assert conversation_error("[" * 5000) == "c.yaml:1: nested more than 64 levels deep"


def test_an_error_quotes_a_huge_value_briefly():
    text = "meta: {big: &a [" + ", ".join(["xxxxxxxxxx"] * 300) + "]}\n" + GOOD.replace(
        "role: char", "role: *a")
    message = conversation_error(text)
    assert message == ("c.yaml:5: field 'messages[0].role': expected one of char, user, "
                       "got a list of 300 items")


# --------------------------------------------------------------------------- training configs

def config_error(tmp_path: Path, text: str | bytes, **overrides: str) -> str:
    from limamono.train import ConfigError, load_config

    path = tmp_path / "c.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    (tmp_path / "data").mkdir(exist_ok=True)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).replace(str(path), "c.yaml")


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("lora_r: .inf", {}, "lora_r: expected an integer, got inf (not a finite number)"),
    ("lora_r: .nan", {}, "lora_r: expected an integer, got nan (not a finite number)"),
    ("", {"lora-r": "1e400"}, "lora_r: expected an integer, got '1e400' (not a finite number)"),
    ("lora_r: 1e30", {}, "lora_r: '1e30' is too large (at most 2147483647)"),
    ("learning_rate: .inf", {}, "learning_rate: expected a number, got inf (not a finite "
                                "number)"),
    ("weight_decay: .inf", {}, "weight_decay: expected a number, got inf (not a finite "
                               "number)"),
    ("lora_r: 8\nlora_r: 9", {}, "line 2: duplicate key 'lora_r' (lines 1 and 2; which one "
                                 "is meant is ambiguous)"),
    ("[" * 5000, {}, "line 1: nested more than 64 levels deep"),
    (BOMB, {}, "line 1: its aliases expand it to 490329064 values, over the limit of 100000 "
               "(an alias bomb?)"),
    (b"data: data\nlora_r: \xff\n", {}, "not UTF-8 text (byte 19)"),
])
def test_training_config_refusals_are_one_line(tmp_path: Path, text: str, overrides: dict,
                                               message: str):
    if isinstance(text, str) and "\n" not in text and not text.startswith(("[", "a:")):
        text = f"data: data\n{text}"
    assert config_error(tmp_path, text, **overrides) == f"c.yaml: {message}"


# --------------------------------------------------------------------------- SillyTavern chats

def test_sillytavern_import_refuses_nan_and_export_writes_valid_json(tmp_path: Path):
    from limamono.store import ChatStore, StoreError, import_sillytavern
    from limamono.store.sillytavern import export_sillytavern, write_file_safely

    store = ChatStore(tmp_path / "c.db")
    source = tmp_path / "nan.jsonl"
    source.write_text('{"user_name": "T", "character_name": "M", "x": NaN}\n'
                      '{"mes": "Hi.", "is_user": false}\n')
    with pytest.raises(StoreError, match=r"nan.jsonl:1: not valid JSON: NaN is not a JSON "
                                         r"number$"):
        import_sillytavern(store, source)
    # A chat stored before imports refused NaN still exports as JSON that SillyTavern reads.
    source.write_text(source.read_text().replace("NaN", "1.5"))
    chat_id = import_sillytavern(store, source)
    chat = store.load_chat(chat_id)
    chat.meta["sillytavern"]["raw"]["x"] = float("nan")
    text = export_sillytavern(chat)
    assert json.loads(text.splitlines()[0])["x"] is None
    old_umask = os.umask(0o022)
    try:
        write_file_safely(tmp_path / "out.jsonl", text)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o644


def test_numbers_python_cannot_read_or_print_are_refused():
    assert str(refused("x: 1\na: 0x" + "f" * 5000)) == (
        "line 2: the integer '0x" + "f" * 58 + "'... (5002 characters) is too long")
    assert str(refused("a: " + "9" * 5000)).startswith("line 1: the integer '999")
    assert str(refused("a: 2024-13-45")) == ("not valid YAML: a value cannot be read "
                                             "('month must be in 1..12')")
    assert untrusted.load_yaml("a: [0x1f, 0b101, 1_000]") == {"a": [31, 5, 1000]}
    assert untrusted.quote(10**5000) == "an integer of about 5000 digits"


# --------------------------------------------------------------- issue 24: 3 and 5

REPROS = Path("/work/shared/testdata/repros/audit-3")
HOSTILE = Path(__file__).parent / "assets" / "hostile"


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x1b", "\x7f", "\x9b", "\ufffe"])
def test_a_raw_control_character_in_yaml_names_its_line_and_column(char: str) -> None:
    exc = refused(f"a: 1\nbb: x{char}y\n")
    assert exc.line == 2
    assert exc.reason.startswith(f"not valid YAML: the character U+{ord(char):04X} at column 6 ")


def test_tab_newline_and_escaped_controls_are_still_fine() -> None:
    assert untrusted.load_yaml('a: "x\\x1by\\x01"\nb: "c\td"\n') == {"a": "x\x1by\x01", "b": "c\td"}


@pytest.mark.parametrize(("text", "reason"), [
    ('a: "\\ud800"', "the value '\\ud800' holds a lone surrogate \\ud800 at character 1"),
    ('a: ["ok", "x\\udfff"]', "the value 'x\\udfff' holds a lone surrogate \\udfff at character 2"),
    ('"k\\udc00": 1', "the value 'k\\udc00' holds a lone surrogate \\udc00 at character 2"),
    ('a: "\\U0000d800"', "the value '\\ud800' holds a lone surrogate \\ud800 at character 1"),
    ('a: "\\ude00\\ud83d"', "the value '\\ude00\\ud83d' holds a lone surrogate \\ude00"),
])
def test_a_lone_surrogate_in_yaml_is_refused_with_its_line(text: str, reason: str) -> None:
    exc = refused("x: 1\n" + text + "\n")
    assert exc.line == 2 and exc.reason.startswith(reason)


def test_an_escaped_surrogate_pair_in_yaml_is_its_character() -> None:
    assert untrusted.load_yaml('a: "\\ud83d\\ude00!"') == {"a": "\U0001F600!"}


@pytest.mark.parametrize(("text", "reason", "line"), [
    ('{"a": "\\ud800"}', "field 'a': the value '\\ud800' holds a lone surrogate \\ud800 at "
     "character 1 (not a character: UTF-8 cannot hold it)", 1),
    ('{"a": [1,\n "ok",\n {"b": "xy\\uDC12"}]}', "field 'a[2].b': the value 'xy\\udc12' holds "
     "a lone surrogate \\udc12 at character 3", 3),
    ('{"k\\ud800": 1}', "the key 'k\\ud800' holds a lone surrogate \\ud800 at character 2", 1),
    ('"\\udbff"', "the value '\\udbff' holds a lone surrogate \\udbff at character 1", 1),
    ('["\\ud83d\\ude00",\n "\\ude00\\ud83d"]', "field '[1]': the value '\\ude00\\ud83d' holds "
     "a lone surrogate \\ude00 at character 1", 2),
])
def test_a_lone_surrogate_in_json_names_the_field_and_line(text: str, reason: str,
                                                           line: int) -> None:
    with pytest.raises(UntrustedError) as info:
        untrusted.load_json(text)
    assert info.value.reason.startswith(reason) and info.value.line == line


def test_json_pairs_and_an_escaped_backslash_before_u_are_fine() -> None:
    assert untrusted.load_json('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}') == {
        "a": "\U0001F600", "b": "\\ud800"}


def test_the_audit_reproductions_are_in_the_hostile_corpus() -> None:
    """The audit's files are kept byte for byte (the corpus test runs every reader on them)."""
    pairs = {"03_surrogate_card.json": "cards/lone_surrogate.json",
             "03_surrogate_chat.jsonl": "chats/lone_surrogate.jsonl",
             "03_surrogate_text.yaml": "conversations/lone_surrogate.yaml",
             "05_yaml_control_char.yaml": "conversations/control_char.yaml",
             "05_yaml_esc_char.yaml": "conversations/escape_char.yaml"}
    for repro, kept in pairs.items():
        if (REPROS / repro).exists():
            assert (REPROS / repro).read_bytes() == (HOSTILE / kept).read_bytes(), repro
        assert (HOSTILE / kept).exists()


def test_data_lint_of_a_folder_goes_on_past_a_control_character(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from limamono.cli import app

    (tmp_path / "a_bad.yaml").write_bytes((HOSTILE / "conversations/control_char.yaml")
                                          .read_bytes())
    (tmp_path / "b_surrogate.jsonl").write_bytes(
        (HOSTILE / "conversations/lone_surrogate.jsonl").read_bytes())
    (tmp_path / "c_good.yaml").write_text(
        'character: {name: Mira}\nuser: Tom\nscenario: A cafe.\nmessages:\n'
        '  - {role: char, text: "Mira smiles. \\"Hi there, how are you today?\\""}\n',
        encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "lint", str(tmp_path)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert [line.split(": error schema ")[0] for line in lines if "error schema" in line] == [
        f"{tmp_path / 'a_bad.yaml'}:1", f"{tmp_path / 'b_surrogate.jsonl'}:1"]
    assert "Traceback" not in result.output
    assert lines[-1].startswith("2 error(s)")
    assert any(line.startswith(f"{tmp_path / 'c_good.yaml'}") for line in lines)  # linted
