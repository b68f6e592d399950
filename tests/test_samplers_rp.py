"""The roleplay samplers: DRY, XTC, top-nσ, min_keep, quadratic smoothing, dynamic
temperature, mirostat, logit bias and token bans, in both dialects, on hand-made logits and
token histories, plus the KoboldCpp rep-pen window and the textgen TFS zero-curvature parity
(issue 11 items 18-19) and the wire mapping SillyTavern relies on.

Expected values are worked by hand from each backend's published code: KoboldCpp
``gpttype_adapter.cpp`` (``sample_dry``, ``sample_xtc``, ``sample_entropy``,
``sample_temperature``, ``sample_top_n_sigma``, ``sample_token_mirostat[_v2]``,
``sample_rep_pen``, ``SampleLogits``) and text-generation-webui ``modules/sampler_hijack.py``
(``DRYLogitsProcessor``, ``XTCLogitsWarper``, ``TopNSigmaLogitsWarper``,
``QuadraticSamplingLogitsWarper``, ``DynamicTemperatureLogitsWarper``,
``MirostatLogitsWarper``, ``TailFreeLogitsWarper``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from limamono.samplers import (
    SamplerError,
    SamplerSettings,
    get_preset,
    koboldcpp_repetition_penalty,
    make_sampler,
    settings_from_fields,
    tail_free,
)
from limamono.samplers.chain import build_stages
from limamono.samplers.dry import dry, dry_penalties
from limamono.samplers.shaping import (
    Mirostat,
    dynamic_temperature,
    logit_bias,
    quadratic_sampling,
    top_n_sigma,
    xtc,
)
from limamono.samplers.vocab import Vocabulary

# A toy tokenizer: greedy longest match over these pieces (id = index).
PIECES = ["<eos>", "a", "b", "c", "d", "x", "y", "\n", ":", '"', "*", " the", "ab", "x:",
          "q", "z"]


def encode(text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        best = max((p for p in PIECES[1:] if text.startswith(p, i)), key=len)
        ids.append(PIECES.index(best))
        i += len(best)
    return ids


VOCAB = Vocabulary(len(PIECES), encode, PIECES, frozenset({0}))
A, B, C, D, X, Y, NL, COLON = 1, 2, 3, 4, 5, 6, 7, 8


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().squeeze(1).tolist()


def ctx(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------------------- DRY


@pytest.mark.parametrize("allowed, expected", [(2, 0.8 * 1.75), (3, 0.8), (4, None)])
def test_dry_repeat_below_at_and_above_the_allowed_length(allowed: int, expected) -> None:
    """a b c d a b c: the repeat "a b c" (length 3) would continue with d.

    text-generation-webui DRYLogitsProcessor and KoboldCpp sample_dry agree here:
    penalty = multiplier * base ** (3 - allowed), none when 3 < allowed.
    """
    history = ctx(A, B, C, D, A, B, C)
    for dialect in ("textgen", "koboldcpp"):
        out = dry(history, torch.zeros(16), 0.8, 1.75, allowed, 0, {}, dialect)
        want = torch.zeros(16)
        if expected is not None:
            want[D] = -expected
        assert out.tolist() == pytest.approx(want.tolist()), dialect


def test_dry_longest_repeat_wins_and_window_limits_it() -> None:
    """Two earlier "c"s: after "a b c" comes d (length 3), after "b c" comes x (length 2)."""
    history = ctx(A, B, C, D, Y, B, C, X, A, B, C)
    tokens, amounts = dry_penalties(history.numpy(), {}, 1.0, 2.0, 2, "textgen")
    assert dict(zip(tokens.tolist(), amounts.tolist(), strict=True)) == {D: 2.0, X: 1.0}
    # a window of the last 6 tokens (c x a b c plus one) sees only "b c" -> x... and
    # no longer the first "a b c d"
    out = dry(history, torch.zeros(16), 1.0, 2.0, 2, 6, {}, "textgen")
    assert out[D] == 0.0 and out[X] == -1.0


def test_dry_breaker_inside_the_sequence() -> None:
    """a : c d a : c with ":" a breaker: the repeat stops at it (length 1 < allowed 2).

    textgen counts the tokens after the last breaker (1) and penalises at allowed 1;
    KoboldCpp returns early when that limit is not above allowed_length (1 <= 1).
    """
    history = ctx(A, COLON, C, D, A, COLON, C)
    textgen = VOCAB.textgen_breakers((":",))
    kobold = VOCAB.koboldcpp_breakers((":",))
    assert dry(history, torch.zeros(16), 0.8, 1.75, 2, 0, textgen, "textgen")[D] == 0.0
    assert dry(history, torch.zeros(16), 0.8, 1.75, 1, 0, textgen, "textgen")[D] == \
        pytest.approx(-0.8)
    assert dry(history, torch.zeros(16), 0.8, 1.75, 1, 0, kobold, "koboldcpp")[D] == 0.0
    # without the breaker the whole "a : c" repeats: 0.8 * 1.75 ** (3 - 2)
    assert dry(history, torch.zeros(16), 0.8, 1.75, 2, 0, {}, "koboldcpp")[D] == \
        pytest.approx(-1.4)


def test_dry_textgen_never_penalises_a_breaker_koboldcpp_does() -> None:
    history = ctx(A, B, C, NL, A, B, C)
    table = {NL: ((),)}
    assert dry(history, torch.zeros(16), 1.0, 2.0, 2, 0, table, "textgen")[NL] == 0.0
    assert dry(history, torch.zeros(16), 1.0, 2.0, 2, 0, table, "koboldcpp")[NL] == -2.0
    # textgen: nothing at all when the last token is a breaker
    assert dry(ctx(A, NL, A, NL), torch.zeros(16), 1.0, 2.0, 1, 0, table, "textgen").eq(0).all()


def test_dry_multi_token_breakers_koboldcpp() -> None:
    """KoboldCpp: "xy" is no single token; "x" (and "x:"? no: "x:" does not end in "x")
    heads the tail [y]. The repeat a x y b c ... is limited to the tokens after "x y"."""
    table = VOCAB.koboldcpp_breakers(("xy",))
    assert table == {X: ((Y,),)}
    history = ctx(A, X, Y, B, C, D, A, X, Y, B, C)
    out = dry(history, torch.zeros(16), 1.0, 2.0, 1, 0, table, "koboldcpp")
    assert out[D] == -2.0  # limit 2 ("b c"): 1 * 2 ** (2 - 1)
    free = dry(history, torch.zeros(16), 1.0, 2.0, 1, 0, {}, "koboldcpp")
    assert free[D] == -16.0  # no breaker: "a x y b c" has length 5: 2 ** 4
    # a token containing the whole breaker is a head on its own; "z" overlaps nothing
    assert VOCAB.koboldcpp_breakers((":",))[COLON] == ((),)
    assert VOCAB.koboldcpp_breakers((":",))[PIECES.index("x:")] == ((),)
    # text-generation-webui takes the last token of "a" + breaker
    assert VOCAB.textgen_breakers(("xy", "\n")) == {Y: ((),), NL: ((),)}


def test_dry_koboldcpp_clamps_the_exponent_textgen_caps_at_50() -> None:
    run = ctx(*([A] * 300))
    tokens, amounts = dry_penalties(run.numpy(), {}, 1.0, 1.75, 2, "textgen")
    assert tokens.tolist() == [A] and amounts[0] == pytest.approx(1.75 ** 48)
    tokens, amounts = dry_penalties(run.numpy(), {}, 1.0, 1.75, 2, "koboldcpp")
    max_exponent = int(88.7228391 / math.log(1.75))
    assert amounts[0] == pytest.approx(1.75 ** max_exponent)


def test_dry_cost_is_linear_in_the_window() -> None:
    """A 20k-token window of one repeated token (the worst case for naive rescans)."""
    import time

    run = np.zeros(20000, dtype=np.int64)
    start = time.perf_counter()
    dry_penalties(run, {}, 1.0, 1.75, 2, "koboldcpp")
    dry_penalties(run, {}, 1.0, 1.75, 2, "textgen")
    assert time.perf_counter() - start < 2.0


def test_vocabulary_tables_are_bounded() -> None:
    from limamono.samplers.vocab import CACHE_SIZE

    vocab = Vocabulary(len(PIECES), encode, PIECES)
    for i in range(CACHE_SIZE + 5):
        vocab.textgen_breakers((":" * (i + 1),))
    assert len(vocab._cache) == CACHE_SIZE


def test_dry_needs_the_vocabulary_for_its_breakers() -> None:
    with pytest.raises(SamplerError, match="vocabulary") as info:
        make_sampler(SamplerSettings(dry_multiplier=0.8))
    assert info.value.field == "dry_sequence_breakers"
    assert make_sampler(SamplerSettings(dry_multiplier=0.8, dry_sequence_breakers=()))


# ------------------------------------------------------------------------------- XTC


def test_xtc_removes_the_top_choices_but_the_least_likely() -> None:
    """p = .4 .3 .2 .1, threshold .15: .4 and .3 go, .2 stays (both sources)."""
    x = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    assert kept(xtc(x, 0.15)) == [2, 3]
    assert kept(xtc(x, 0.35)) == [0, 1, 2, 3]  # one token above: nothing happens
    # textgen: if newline or EOS would go, XTC leaves the scores alone
    assert kept(xtc(x, 0.15, protected=[1])) == [0, 1, 2, 3]
    assert kept(xtc(x, 0.15, protected=[3])) == [2, 3]


def test_xtc_in_the_chain_per_dialect() -> None:
    """In the toy vocabulary EOS is id 0 and the newline id 7."""
    x = torch.tensor([0.0, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0]).log()
    base = SamplerSettings(xtc_probability=1.0, xtc_threshold=0.15, seed=0,
                           dry_sequence_breakers=())
    for dialect in ("textgen", "koboldcpp"):
        out = make_sampler(base.replace(dialect=dialect), VOCAB).process(ctx(), x)
        assert kept(out) == [3, 4], dialect
    # textgen leaves the scores alone when EOS (or the newline) would be removed
    eos_top = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0]).log()
    assert kept(make_sampler(base, VOCAB).process(ctx(), eos_top)) == [0, 1, 2, 3]
    assert kept(make_sampler(base.replace(dialect="koboldcpp"), VOCAB)
                .process(ctx(), eos_top)) == [2, 3]
    newline_top = torch.tensor([0.0, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.4]).log()
    assert kept(make_sampler(base, VOCAB).process(ctx(), newline_top)) == [1, 2, 3, 7]
    eos_least = torch.tensor([0.2, 0.4, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0]).log()
    assert kept(make_sampler(base, VOCAB).process(ctx(), eos_least)) == [0, 3]
    # KoboldCpp ignores a threshold above 0.5 (only its 3000 cut is left); probability 0
    # is off in both
    assert len(build_stages(base.replace(dialect="koboldcpp", xtc_threshold=0.6))) == 1
    assert build_stages(base.replace(xtc_probability=0.0)) == []


def test_xtc_dice() -> None:
    x = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    s = SamplerSettings(xtc_probability=0.5, xtc_threshold=0.15, seed=1,
                        dry_sequence_breakers=())
    sampler = make_sampler(s)
    outcomes = {tuple(kept(sampler.process(ctx(), x))) for _ in range(40)}
    assert outcomes == {(0, 1, 2, 3), (2, 3)}


# ----------------------------------------------------------------------- top-n sigma


def test_top_n_sigma_per_dialect() -> None:
    """logits 2 1 0 -1: KoboldCpp's population std is sqrt(1.25) = 1.118, textgen's sample
    std sqrt(5/3) = 1.291. n = 1.6: thresholds 0.211 and -0.066."""
    x = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert kept(top_n_sigma(x, 1.0, "koboldcpp")) == kept(top_n_sigma(x, 1.0, "textgen")) == [0, 1]
    assert kept(top_n_sigma(x, 1.6, "koboldcpp")) == [0, 1]
    assert kept(top_n_sigma(x, 1.6, "textgen")) == [0, 1, 2]
    # textgen counts removed tokens as 0 in its std (over the whole vocabulary)
    # textgen counts removed tokens as 0 in its std over the vocabulary: [2, 1, 0, 0] has
    # std 0.957, threshold 0.564 at n = 1.5; KoboldCpp's std of [2, 1] is 0.5: threshold 1.25
    masked = torch.tensor([2.0, 1.0, -math.inf, -math.inf])
    assert kept(top_n_sigma(masked, 1.5, "textgen")) == [0, 1]
    assert kept(top_n_sigma(masked, 1.5, "koboldcpp")) == [0]


def test_top_n_sigma_in_koboldcpp_runs_after_temperature() -> None:
    x = torch.tensor([2.0, 1.0, 0.0, -1.0])
    s = SamplerSettings(dialect="koboldcpp", top_n_sigma=1.0, temperature=0.5)
    assert kept(make_sampler(s).process(ctx(), x)) == [0, 1]


# --------------------------------------------------------------------------- min_keep


def test_min_keep_floors_every_truncation() -> None:
    x = torch.tensor([0.7, 0.2, 0.06, 0.04]).log()
    for dialect in ("textgen", "koboldcpp"):
        base = SamplerSettings(dialect=dialect)
        assert kept(make_sampler(base.replace(top_k=1, min_keep=3)).process(ctx(), x)) == \
            [0, 1, 2]
        assert kept(make_sampler(base.replace(top_p=0.5, min_keep=2)).process(ctx(), x)) == \
            [0, 1]
        assert kept(make_sampler(base.replace(min_p=0.9, min_keep=2)).process(ctx(), x)) == \
            [0, 1]
        # temperature 0 stays greedy
        assert kept(make_sampler(base.replace(temperature=0.0, min_keep=3))
                    .process(ctx(), x)) == [0]
    assert kept(make_sampler(SamplerSettings(typical=0.1, min_keep=3)).process(ctx(), x)) \
        == [0, 1, 2]


# ---------------------------------------------------------------- quadratic, dynatemp


def test_quadratic_smoothing_with_curve() -> None:
    x = torch.tensor([0.0, -1.0, -2.0, -math.inf])
    assert quadratic_sampling(x, 0.5).tolist() == [0.0, -0.5, -2.0, -math.inf]
    # curve 2: k = s = 0.5: -0.25 d^2 + 0.25 d^3
    assert quadratic_sampling(x, 0.5, 2.0).tolist() == [0.0, -0.5, -3.0, -math.inf]
    # both dialects apply it (KoboldCpp inside its temperature step)
    for dialect in ("textgen", "koboldcpp"):
        s = SamplerSettings(smoothing_factor=0.5, dialect=dialect)
        out = make_sampler(s).process(ctx(), x[:3])
        assert out.tolist() == pytest.approx([0.0, -0.5, -2.0])


def test_dynamic_temperature_both_dialects() -> None:
    """p = .7 .1 .1 .1: H = 0.94045, H_max = ln 4, normalised 0.67839;
    T = 0.5 + (1.5 - 0.5) * 0.67839 = 1.17839."""
    x = torch.tensor([0.7, 0.1, 0.1, 0.1]).log()
    expected = x / 1.1783932
    assert dynamic_temperature(x, 0.5, 1.5).tolist() == pytest.approx(expected.tolist(), 1e-5)
    textgen = SamplerSettings(dynamic_temperature=True, dynatemp_low=0.5, dynatemp_high=1.5)
    kobold = SamplerSettings(dialect="koboldcpp", temperature=1.0, dynatemp_range=0.5)
    for s in (textgen, kobold):
        assert make_sampler(s).process(ctx(), x).tolist() == \
            pytest.approx(expected.tolist(), 1e-5)
    # uniform: normalised entropy 1, T = high; exponent 2 on .67839 -> T = 0.5 + 0.46022
    assert dynamic_temperature(torch.zeros(4), 0.5, 1.5).tolist() == [0.0] * 4
    assert dynamic_temperature(x, 0.5, 1.5, 2.0).tolist() == \
        pytest.approx((x / (0.5 + 0.67839 ** 2)).tolist(), 1e-4)
    # a zero temperature keeps the top token instead of dividing by zero
    certain = torch.tensor([0.0, -200.0, -200.0])
    assert kept(dynamic_temperature(certain, 0.0, 1.0)) == [0]


# --------------------------------------------------------------------------- mirostat


def test_mirostat_v2_state_is_per_generation() -> None:
    """p = .5 .25 .125 .125, tau .5: mu = 1; only the top token has surprise <= 1, so it is
    drawn with surprise 0 and mu += 0.1 * 0.5 each step (both sources' v2)."""
    x = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    s = SamplerSettings(mirostat=2, mirostat_tau=0.5, mirostat_eta=0.1, seed=0)
    first = make_sampler(s)
    assert first.sample(ctx(), x) == 0
    assert first.mirostat.mu == pytest.approx(1.05)
    first.sample(ctx(), x)
    assert first.mirostat.mu == pytest.approx(1.10)
    assert make_sampler(s).mirostat.mu == 1.0  # a new generation starts afresh
    # tau 1.5: mu 3 keeps all four; tau 1: mu 2 keeps .5 and .25 (renormalised 2/3, 1/3)
    wide = Mirostat(2, 1.0, 0.1, 4)
    draws = {wide.choose(x, torch.Generator().manual_seed(i)) for i in range(30)}
    assert draws == {0, 1}


def test_mirostat_v1_keeps_the_zipf_k() -> None:
    """An exact Zipf distribution with s = 2 gives s_hat = 2; with N = 10 and mu = 4:
    k = (1 * 2**4 / (1 - 10**-1)) ** (1/2) = 4.21 -> the top 4 tokens (KoboldCpp v1)."""
    ranks = torch.arange(1, 11, dtype=torch.float64)
    probs = (1 / ranks ** 2) / (1 / ranks ** 2).sum()
    assert Mirostat(1, 2.0, 0.1, 10)._keep_v1(probs) == 4
    draws = {Mirostat(1, 2.0, 0.1, 10).choose(probs.log().float(),
                                              torch.Generator().manual_seed(i))
             for i in range(60)}
    assert draws == {0, 1, 2, 3}


def test_mirostat_in_both_chains() -> None:
    x = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    for dialect in ("textgen", "koboldcpp"):
        s = SamplerSettings(mirostat=2, mirostat_tau=0.5, dialect=dialect, top_k=2)
        assert len(kept(make_sampler(s).process(ctx(), x))) == 1


# -------------------------------------------------------------- logit bias and bans


def test_logit_bias_shapes_and_range() -> None:
    x = torch.zeros(4)
    assert logit_bias(x, {"2": 5, 3: -100}).tolist() == [0.0, 0.0, 5.0, -100.0]
    s = settings_from_fields({"logit_bias": {"2": 5.0, "1": -1}}, SamplerSettings(), "textgen")
    assert s.logit_bias == ((1, -1.0), (2, 5.0))
    for shape in ([[2, 5]], [{"key": 2, "value": 5}], [{"token_id": "2", "bias": 5}]):
        assert settings_from_fields({"logit_bias": shape}, SamplerSettings(),
                                    "koboldcpp").logit_bias == ((2, 5.0),)
    assert make_sampler(s).process(ctx(), x).tolist() == [0.0, -1.0, 5.0, 0.0]
    with pytest.raises(SamplerError, match="out of range; this model's ids are 0-3") as info:
        make_sampler(SamplerSettings(logit_bias=((7, 1.0),))).process(ctx(), x)
    assert info.value.field == "logit_bias[7]"
    with pytest.raises(SamplerError) as info:
        make_sampler(SamplerSettings(logit_bias=((7, 1.0),)), VOCAB.__class__(
            4, encode, PIECES[:4]))
    assert info.value.field == "logit_bias[7]"
    for bad, field in (({"x": 1}, "logit_bias['x']"), ({"1": 101}, "logit_bias['1']"),
                       ("no", "logit_bias"), ({"-1": 2}, "logit_bias['-1']")):
        with pytest.raises(SamplerError) as info:
            settings_from_fields({"logit_bias": bad}, SamplerSettings(), "textgen")
        assert info.value.field == field


def test_custom_token_bans() -> None:
    s = settings_from_fields({"custom_token_bans": "1, 3"}, SamplerSettings(), "textgen")
    assert s.custom_token_bans == (1, 3)
    assert kept(make_sampler(s).process(ctx(), torch.zeros(4))) == [0, 2]
    with pytest.raises(SamplerError, match="comma-separated token ids"):
        settings_from_fields({"custom_token_bans": "a,b"}, SamplerSettings(), "textgen")


# -------------------------------------------------- parity fixes (issue 11, 18 and 19)


def test_koboldcpp_rep_pen_window_is_prefilled_with_token_zero() -> None:
    """KoboldCpp's last_n_tokens starts as rep_pen_range zeros. Context 5, range 20,
    slope 0.5: the window is 15 zeros + 5 tokens, its newer half (slots i with 2i >= 20)
    holds 5 zeros and the 5 tokens, so tokens 0, 5 and 6 get the full 1.5 (before the fix:
    0 was untouched and 5, 6 got the reduced 1.25)."""
    x = torch.full((10,), 2.0)
    out = koboldcpp_repetition_penalty(ctx(5, 6, 7, 8, 9), x, 1.5, 20, 0.5)
    assert out.tolist() == pytest.approx([2 / 1.5, 2, 2, 2, 2] + [2 / 1.5] * 5)
    # range 6: window 0 5 6 | 7 8 9 -> 0, 5, 6 in the older half get 1 + 0.5 * 0.5
    out = koboldcpp_repetition_penalty(ctx(5, 6, 7, 8, 9), x, 1.5, 6, 0.5)
    assert out.tolist() == pytest.approx([1.6, 2, 2, 2, 2, 1.6, 1.6] + [2 / 1.5] * 3)
    # range 7 over 7 tokens: the newer half is floor(7/2) = 3 slots (2i >= 7: i = 4, 5, 6)
    out = koboldcpp_repetition_penalty(ctx(1, 2, 3, 4, 5, 6, 7), torch.full((8,), 2.0), 1.5,
                                       7, 0.5)
    assert out.tolist() == pytest.approx([2.0] + [1.6] * 4 + [2 / 1.5] * 3)
    # presence applies to the padding's 0 too, as KoboldCpp subtracts it per window token
    out = koboldcpp_repetition_penalty(ctx(3), torch.zeros(4), 1.0, 4, 1.0, 0.25)
    assert out.tolist() == [-0.25, 0.0, 0.0, -0.25]
    # KoboldCpp caps the window at its context: range 20 in a context of 6 is range 6
    s = SamplerSettings(dialect="koboldcpp", rep_pen=1.5, rep_pen_range=20, rep_pen_slope=0.5)
    capped = make_sampler(s, context_length=6).process(ctx(5, 6, 7, 8, 9), x)
    assert capped.tolist() == pytest.approx([1.6, 2, 2, 2, 2, 1.6, 1.6] + [2 / 1.5] * 3)
    assert make_sampler(s).process(ctx(5, 6, 7, 8, 9), x).tolist() == \
        pytest.approx([2 / 1.5, 2, 2, 2, 2] + [2 / 1.5] * 5)


@pytest.mark.parametrize("z", [0.5, 0.85, 0.95])
def test_textgen_tfs_with_all_second_differences_zero(z: float) -> None:
    """text-generation-webui divides 0 by 0 on 10 equal logits: NaN > z is False for all,
    so only the always-removed last token goes. It keeps 9 (we kept 5/7/8 before)."""
    flat = torch.zeros(10)
    out = tail_free(flat, z, "textgen")
    assert not torch.isnan(out).any() and len(kept(out)) == 9
    chain = make_sampler(SamplerSettings(tfs=z)).process(ctx(), flat)
    assert len(kept(chain)) == 9
    assert len(kept(tail_free(flat, z, "koboldcpp"))) < 9  # KoboldCpp's uniform fallback


# ----------------------------------------------------------------------- wire, order


def test_wire_names_per_dialect() -> None:
    base = SamplerSettings()
    textgen = settings_from_fields({
        "dry_multiplier": 0.8, "dry_sequence_breakers": '["\\n", ":"]', "nsigma": 1.5,
        "mirostat_mode": 2, "mirostat_tau": 4, "dynamic_temperature": True,
        "dynatemp_low": 0.5, "dynatemp_high": 1.5, "xtc_probability": 0.5,
        "xtc_threshold": 0.2, "smoothing_factor": 0.3, "min_keep": 2}, base, "textgen")
    assert textgen.dry_sequence_breakers == ("\n", ":")
    assert (textgen.top_n_sigma, textgen.mirostat, textgen.mirostat_tau) == (1.5, 2, 4.0)
    assert textgen.dynamic_temperature and textgen.min_keep == 2
    # text-generation-webui also takes a comma list of JSON strings
    assert settings_from_fields({"dry_sequence_breakers": '"\\n", "*"'}, base,
                                "textgen").dry_sequence_breakers == ("\n", "*")
    kobold = settings_from_fields({
        "dry_sequence_breakers": ["\n", "*"], "dry_penalty_last_n": -1, "mirostat": 1,
        "banned_tokens": ["a shiver"], "dynatemp_range": 0.5}, base, "koboldcpp")
    assert kobold.dry_sequence_breakers == ("\n", "*") and kobold.dry_penalty_last_n == 0
    assert kobold.mirostat == 1 and kobold.banned_strings == ("a shiver",)
    with pytest.raises(SamplerError) as info:
        settings_from_fields({"dry_sequence_breakers": "[oops"}, base, "textgen")
    assert info.value.field == "dry_sequence_breakers"
    with pytest.raises(SamplerError) as info:
        settings_from_fields({"mirostat_mode": 3}, base, "textgen")
    assert info.value.field == "mirostat_mode"
    with pytest.raises(SamplerError, match="at most 64 breakers") as info:
        settings_from_fields({"dry_sequence_breakers": ["x"] * 65}, base, "koboldcpp")
    assert info.value.field == "dry_sequence_breakers"
    with pytest.raises(SamplerError) as info:
        settings_from_fields({"dry_sequence_breakers": ["\n", "y" * 201]}, base, "textgen")
    assert info.value.field == "dry_sequence_breakers[1]"


def test_unknown_order_entries_are_named() -> None:
    with pytest.raises(SamplerError, match="sampler_order=7") as info:
        settings_from_fields({"sampler_order": [6, 0, 7]}, SamplerSettings(), "koboldcpp")
    assert info.value.field == "sampler_order"
    with pytest.raises(SamplerError, match="'smooth'") as info:
        settings_from_fields({"sampler_priority": ["top_k", "smooth"]}, SamplerSettings(),
                             "textgen")
    assert info.value.field == "sampler_priority"


def test_limamono_dry_preset_is_the_card_plus_dry() -> None:
    card, dry_preset = get_preset("limamono"), get_preset("limamono-dry")
    assert dry_preset.replace(dry_multiplier=0.0) == card
    assert (dry_preset.dry_multiplier, dry_preset.dry_base, dry_preset.dry_allowed_length) \
        == (0.8, 1.75, 2)
    # the card's preset has every new sampler off
    off = SamplerSettings()
    for name in ("dry_multiplier", "xtc_probability", "top_n_sigma", "smoothing_factor",
                 "mirostat", "dynatemp_range", "logit_bias", "banned_strings"):
        assert getattr(card, name) == getattr(off, name)


def test_everything_on_keeps_a_token_and_never_nan() -> None:
    gen = torch.Generator().manual_seed(0)
    s = SamplerSettings(dry_multiplier=0.8, xtc_probability=1.0, xtc_threshold=0.05,
                        top_n_sigma=2.0, smoothing_factor=0.3, dynamic_temperature=True,
                        dynatemp_low=0.5, dynatemp_high=1.5, tfs=0.9, rep_pen=1.1,
                        logit_bias=((3, 2.0),), min_keep=1, seed=0)
    for dialect in ("textgen", "koboldcpp"):
        for mirostat in (0, 1, 2):
            sampler = make_sampler(s.replace(dialect=dialect, mirostat=mirostat,
                                             dynatemp_range=0.5), VOCAB)
            for _ in range(5):
                x = torch.randn(16, generator=gen) * 3
                history = torch.randint(0, 16, (40,), generator=gen)
                out = sampler.process(history, x)
                assert not torch.isnan(out).any() and kept(out)
                assert sampler.sample(history, x) in kept(out) or mirostat


def test_cli_lists_every_sampler_with_its_dialect_names() -> None:
    from typer.testing import CliRunner

    from limamono.cli import app
    from limamono.samplers.wire import CATALOG

    result = CliRunner().invoke(app, ["samplers"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for label, _, _, _ in CATALOG:
        assert label in result.output
    for name in ("dry_sequence_breakers", "nsigma", "top_n_sigma", "mirostat_mode",
                 "xtc_probability", "banned_strings", "logit_bias", "dynatemp_range",
                 "grammar_string", "json_schema", "guided_choice"):
        assert name in result.output
    assert "llama.cpp names" in result.output and "samplers (names)" in result.output
    assert "limamono-dry" in CliRunner().invoke(app, ["samplers", "list"]).output


def test_exported_presets_keep_the_card_and_offer_limamono_dry() -> None:
    import json as json_module

    from limamono.cards import presets

    card = presets.textgen_preset("limamono")
    assert (card["dry_multiplier"], card["xtc_probability"], card["mirostat_mode"]) == (0, 0, 0)
    assert card["dry_sequence_breakers"] == json_module.dumps(["\n", ":", '"', "*"])
    dry_preset = presets.textgen_preset("limamono-dry")
    assert dry_preset["dry_multiplier"] == 0.8 and dry_preset["tfs"] == card["tfs"]
    assert {k: v for k, v in dry_preset.items() if k != "dry_multiplier"} == \
        {k: v for k, v in card.items() if k != "dry_multiplier"}


def test_breakers_on_the_smollm2_tokenizer(tokenizer) -> None:
    """The real vocabulary: text-generation-webui's breaker is the last token of "a" + s;
    KoboldCpp's heads are every token holding the breaker, plus partial overlaps with
    tails (here "\\n\\n" contains "\\n"; "###" starts inside tokens ending in "#")."""
    from limamono.samplers.vocab import Vocabulary

    size = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    vocab = Vocabulary(size, lambda t: tokenizer.encode(t, add_special_tokens=False), pieces,
                       frozenset({2}))
    newline = tokenizer.encode("a\n", add_special_tokens=False)[-1]
    assert vocab.textgen_breakers(("\n",)) == {newline: ((),)}
    assert vocab.newline_id() == newline
    kobold = vocab.koboldcpp_breakers(("\n", "###"))
    double = tokenizer.encode("\n\n", add_special_tokens=False)
    assert len(double) == 1 and kobold[double[0]] == ((),)
    assert kobold[newline] == ((),)
    hashes = [t for t, piece in enumerate(pieces) if piece.endswith("#") and "###" not in piece]
    assert hashes and all(kobold[t] for t in hashes)
    single = pieces.index("#")
    assert kobold[single] == (tuple(tokenizer.encode("##", add_special_tokens=False)),)


def test_engine_runs_dry_and_xtc_in_both_dialects(tiny_model_dir) -> None:
    """Through the engine: the vocabulary is built from the model's tokenizer, the KoboldCpp
    breakers from every token's text, and a seeded run is reproducible."""
    from limamono.engine import load_engine

    engine = load_engine(str(tiny_model_dir), dtype="fp32", threads=1)
    for dialect in ("textgen", "koboldcpp"):
        s = get_preset("limamono-dry").replace(dialect=dialect, xtc_probability=0.5, seed=3,
                                               mirostat=2)
        first = engine.generate("Once upon a time", s, 12)
        assert engine.generate("Once upon a time", s, 12) == first
    assert engine.vocabulary(engine.n_vocab).size == engine.n_vocab


def test_bench_overhead_runs_the_dry_preset() -> None:
    from limamono.samplers import bench_overhead

    for dialect in ("textgen", "koboldcpp"):
        ms = bench_overhead(get_preset("limamono-dry").replace(dialect=dialect), vocab=500, n=3,
                            context=200)
        assert 0 < ms < 1000


def test_banned_tokens_do_not_poison_the_shaping_samplers() -> None:
    """A -inf (banned) token must not turn top-nσ's std, the entropy or quadratic smoothing
    into NaN: text-generation-webui counts it as 0 in its std and leaves it out of the
    entropy's token count and of the smoothing."""
    x = torch.tensor([2.0, 1.0, 0.0, -1.0, -math.inf])
    assert kept(top_n_sigma(x, 1.0, "koboldcpp")) == [0, 1]
    assert kept(top_n_sigma(x, 1.0, "textgen")) == [0, 1]  # [2, 1, 0, -1, 0]: std 1.14
    assert kept(quadratic_sampling(x, 0.5, 0.5)) == [0, 1, 2, 3]
    out = dynamic_temperature(x, 0.5, 1.5)
    assert kept(out) == [0, 1, 2, 3] and not torch.isnan(out).any()
    s = SamplerSettings(custom_token_bans=(4,), top_n_sigma=1.0, smoothing_factor=0.5,
                        smoothing_curve=0.5, dynamic_temperature=True, dynatemp_low=0.5,
                        dynatemp_high=1.5, mirostat=2, seed=0)
    for dialect in ("textgen", "koboldcpp"):
        sampler = make_sampler(s.replace(dialect=dialect, dynatemp_range=0.5))
        out = sampler.process(ctx(), torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0]))
        assert not torch.isnan(out).any() and kept(out) and 4 not in kept(out)


from hypothesis import given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@hyp_settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-30, 30), st.just(-math.inf)), min_size=2,
                       max_size=16).filter(lambda v: any(math.isfinite(x) for x in v)),
       history=st.lists(st.integers(0, 15), max_size=40),
       dialect=st.sampled_from(["textgen", "koboldcpp"]), mirostat=st.sampled_from([0, 1, 2]),
       dry_mult=st.floats(0, 3), xtc=st.floats(0, 1), threshold=st.floats(0, 0.6),
       nsigma=st.floats(0, 3), smooth=st.floats(0, 3), curve=st.floats(0, 5),
       low=st.floats(0, 2), high=st.floats(0, 3), min_keep=st.integers(0, 4),
       temperature=st.one_of(st.just(0.0), st.floats(0.01, 3)))
def test_any_roleplay_settings_keep_a_token_and_never_nan(
        values, history, dialect, mirostat, dry_mult, xtc, threshold, nsigma, smooth, curve,
        low, high, min_keep, temperature) -> None:
    s = SamplerSettings(dialect=dialect, mirostat=mirostat, dry_multiplier=dry_mult,
                        xtc_probability=xtc, xtc_threshold=threshold, top_n_sigma=nsigma,
                        smoothing_factor=smooth, smoothing_curve=curve,
                        dynamic_temperature=True, dynatemp_low=low, dynatemp_high=high,
                        dynatemp_range=low, min_keep=min_keep, temperature=temperature,
                        tfs=0.9, rep_pen=1.2, seed=0)
    x = torch.tensor(values + [0.0] * (16 - len(values)))
    context = torch.tensor(history, dtype=torch.long)
    sampler = make_sampler(s, VOCAB)
    out = sampler.process(context, x)
    assert not torch.isnan(out).any()
    assert kept(out)
    assert set(kept(out)) <= set(torch.isfinite(x).nonzero().squeeze(1).tolist())


def test_ban_eos_token() -> None:
    """SillyTavern's "Ban EOS Token" (``ban_eos_token``; KoboldCpp also reads
    ``use_default_badwordsids`` and ``bypass_eos``; llama.cpp ``ignore_eos``)."""
    x = torch.tensor([3.0, 1.0, 0.0, -1.0])
    vocab = Vocabulary(4, encode, PIECES[:4], frozenset({0}))
    for dialect, name in (("textgen", "ban_eos_token"), ("koboldcpp", "use_default_badwordsids"),
                          ("koboldcpp", "bypass_eos"), ("textgen", "ignore_eos")):
        s = settings_from_fields({name: True, "temperature": 0}, SamplerSettings(), dialect)
        assert s.ban_eos_token
        assert kept(make_sampler(s, vocab).process(ctx(), x)) == [1]
    with pytest.raises(SamplerError, match="EOS") as info:
        make_sampler(SamplerSettings(ban_eos_token=True))
    assert info.value.field == "ban_eos_token"
    with pytest.raises(SamplerError) as info:
        settings_from_fields({"ban_eos_token": "yes"}, SamplerSettings(), "textgen")
    assert info.value.field == "ban_eos_token"
