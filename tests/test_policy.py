"""The one prompt policy: labels per named policy, and fitting that keeps what a reply answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core import policy as pol
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.core.policy import ContextOverflowError

ASSETS = Path(__file__).parent / "assets"
TRIGGER = fmt.TRIGGERS["card"]
HEAD = f"{TRIGGER}\n\n### Instruction:\nMira\nScenario: A storm."


def chars(text: str) -> int:
    """A token counter with exact, easy figures: one token per character."""
    return len(text)


def mira(*messages: Message) -> Conversation:
    return Conversation(Character("Mira"), User("Tom"), "A storm.", list(messages))


FIVE = (Message("char", "Who is there?"),  # 3 words: micro
        Message("user", " ".join(["word"] * 12)),  # 12 words: tiny
        Message("char", "Come in.", "massive"),  # its own label wins
        Message("user", "Thanks."),
        Message("char", "Sit."))


def test_training_labels_every_turn_from_its_words_and_the_open_reply_long():
    text = pol.get_policy("training").render(mira(*FIVE[:4]))
    assert text == (
        f"{HEAD}\n\n### Response: (length = micro)\nMira: Who is there?"
        f"\n\n### Input: (length = tiny)\nTom: {' '.join(['word'] * 12)}"
        "\n\n### Response: (length = massive)\nMira: Come in."
        "\n\n### Input: (length = micro)\nTom: Thanks."
        "\n\n### Response: (length = long)\nMira:")


def test_training_requested_input_label_applies_to_the_newest_user_turn_only():
    text = pol.get_policy("training").render(mira(*FIVE[:4]), input_length="short",
                                             response_length="huge")
    assert "### Input: (length = tiny)\nTom: word" in text
    assert "### Input: (length = short)\nTom: Thanks." in text
    assert text.endswith("### Response: (length = huge)\nMira:")


def test_sillytavern_matches_the_exported_presets():
    text = pol.get_policy("sillytavern").render(mira(*FIVE[:4]))
    assert text == (
        f"{HEAD}\n\n### Response:\nMira: Who is there?"
        f"\n\n### Input: (length = tiny)\nTom: {' '.join(['word'] * 12)}"
        "\n\n### Response: (length = massive)\nMira: Come in."
        "\n\n### Input: (length = tiny)\nTom: Thanks."
        "\n\n### Response: (length = long)\nMira:")


def test_sillytavern_policy_renders_what_a_real_sillytavern_sent(shared_dir):
    conv = conv_mod.load_yaml(ASSETS / "edda.yaml")
    captured = shared_dir / "testdata/sillytavern/limamono-presets/captured"
    assert pol.get_policy("sillytavern").render(conv) == (
        captured / "kcpp_Limamono_turn2.txt").read_text()


def test_continuing_labels_the_last_reply_with_the_response_label():
    text = pol.get_policy("training").render(mira(*FIVE), open_response=False,
                                             continuing=True, response_length="huge")
    assert text.endswith("### Response: (length = huge)\nMira: Sit.")


def test_custom_bounds_and_trigger():
    policy = pol.get_policy("training", trigger="preset", length_bounds=(1, 2, 3, 4, 5, 6))
    text = policy.render(mira(Message("char", "Who is there?")))
    assert text.startswith(fmt.TRIGGERS["preset"])
    assert "### Response: (length = short)\nMira: Who" in text


@pytest.mark.parametrize("name,bounds,trigger", [("chat", fmt.DEFAULT_LENGTH_BOUNDS, "card"),
                                                 ("training", (3, 2, 1, 4, 5, 6), "card"),
                                                 ("training", fmt.DEFAULT_LENGTH_BOUNDS, "")])
def test_bad_policy_values_are_refused(name, bounds, trigger):
    with pytest.raises(ValueError):
        pol.get_policy(name, trigger, bounds)


# --------------------------------------------------------------------------- fitting

def test_a_prompt_that_fits_is_sent_whole():
    conv = mira(*FIVE[:4])
    fitted = pol.get_policy().fit(conv, chars, context=10_000, max_new_tokens=100)
    assert fitted.text == pol.get_policy().render(conv)
    assert (fitted.dropped, fitted.cut) == (0, False)
    assert fitted.tokens == fitted.tokens_before == len(fitted.text)


def test_fit_drops_the_oldest_whole_turns_first():
    policy = pol.get_policy()
    conv = mira(*FIVE[:4])
    whole = policy.render(conv)
    without_two = policy.render(mira(*FIVE[2:4]))
    # The budget is exactly the prompt without its two oldest turns: labels do not change.
    labelled_tail = whole[:len(HEAD)] + whole[whole.index("\n\n### Response: (length = massive)"):]
    assert labelled_tail == without_two
    fitted = policy.fit(conv, chars, context=len(labelled_tail) + 50, max_new_tokens=50)
    assert fitted.text == labelled_tail
    assert (fitted.dropped, fitted.tokens, fitted.tokens_before, fitted.budget) == (
        2, len(labelled_tail), len(whole), len(labelled_tail))
    assert fitted.describe() == (f"prompt cut to fit: {len(whole)} -> {len(labelled_tail)} "
                                 f"tokens (budget {len(labelled_tail)}), 2 oldest turn(s) "
                                 "dropped")


def test_fit_never_drops_the_newest_user_turn_or_the_open_header():
    policy = pol.get_policy()
    conv = mira(*FIVE[:4])
    essential = HEAD + "\n\n### Input: (length = micro)\nTom: Thanks." \
        "\n\n### Response: (length = long)\nMira:"
    fitted = policy.fit(conv, chars, context=len(essential) + 8, max_new_tokens=8)
    assert (fitted.text, fitted.dropped) == (essential, 3)
    with pytest.raises(pol.PromptTooLongError) as caught:
        policy.fit(conv, chars, context=len(essential) + 7, max_new_tokens=8)
    assert isinstance(caught.value, ContextOverflowError)
    assert caught.value.needed == len(essential)
    assert str(caught.value) == (
        f"the prompt needs {len(essential)} tokens even with every older turn left out (the "
        "Instruction block, the newest user turn and the open reply header), but only "
        f"{len(essential) - 1} fit (context {len(essential) + 7} minus 8 for the reply); fix: "
        "shorten the character sheet or the newest message, lower the reply length "
        "(max_tokens), or raise the context")


def test_fit_keeps_everything_after_the_newest_user_turn():
    # Generating a second reply in a row: the reply after the newest user turn stays too.
    policy = pol.get_policy()
    essential = HEAD + "\n\n### Input: (length = micro)\nTom: Thanks." \
        "\n\n### Response: (length = micro)\nMira: Sit." \
        "\n\n### Response: (length = long)\nMira:"
    fitted = policy.fit(mira(*FIVE), chars, context=len(essential) + 1, max_new_tokens=1)
    assert (fitted.text, fitted.dropped) == (essential, 3)
    with pytest.raises(pol.PromptTooLongError):
        policy.fit(mira(*FIVE), chars, context=len(essential), max_new_tokens=1)


def test_fit_with_no_user_turn_may_drop_every_message():
    policy = pol.get_policy()
    conv = mira(Message("char", "A long greeting. " * 20))
    bare = HEAD + "\n\n### Response: (length = long)\nMira:"
    fitted = policy.fit(conv, chars, context=len(bare) + 1, max_new_tokens=1)
    assert (fitted.text, fitted.dropped) == (bare, 1)


def test_fit_keeps_an_earlier_cut_and_drops_in_steps():
    policy = pol.get_policy()
    conv = mira(*FIVE[:4])
    fitted = policy.fit(conv, chars, context=10_000, max_new_tokens=1, at_least=1)
    assert fitted.dropped == 1  # kept although everything would fit: the prefix stays put
    essential_plus = policy.fit(conv, chars, context=10_000, max_new_tokens=1, at_least=9)
    assert essential_plus.dropped == 3  # never past the newest user turn
    whole = policy.render(conv)
    stepped = policy.fit(conv, chars, context=len(whole) - 1 + 1, max_new_tokens=1, step=2)
    assert stepped.dropped == 2  # one turn would do, but the cut moves two at a time


def test_fit_text_keeps_the_sent_bytes_and_the_newest_input():
    policy = pol.get_policy("sillytavern")
    prompt = policy.render(mira(*FIVE[:4]))
    essential = HEAD + "\n\n### Input: (length = tiny)\nTom: Thanks." \
        "\n\n### Response: (length = long)\nMira:"
    fitted = pol.fit_text(prompt, chars, context=len(essential) + 4, max_new_tokens=4)
    assert fitted is not None and (fitted.text, fitted.dropped) == (essential, 3)
    with pytest.raises(pol.PromptTooLongError):
        pol.fit_text(prompt, chars, context=len(essential) + 3, max_new_tokens=4)
    assert pol.fit_text("just some text", chars, 10, 2) is None
    whole = pol.fit_text(prompt, chars, context=len(prompt) + 1, max_new_tokens=1)
    assert whole is not None and (whole.text, whole.dropped) == (prompt, 0)


def test_fit_text_of_a_continued_reply_keeps_the_last_block():
    conv = mira(Message("char", "Hello there. " * 10), Message("char", "More."))
    prompt = pol.get_policy().render(conv, open_response=False)
    last = "\n\n### Response: (length = micro)\nMira: More."
    fitted = pol.fit_text(prompt, chars, context=len(HEAD + last), max_new_tokens=0)
    assert fitted is not None and fitted.text == HEAD + last


def test_labels_are_decided_before_turns_are_left_out():
    # The newest user turn keeps its requested label whatever is dropped before it.
    policy = pol.get_policy()
    conv = mira(*FIVE[:4])
    full = policy.fit(conv, chars, 10_000, 1, input_length="short")
    cut = policy.fit(conv, chars, 10_000, 1, input_length="short", at_least=2)
    assert full.text.endswith(cut.text[len(HEAD):])
    assert replace(conv).messages == conv.messages  # the input is not modified


def test_hidden_messages_are_never_rendered_nor_counted():
    hidden = Message("user", "an aside nobody sees", hidden=True)
    policy = pol.get_policy()
    conv = mira(*FIVE[:3], hidden)
    assert policy.render(conv) == policy.render(mira(*FIVE[:3]))
    essential = HEAD + "\n\n### Input: (length = tiny)\nTom: " + " ".join(["word"] * 12) \
        + "\n\n### Response: (length = massive)\nMira: Come in." \
        + "\n\n### Response: (length = long)\nMira:"
    fitted = policy.fit(conv, chars, context=len(essential) + 1, max_new_tokens=1)
    assert (fitted.text, fitted.dropped) == (essential, 1)


def test_token_counter_counts_what_the_engine_feeds():
    class Plain:
        def tokenize(self, text):
            return list(text)

    class WithBos(Plain):
        def prompt_ids(self, text):
            return [1, *self.tokenize(text)]

    assert pol.token_counter(Plain())("abc") == 3
    assert pol.token_counter(WithBos())("abc") == 4  # BOS counts against the budget
