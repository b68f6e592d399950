"""The Limamono format: exact rendering, parsing, round trips, lengths and the chat template."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Character, Conversation, Message, User

ASSETS = Path(__file__).parent / "assets"
CARD_TRIGGER = fmt.TRIGGERS["card"]


def mira(**overrides) -> Conversation:
    base = Conversation(
        Character("Mira", "Occupation: lighthouse keeper\nMira has kept the light for years."),
        User("Tom"), "Tom knocks on the lighthouse door during a storm.",
        [Message("char", 'Mira looked up from her logbook. "Who\'s there?"', "long"),
         Message("user", '"Just a traveler," Tom said.', "tiny")])
    return replace(base, **overrides)


def test_render_is_exactly_the_spec_layout():
    expected = (
        f"{CARD_TRIGGER}\n\n### Instruction:\nMira\nOccupation: lighthouse keeper\n"
        "Mira has kept the light for years.\nScenario: Tom knocks on the lighthouse door "
        "during a storm.\n\n### Response: (length = long)\nMira: Mira looked up from her "
        "logbook. \"Who's there?\"\n\n### Input: (length = tiny)\nTom: \"Just a traveler,\" "
        "Tom said.")
    assert fmt.render(mira()) == expected
    assert fmt.render(mira(), open_response=True) == expected + (
        "\n\n### Response: (length = long)\nMira:")
    assert fmt.render(mira(), open_response=True, response_length="huge").endswith(
        "### Response: (length = huge)\nMira:")
    assert fmt.render(mira(), open_response=True, response_length=None).endswith(
        "\n\n### Response:\nMira:")


def test_render_matches_the_prompt_a_real_sillytavern_sent(shared_dir):
    conv = conv_mod.load_yaml(ASSETS / "edda.yaml")
    captured = shared_dir / "testdata/sillytavern/limamono-presets/captured"
    prompt = fmt.render(conv, open_response=True, input_length="tiny")
    assert prompt == (captured / "kcpp_Limamono_turn2.txt").read_text()
    assert prompt == (captured / "ooba_Limamono_turn2.txt").read_text()
    first = replace(conv, messages=conv.messages[:2])
    assert fmt.render(first, open_response=True, input_length="tiny") == (
        captured / "kcpp_Limamono_turn1.txt").read_text()


def test_input_length_only_fills_missing_labels():
    conv = mira(messages=[Message("user", "a", None), Message("user", "b", "short")])
    text = fmt.render(conv, input_length="tiny")
    assert "### Input: (length = tiny)\nTom: a" in text
    assert "### Input: (length = short)\nTom: b" in text


def test_preset_trigger_and_card_generation_prompt():
    assert fmt.render(mira()).startswith(CARD_TRIGGER + "\n\n### Instruction:\nMira\n")
    assert fmt.render(mira(), trigger="preset").startswith(fmt.TRIGGERS["preset"] + "\n\n")
    assert fmt.card_generation_prompt() == CARD_TRIGGER + "\n\n### Instruction:\n"
    assert fmt.card_generation_prompt("Mira") == CARD_TRIGGER + "\n\n### Instruction:\nMira"


def test_sheet_without_description_or_scenario():
    conv = Conversation(Character("Mira"), User("Tom"), "", [])
    assert fmt.render(conv) == CARD_TRIGGER + "\n\n### Instruction:\nMira"
    assert fmt.parse(fmt.render(conv)).conversation.character == Character("Mira")


def test_segments_join_to_render_and_label_roles():
    segments = fmt.render_segments(mira(), open_response=True)
    assert "".join(s.text for s in segments) == fmt.render(mira(), open_response=True)
    assert [(s.kind, s.role, s.index) for s in segments] == [
        ("system", None, None),
        ("header", "char", 0), ("name", "char", 0), ("text", "char", 0),
        ("header", "user", 1), ("name", "user", 1), ("text", "user", 1),
        ("header", "char", 2), ("name", "char", 2)]
    assert segments[2].text == "Mira:" and segments[3].text.startswith(" Mira looked")
    assert segments[4].text == "\n\n### Input: (length = tiny)\n"


def test_render_refuses_a_header_inside_a_turn():
    bad = mira(messages=[Message("char", "Fine.\n### Input:\nTom: hi")])
    with pytest.raises(fmt.FormatError, match="message 0"):
        fmt.render(bad)
    with pytest.raises(fmt.FormatError, match="not one of"):
        fmt.render(mira(), open_response=True, response_length="gigantic")


@pytest.mark.parametrize(("text", "line", "match"), [
    ("Hello\n\n### Instruction:\n", 4, "name"),  # a custom trigger, then no sheet
    (CARD_TRIGGER + "\n### Instruction:\nMira", 2, "blank line"),
    (CARD_TRIGGER + "\n\n### Instruction:\nMira\n\n### Response:\nTom: hi", 7, "'Mira: '"),
    (CARD_TRIGGER + "\n\n### Instruction:\nMira\n\n### Input:\nno name here", 7, "Name: "),
    (CARD_TRIGGER + "\n\n### Instruction:\nMira\n\n### Response: (length = vast)\nMira: x", 6,
     "unknown length"),
    (CARD_TRIGGER + "\n\n### Instruction:\nMira\n\n### Input:\nTom: a\n\n### Input:\nAnn: b",
     10, "switch speaker"),
])
def test_parse_names_the_line_of_each_problem(text, line, match):
    with pytest.raises(fmt.FormatError) as info:
        fmt.parse(text)
    assert info.value.line == line
    if match:
        assert match in str(info.value)


def test_parse_recovers_everything():
    text = fmt.render(mira(), open_response=True, response_length="massive", trigger="preset")
    parsed = fmt.parse(text)
    assert parsed.conversation == mira()
    assert (parsed.open_response, parsed.response_length, parsed.trigger) == (
        True, "massive", "preset")


# Round trip, property-tested: prose may hold newlines, quotes, colons, '#' and blank lines,
# but never a line starting with "### " (render refuses that).
_prose = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c"
                               "\x1c\x1d\x1e\x85\u2028\u2029"), max_size=60).filter(
    lambda s: not fmt._HEADER_IN_TEXT.search(s))
_name = st.text(st.characters(whitelist_categories=("L", "N", "Zs")), min_size=1,
                max_size=12).map(str.strip).filter(lambda s: s and ": " not in s)


@st.composite
def conversations(draw) -> Conversation:
    char = draw(_name)
    user = draw(_name)
    description = draw(_prose.filter(lambda s: "Scenario: " not in s and not s.startswith("\n")
                                     and not s.endswith("\n")))
    scenario = draw(_prose.filter(lambda s: "\n" not in s))
    messages = [Message(draw(st.sampled_from(["char", "user"])), draw(_prose),
                        draw(st.none() | st.sampled_from(LENGTHS)))
                for _ in range(draw(st.integers(0, 5)))]
    if not any(m.role == "user" for m in messages):
        user = "User"  # without a user turn the name is not in the text
    return Conversation(Character(char, description), User(user), scenario, messages)


@settings(max_examples=300, deadline=None)
@given(conv=conversations(), open_response=st.booleans(),
       length=st.none() | st.sampled_from(LENGTHS))
def test_render_parse_round_trip(conv, open_response, length):
    text = fmt.render(conv, open_response=open_response, response_length=length)
    parsed = fmt.parse(text)
    assert parsed.conversation == conv
    assert fmt.render(parsed.conversation, open_response=parsed.open_response,
                      response_length=parsed.response_length) == text


@pytest.mark.parametrize(("words", "label"), [
    (0, "micro"), (10, "micro"), (11, "tiny"), (30, "tiny"), (31, "short"), (60, "short"),
    (61, "medium"), (120, "medium"), (121, "long"), (240, "long"), (241, "massive"),
    (480, "massive"), (481, "huge")])
def test_length_labels_from_word_counts(words, label):
    assert fmt.length_for_words(words) == label


def test_label_lengths_keeps_given_labels_unless_overwriting():
    conv = mira(messages=[Message("char", "one two three", None),
                          Message("user", "a " * 40, "huge")])
    labelled = fmt.label_lengths(conv)
    assert [m.length for m in labelled.messages] == ["micro", "huge"]
    assert [m.length for m in fmt.label_lengths(conv, overwrite=True).messages] == [
        "micro", "short"]
    with pytest.raises(ValueError, match="increasing"):
        fmt.length_for_words(5, bounds=(10, 5, 60, 120, 240, 480))


def test_stop_strings():
    assert fmt.stop_strings("Tom") == ["###", "\nTom:"]


def test_chat_messages_round_trip():
    messages = fmt.to_chat_messages(mira())
    assert messages[0] == {"role": "system", "content": fmt.render_sheet(
        mira().character, mira().scenario)}
    assert messages[2] == {"role": "user", "name": "Tom", "content": '"Just a traveler," Tom '
                           "said.", "length": "tiny"}
    assert fmt.from_chat_messages(messages) == mira()


def test_from_chat_messages_errors_name_the_message():
    with pytest.raises(fmt.FormatError, match="message 1"):
        fmt.from_chat_messages([{"role": "system", "content": "Mira"},
                                {"role": "tool", "content": "x"}])
    with pytest.raises(fmt.FormatError, match="message 0"):
        fmt.from_chat_messages([{"role": "user", "content": "hi"}])


def test_hf_chat_template_gives_the_same_string_as_render(tokenizer):
    tokenizer.chat_template = fmt.chat_template()
    conv = mira()
    messages = fmt.to_chat_messages(conv)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == fmt.render(conv)
    assert tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=True) == fmt.render(
        conv, open_response=True)
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         response_length="short") == fmt.render(
        conv, open_response=True, response_length="short")
    # Without names and lengths: the character's name comes from the sheet's first line.
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    expected = fmt.render(replace(conv, user=User("User"), messages=[
        replace(m, length=None) for m in conv.messages]))
    assert tokenizer.apply_chat_template(plain, tokenize=False) == expected


def test_from_chat_messages_with_a_char_name_and_a_sheet_without_it():
    conv = fmt.from_chat_messages([{"role": "system", "content": "A baker.\nScenario: Dawn."},
                                   {"role": "user", "content": "Hi."}], char_name="Ann")
    assert (conv.character, conv.scenario) == (Character("Ann", "A baker."), "Dawn.")
    same = fmt.from_chat_messages([{"role": "system", "content": "Ann\nA baker."}],
                                  char_name="Ann")
    assert same.character == Character("Ann", "A baker.")
