"""Behaviour metrics on hand-written replies with known answers."""

from __future__ import annotations

import pytest

from limamono.evaluate import metrics as m


def check(reply: str, **kw) -> m.ReplyCheck:
    return m.check_reply(reply, char_name="Mira", user_name="Tom", **kw)


def test_a_clean_reply_passes_everything():
    c = check(' Mira smiled. "Come in." _He looks frozen._ *creak* The door swung wide.')
    assert c == m.ReplyCheck(words=12, style_ok=True, format_ok=True, impersonation=False,
                             has_thought=True, repeats_earlier=False, style_rules=())


def test_style_errors_are_named():
    c = check(" Mira smiled. \u201cCome in.\u201d")
    assert not c.style_ok and c.style_rules == ("LM001",)
    c = check(" Mira smiled. _She wondered")
    assert not c.style_ok and "LM011" in c.style_rules
    assert not c.has_thought  # an unclosed thought is not a thought


def test_truncated_replies_are_linted_up_to_their_last_sentence():
    reply = ' Mira smiled. "Come in," she said, "and sit by the'
    assert not check(reply).style_ok
    assert check(reply, truncated=True).style_ok
    assert m.complete_part("One. Two! Three") == "One. Two!"


@pytest.mark.parametrize(("reply", "ok"), [
    (" Mira nodded.", True),
    ("Mira nodded.", False),            # glued to the "Mira:" prefix
    (" Mira nodded.\n\n### Input:", False),
    (" Mira nodded. (length = long)", False),
    (" Mira nodded.\nMira: And again.", False),
    ("   ", False),
])
def test_format_integrity(reply, ok):
    assert check(reply).format_ok is ok


@pytest.mark.parametrize(("reply", "stop", "expected"), [
    (" Mira nodded.", None, False),
    (" Mira nodded.", "\nTom:", True),     # stopped where Tom's line began
    (" Mira nodded.", "###", False),       # a header is the normal end of a turn
    (" Mira nodded.\nTom: Thanks!", None, True),
])
def test_impersonation(reply, stop, expected):
    assert check(reply, stop_string=stop).impersonation is expected


def test_verbatim_repetition_of_history_or_itself():
    history = ["The rain hammered the old glass all night."]
    assert check(" The rain hammered the old glass all night.", history=history).repeats_earlier
    assert not check(" The rain hammered the glass.", history=history).repeats_earlier
    twice = " She set the kettle down. She set the kettle down."
    assert check(twice).repeats_earlier
    assert not check(" Yes. Yes.").repeats_earlier  # too short to count


def test_ranks_and_spearman_exact():
    assert m.ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert m.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert m.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # ranks x = 1,2,3 ; y = 2,1,3 -> rho = 1 - 6*2/(3*8) = 0.5
    assert m.spearman([1, 2, 3], [20, 10, 30]) == pytest.approx(0.5)
    assert m.spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        m.spearman([1, 2], [1])


def test_distinct_2():
    assert m.distinct_n(["a b a b"]) == pytest.approx(2 / 3)
    assert m.distinct_n(["a b", "a b"]) == pytest.approx(1 / 2)
    assert m.distinct_n(["a"]) is None


def test_summarize():
    def sample(label, reply, **kw):
        return m.Sample(label, reply, check(reply, **kw))
    samples = [
        sample("short", " Mira nodded. _Good._"),
        sample("long", ' Mira smiled and set the kettle on the stove. "Tea?"'),
        sample("huge", " Mira talked for a very long time about ships and rain and lamps "
               "and the old keeper who had taught her everything.", stop_string="\nTom:"),
        sample("huge", " Mira \u201cwaved\u201d at the long line of boats in the harbour "
               "below the light."),
    ]
    s = m.summarize(samples)
    assert s.samples == 4
    assert s.style_compliance == 0.75
    assert s.format_integrity == 1.0
    assert s.impersonation_rate == 0.25
    assert s.thought_rate == 0.25
    assert s.median_words == {"short": 3.0, "long": 10.0, "huge": 18.0}
    assert s.length_spearman == pytest.approx(m.spearman([2, 4, 6, 6], [3, 10, 22, 14]))
    with pytest.raises(ValueError):
        m.summarize([])


def test_targets():
    assert m.meets("thought_rate", 0.5) is True
    assert m.meets("thought_rate", 0.9) is False
    assert m.meets("impersonation_rate", 0.05) is True
    assert m.meets("length_spearman", None) is None
    assert m.meets("distinct_2", 0.3) is None
