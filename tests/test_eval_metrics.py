"""Behaviour metrics on hand-written replies with known answers."""

from __future__ import annotations

import pytest

from limamono.evaluate import intervals as iv
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
    assert s.counts == {"style_compliance": 3, "format_integrity": 4, "impersonation_rate": 1,
                        "speaks_for_user_rate": 0, "thought_rate": 1, "repeat_rate": 0}
    assert s.intervals["impersonation_rate"] == pytest.approx(iv.wilson(1, 4))
    assert s.intervals["format_integrity"] == pytest.approx(iv.wilson(4, 4))
    lo, hi = s.intervals["length_spearman"]
    assert -1 <= lo <= s.length_spearman <= hi <= 1
    assert m.summarize(samples, seed=3).intervals == m.summarize(samples, seed=3).intervals
    assert s.slop_index == 0.0 and s.speaks_for_user_rate == 0.0
    with pytest.raises(ValueError):
        m.summarize([])


def test_targets():
    assert m.meets("thought_rate", 0.5) is True
    assert m.meets("thought_rate", 0.9) is False
    assert m.meets("impersonation_rate", 0.05) is True
    assert m.meets("length_spearman", None) is None
    assert m.meets("distinct_2", 0.3) is None


# --------------------------------------------------------------------------- intervals

@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Reference values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson"), and
    # Newcombe (1998, Statistics in Medicine 17:857) Table I for 81/263: 0.2553-0.3662.
    (0, 10, 0.0, 0.27753279986288926),
    (1, 18, 0.009875190978303083, 0.25757300781872594),
    (5, 10, 0.236593090512564, 0.7634069094874361),
    (18, 18, 0.8241207763533425, 1.0),
    (81, 263, 0.2552885198782742, 0.36620957698280004),
])
def test_wilson_against_known_values(k, n, low, high):
    assert iv.wilson(k, n) == pytest.approx((low, high), abs=1e-12)


def test_wilson_rejects_impossible_counts():
    for k, n in [(0, 0), (3, 2), (-1, 5)]:
        with pytest.raises(ValueError, match="wilson"):
            iv.wilson(k, n)


def test_replies_needed_for_a_five_point_impersonation_interval():
    # Half-width at an observed 5 %: 0.05031 with 82 replies, 0.04997 with 83.
    assert iv.wilson_half_width(0.05, 82) == pytest.approx(0.050311, abs=1e-6)
    assert iv.wilson_half_width(0.05, 83) == pytest.approx(0.049974, abs=1e-6)
    assert iv.trials_for_half_width(0.05, 0.05) == 83
    # At 50 % the familiar 1.96 * sqrt(.25 / n) rule gives 385 for ±5 points; Wilson: 381.
    assert iv.trials_for_half_width(0.5, 0.05) == 381


def test_quantile_matches_numpy_linear():
    import numpy as np

    values = [1.0, 2.0, 4.0, 8.0, 9.5]
    for q in (0.0, 0.025, 0.3, 0.5, 0.975, 1.0):
        assert iv.quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


def test_spearman_bootstrap_interval():
    # A perfectly monotone relation stays perfect in every resample that has two values.
    xs, ys = [0, 1, 2, 3, 4, 5, 6, 7], [3, 5, 8, 13, 21, 34, 55, 89]
    assert m.spearman_interval(xs, ys, seed=1) == (1.0, 1.0)
    noisy_x = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2]
    noisy_y = [5, 9, 7, 12, 11, 20, 8, 6, 15, 10, 14, 9]
    first = m.spearman_interval(noisy_x, noisy_y, seed=7)
    assert first == m.spearman_interval(noisy_x, noisy_y, seed=7)  # seeded
    assert first != m.spearman_interval(noisy_x, noisy_y, seed=8)
    rho = m.spearman(noisy_x, noisy_y)
    assert first[0] < rho < first[1]
    assert m.spearman_interval([1, 1, 1], [1, 2, 3], seed=0) is None  # never defined


@pytest.mark.parametrize(("interval", "target", "expected"), [
    ((0.92, 0.99), (0.90, None), "meets"),
    ((0.70, 0.89), (0.90, None), "misses"),
    ((0.85, 0.95), (0.90, None), "cannot tell"),
    ((0.0, 0.04), (None, 0.05), "meets"),
    ((0.01, 0.26), (None, 0.05), "cannot tell"),   # 1 impersonation in 18 replies
    ((0.06, 0.20), (None, 0.05), "misses"),
    ((0.30, 0.70), (0.20, 0.80), "meets"),
    ((0.10, 0.30), (0.20, 0.80), "cannot tell"),
    ((0.81, 0.95), (0.20, 0.80), "misses"),
    (None, (0.5, None), "cannot tell"),
])
def test_verdict_from_the_interval(interval, target, expected):
    assert iv.verdict(interval, target) == expected


def test_speaking_for_the_user_and_slop_in_replies():
    c = check(" Mira waved.\nTom shivered. It sent shivers down his spine.")
    assert c.speaks_for_user and not c.impersonation
    # "sent shivers down" and "shivers down * spine" (2 each) overlap: counted once
    assert c.slop == 2.0
    s = m.summarize([m.Sample("long", " Mira waved.\nTom shivered. It sent shivers down his "
                              "spine.", c)])
    assert s.speaks_for_user_rate == 1.0
    assert s.slop_index == pytest.approx(2 * 1000 / 10)
    assert m.judge(s)["impersonation_rate"] == "cannot tell"  # one reply: [0, 79 %]


def test_wilson_ends_are_exact():
    """0 of n and n of n give exactly 0 and 1 at the ends (floating point gave 7e-18 and
    0.9999999999999999 at n = 48, and the report's error bars then went negative)."""
    from limamono.evaluate.intervals import wilson

    for n in range(1, 300):
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
        low, high = wilson(n // 3, n)
        assert low <= n // 3 / n <= high
