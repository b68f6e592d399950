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
