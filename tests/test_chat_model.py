"""The one chat model: messages with swipes in ``Conversation``, and its file round trips."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core.conversation import (
    Character,
    Conversation,
    ConversationError,
    Message,
    Swipe,
    User,
)
from limamono.store import ChatStore, export_sillytavern, parse_sillytavern

CHAR = Character("Mira Holt", "Occupation: Lighthouse keeper")


def chat() -> Conversation:
    """A chat as the chat session and the store hold it: swipes, a hidden note, metadata."""
    return Conversation(CHAR, User("Tom", "A sailor."), "A storm.", [
        Message("char", swipes=[Swipe("Hello."), Swipe("Hi!", "user", "stop", {"k": 1})],
                swipe_id=1, send_date="2026-11-27T09:00:00+00:00"),
        Message("user", "Hey.", "tiny", hidden=True, meta={"sillytavern": {"raw": {"a": 1}}}),
        Message("user", "Anyone here?"),
    ], {"split": "train"}, title="first", created="2026-11-27T09:00:00+00:00")


def test_a_plain_message_is_one_swipe_and_compares_as_before() -> None:
    m = Message("char", "Hi.", "long")
    assert m.swipes == [Swipe("Hi.")] and m.swipe_id == 0 and m.text == "Hi."
    assert m == Message("char", "Hi.", "long") and m != Message("char", "Hi.")
    assert conv_mod.from_dict(Conversation(CHAR, User("Tom"), "", [m]).to_dict()
                              ).messages == [m]
    # A dataset message keeps the three keys it always had.
    assert Conversation(CHAR, User("Tom"), "", [m]).to_dict()["messages"] == [
        {"role": "char", "text": "Hi.", "length": "long"}]


def test_text_is_the_shown_swipe_and_replace_edits_only_it() -> None:
    m = chat().messages[0]
    assert m.text == "Hi!" and m.current == Swipe("Hi!", "user", "stop", {"k": 1})
    edited = replace(m, text="Hello there!")
    assert [s.text for s in edited.swipes] == ["Hello.", "Hello there!"]
    assert edited.current.cut == "user"
    assert [s.text for s in m.swipes] == ["Hello.", "Hi!"], "the original is not shared"
    given = Message("char", "New.", swipes=[Swipe("a"), Swipe("b")], swipe_id=1)
    assert [s.text for s in given.swipes] == ["a", "New."]


def test_a_chat_round_trips_through_yaml_and_jsonl() -> None:
    original = chat()
    text = conv_mod.dump_yaml(original)
    assert conv_mod.loads_yaml(text) == original
    assert list(conv_mod.iter_jsonl(conv_mod.dumps_jsonl([original]))) == [original]
    assert original.to_dict()["messages"][0] == {
        "role": "char", "text": "Hi!", "send_date": "2026-11-27T09:00:00+00:00",
        "swipes": ["Hello.", {"text": "Hi!", "cut": "user", "finish_reason": "stop",
                              "info": {"k": 1}}],
        "swipe_id": 1}
    assert original.to_dict()["title"] == "first"


def test_hand_written_swipes_text_wins_and_may_be_left_out() -> None:
    base = {"character": {"name": "Mira"}, "user": "Tom"}
    conv = conv_mod.from_dict({**base, "messages": [
        {"role": "char", "swipes": ["One.", "Two."], "swipe_id": 1},
        {"role": "char", "text": "Edited.", "swipes": ["One.", "Two."]}]})
    assert [m.text for m in conv.messages] == ["Two.", "Edited."]
    assert [s.text for s in conv.messages[1].swipes] == ["Edited.", "Two."]


@pytest.mark.parametrize(("message", "error"), [
    ({"role": "char", "swipes": ["a"], "swipe_id": 1},
     r"<data>:9: field 'messages\[0\].swipe_id': expected an index into swipes \(0..0\), got 1"),
    ({"role": "char", "text": "a", "swipe_id": 0},
     r"field 'messages\[0\].swipe_id': swipe_id needs a swipes list"),
    ({"role": "char", "swipes": []},
     r"field 'messages\[0\].swipes': expected a non-empty list of swipes"),
    ({"role": "char", "swipes": [{"text": "a", "cut": "both"}]},
     r"field 'messages\[0\].swipes\[0\].cut': expected one of user, header, got 'both'"),
    ({"role": "char", "text": "a", "hidden": "yes"},
     r"field 'messages\[0\].hidden': expected true or false, got 'yes'"),
    ({"role": "char", "text": "a", "meta": 3},
     r"field 'messages\[0\].meta': expected a mapping"),
    ({"role": "char", "swipes": [{"cut": "user"}]},
     r"field 'messages\[0\].swipes\[0\].text': expected text, got missing"),
])
def test_bad_chat_fields_name_the_field_and_line(message: dict, error: str) -> None:
    text = conv_mod.dump_yaml(Conversation(CHAR, User("Tom"))).replace("messages: []\n", "")
    text += "messages:\n" + "\n".join(
        "  " + line for line in conv_mod.yaml.safe_dump([message]).splitlines()) + "\n"
    with pytest.raises(ConversationError, match=error):
        conv_mod.loads_yaml(text, "<data>")


def test_hidden_messages_are_never_rendered_and_transcript_drops_them() -> None:
    conv = chat()
    shown = replace(conv, messages=[conv.messages[0], conv.messages[2]])
    assert fmt.render(conv, open_response=True) == fmt.render(shown, open_response=True)
    assert "Hey." not in fmt.render(conv)
    assert [m["content"] for m in fmt.to_chat_messages(conv)[1:]] == ["Hi!", "Anyone here?"]
    assert conv.transcript() == Conversation(CHAR, User("Tom", "A sailor."), "A storm.", [
        Message("char", "Hi!"), Message("user", "Anyone here?")])


# --------------------------------------------------------------------------- every conversion

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=(
    "\u2028\u2029\x85")), max_size=30).map(lambda s: s.strip("\n"))
_swipes = st.builds(Swipe, _text, st.none() | st.sampled_from(["user", "header"]),
                    st.none() | st.sampled_from(["stop", "length", "cancelled"]),
                    st.dictionaries(st.sampled_from(["gen_started", "k"]), st.integers(0, 9),
                                    max_size=1))


@st.composite
def chats(draw: st.DrawFn) -> Conversation:
    messages = []
    for _ in range(draw(st.integers(0, 4))):
        swipes = draw(st.lists(_swipes, min_size=1, max_size=3))
        messages.append(Message(
            draw(st.sampled_from(["char", "user"])), length=draw(st.none() | st.sampled_from(
                ["tiny", "long"])), swipes=swipes, swipe_id=draw(st.integers(0, len(swipes) - 1)),
            hidden=draw(st.booleans()), send_date=draw(st.sampled_from(["", "2026-11-27"]))))
    return Conversation(CHAR, User("Tom", draw(st.sampled_from(["", "A sailor."]))),
                        draw(_text.map(lambda s: s.replace("\n", " ").strip())), messages,
                        title=draw(st.sampled_from(["", "first"])), created="2026-11-27")


def _modelled(message: Message) -> Message:
    """A message without ``meta`` (imports keep their record there)."""
    return replace(message, meta={})


@settings(max_examples=40, deadline=None)
@given(chat=chats())
def test_every_conversion_gives_the_same_chat_back(chat: Conversation) -> None:
    assert conv_mod.loads_yaml(conv_mod.dump_yaml(chat)) == chat
    assert list(conv_mod.iter_jsonl(conv_mod.dumps_jsonl([chat]))) == [chat]
    with tempfile.TemporaryDirectory() as folder, ChatStore(Path(folder) / "c.db") as store:
        assert store.load_chat(store.create_chat(chat)) == chat
    back = parse_sillytavern(export_sillytavern(chat))
    assert (back.user.name, back.character.name, back.created) == ("Tom", CHAR.name,
                                                                 chat.created)
    assert [_modelled(m) for m in back.messages] == chat.messages
