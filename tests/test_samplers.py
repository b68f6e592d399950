"""Samplers: exact survivors on hand-made logits, both TFS variants, penalties, orders,
validation, the SillyTavern wire mapping, parity with transformers' processors, seeding,
and the logits processor inside a real ``model.generate``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from limamono.samplers import (
    PRESETS,
    SamplerError,
    SamplerSettings,
    apply_temperature,
    get_preset,
    koboldcpp_repetition_penalty,
    make_sampler,
    min_p,
    presence_frequency_penalty,
    repetition_penalty,
    settings_from_fields,
    tail_free,
    top_a,
    top_k,
    top_p,
    typical_p,
    unsupported_fields,
)
from limamono.samplers.chain import bench_overhead, build_stages, textgen_order

NO_CONTEXT = torch.tensor([], dtype=torch.long)


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (they sum to 1)."""
    return torch.tensor(probs, dtype=torch.float32).log()


def kept(logits: torch.Tensor) -> list[int]:
    """Ids of the surviving (finite) tokens, ascending."""
    return torch.isfinite(logits).nonzero().squeeze(1).tolist()


# ---------------------------------------------------------------- settings and presets


def test_limamono_preset_is_the_cards_settings() -> None:
    s = get_preset("limamono")
    assert (s.temperature, s.tfs, s.rep_pen, s.rep_pen_range, s.top_p, s.top_k) == \
        (1.0, 0.85, 1.11, 2048, 1.0, 0)
    assert (s.min_p, s.typical, s.top_a, s.dialect, s.seed) == (0.0, 1.0, 0.0, "textgen", None)
    assert not s.greedy
    assert get_preset("greedy").greedy
    assert SamplerSettings(top_k=1).greedy


def test_unknown_preset_lists_the_names() -> None:
    with pytest.raises(SamplerError, match="limamono, limamono-dry, greedy") as info:
        get_preset("creative")
    assert info.value.field == "preset"


def test_replace_validates_and_rejects_unknown_fields() -> None:
    s = get_preset("limamono").replace(top_k=40)
    assert s.top_k == 40 and s.tfs == 0.85
    with pytest.raises(SamplerError) as info:
        s.replace(tfs=1.5)
    assert info.value.field == "tfs"
    with pytest.raises(SamplerError, match="not a sampler setting") as info:
        s.replace(tfs_z=0.9)
    assert info.value.field == "tfs_z"


def test_settings_normalise_types() -> None:
    s = SamplerSettings(top_k=40.0, temperature=1, sampler_order=[6, 0, 1, 3, 4, 2, 5],
                        sampler_priority="top_k, temperature\nmin_p")
    assert isinstance(s.top_k, int) and isinstance(s.temperature, float)
    assert s.sampler_order == (6, 0, 1, 3, 4, 2, 5)
    assert s.sampler_priority == ("top_k", "temperature", "min_p")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", math.nan, "finite number in [0, inf)"),
    ("temperature", -0.5, "allowed [0, inf)"),
    ("temperature", 1e-40, "0 (greedy) or at least 0.001"),
    ("temperature", math.inf, "finite"),
    ("temperature", "hot", "must be a number"),
    ("top_k", -1, "at least 0"),
    ("top_k", 2.5, "whole number"),
    ("top_k", True, "whole number"),
    ("top_p", 1.5, "allowed [0, 1]"),
    ("top_p", -0.1, "allowed [0, 1]"),
    ("min_p", 2.0, "allowed [0, 1]"),
    ("typical", math.nan, "finite"),
    ("top_a", -1.0, "allowed [0, 1]"),
    ("tfs", 1.01, "allowed [0, 1]"),
    ("rep_pen", 0.0, "allowed [0.01, 100]"),
    ("rep_pen", -1.1, "allowed [0.01, 100]"),
    ("rep_pen", 1e40, "allowed [0.01, 100]"),
    ("rep_pen_range", -5, "at least 0"),
    ("rep_pen_slope", -1.0, "allowed [0, inf)"),
    ("presence_penalty", 3.0, "allowed [-2, 2]"),
    ("frequency_penalty", math.nan, "finite"),
    ("seed", -2, "at least 0"),
    ("seed", 2**64, "at most"),
    ("seed", 1.5, "whole number"),
    ("dialect", "ooba", "textgen, koboldcpp"),
    ("sampler_order", (7,), "at most 6"),
    ("sampler_order", (0, 0), "twice"),
    ("sampler_order", (), "must not be empty"),
    ("sampler_order", "0123", "list of sampler ids"),
    ("sampler_priority", ("top_k", "fast"), "unknown name"),
    ("sampler_priority", ("top_k", "top_k"), "twice"),
])
def test_invalid_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(SamplerError, match=message.replace("(", r"\(").replace("[", r"\[")
                       .replace(")", r"\)").replace("]", r"\]")) as info:
        SamplerSettings(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}=")


# ---------------------------------------------------------- each sampler's survivors


def test_top_k() -> None:
    x = torch.tensor([1.0, 4.0, 2.0, 3.0])
    assert kept(top_k(x, 2)) == [1, 3]
    assert kept(top_k(x, 0)) == [0, 1, 2, 3]
    assert kept(top_k(x, 9)) == [0, 1, 2, 3]


def test_top_p_hf_fixtures() -> None:
    # transformers' test_top_p_dist_warper vectors, p = 0.8
    assert kept(top_p(logits_of([0.3, 0.1, 0.1, 0.5]), 0.8)) == [0, 3]
    assert kept(top_p(logits_of([0.15, 0.3, 0.3, 0.25]), 0.8)) == [1, 2, 3]
    assert kept(top_p(logits_of([0.3, 0.1, 0.1, 0.5]), 0.0)) == [3]
    assert kept(top_p(logits_of([0.3, 0.1, 0.1, 0.5]), 1.0)) == [0, 1, 2, 3]


def test_min_p() -> None:
    assert kept(min_p(logits_of([0.9, 0.0274, 0.047, 0.0256]), 0.05)) == [0, 2]
    assert kept(min_p(torch.zeros(4), 0.9)) == [0, 1, 2, 3]
    assert kept(min_p(logits_of([0.97, 0.01, 0.01, 0.01]), 0.1)) == [0]


def test_typical_p_fixtures() -> None:
    # llama.cpp and transformers use the same two vectors
    assert kept(typical_p(logits_of([0.97, 0.01, 0.01, 0.01]), 0.5)) == [0]
    assert kept(typical_p(logits_of([0.4, 0.2, 0.2, 0.2]), 0.5)) == [1, 2, 3]


def test_top_a() -> None:
    # threshold 0.5 * 0.6**2 = 0.18
    assert kept(top_a(logits_of([0.6, 0.2, 0.1, 0.1]), 0.5)) == [0, 1]
    assert kept(top_a(logits_of([0.6, 0.2, 0.1, 0.1]), 0.0)) == [0, 1, 2, 3]


def test_temperature() -> None:
    x = torch.tensor([1.0, 2.0, -4.0])
    assert apply_temperature(x, 2.0).tolist() == [0.5, 1.0, -2.0]
    assert kept(apply_temperature(x, 0.0)) == [1]
    assert apply_temperature(x, 0.0)[1] == 2.0


# The worked table of shared/reference/sampling_perf.md §1.7: probabilities (already sorted),
# z, then the tokens KoboldCpp/llama.cpp and text-generation-webui keep.
TFS_TABLE = [
    ([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.03], 0.5, 1, 1),
    ([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.03], 0.85, 1, 2),
    ([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.03], 0.95, 3, 4),
    ([0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02], 0.85, 2, 3),
    ([0.6, 0.1, 0.1, 0.1, 0.05, 0.05], 0.85, 2, 3),
]


@pytest.mark.parametrize(("probs", "z", "n_kcpp", "n_textgen"), TFS_TABLE)
def test_tail_free_worked_table(probs: list[float], z: float, n_kcpp: int,
                                n_textgen: int) -> None:
    x = logits_of(probs)
    assert kept(tail_free(x, z, "koboldcpp")) == list(range(n_kcpp))
    assert kept(tail_free(x, z, "textgen")) == list(range(n_textgen))


def test_tail_free_in_vocabulary_order() -> None:
    # the same distribution shuffled: the kept tokens are the most likely ones
    x = logits_of([0.05, 0.2, 0.03, 0.5, 0.08, 0.1, 0.04])
    assert kept(tail_free(x, 0.95, "koboldcpp")) == [1, 3, 5]
    assert kept(tail_free(x, 0.95, "textgen")) == [1, 3, 4, 5]


@pytest.mark.parametrize(("z", "n_kcpp"), [(0.25, 1), (0.75, 2), (0.99, 2)])
def test_tail_free_llama_cpp_linear_vector(z: float, n_kcpp: int) -> None:
    # llama.cpp's old test: exactly linear probabilities, sum|d2| < 1e-6 -> uniform weights
    x = logits_of([0.1, 0.15, 0.2, 0.25, 0.3])
    assert kept(tail_free(x, z, "koboldcpp")) == list(range(5 - n_kcpp, 5))


@pytest.mark.parametrize("variant", ["textgen", "koboldcpp"])
def test_tail_free_zero_curvature_never_nan(variant: str) -> None:
    flat = torch.zeros(10)  # sum|d2| = 0 exactly
    # koboldcpp: uniform weights, cdf = (i+1)/8, first cdf > 0.85 at i* = 6; textgen: 0/0
    # is NaN in text-generation-webui, so only its always-removed last token goes (11.19)
    out = tail_free(flat, 0.85, variant)
    assert not torch.isnan(out).any()
    assert len(kept(out)) == (9 if variant == "textgen" else 6)
    spike = torch.tensor([50.0] + [-50.0] * 9)  # all mass on one token
    out = tail_free(spike, 0.5, variant)
    assert not torch.isnan(out).any() and kept(out) == [0]
    assert kept(tail_free(torch.tensor([0.0, -math.inf, -math.inf, -math.inf]), 0.1,
                          variant)) == [0]


def test_tail_free_small_and_off() -> None:
    x = logits_of([0.9, 0.05, 0.05])
    assert kept(tail_free(x, 0.1, "koboldcpp")) == [0, 1, 2]  # cut must fall at i >= 1
    assert kept(tail_free(x, 0.1, "textgen")) == [0]
    assert kept(tail_free(logits_of([0.7, 0.3]), 0.1)) == [0, 1]  # < 3 tokens: no-op
    assert kept(tail_free(logits_of([0.5, 0.2, 0.1, 0.08, 0.1, 0.02]), 1.0)) == list(range(6))


def test_samplers_validate_their_arguments() -> None:
    x = torch.zeros(4)
    for call, field in [(lambda: top_p(x, 2.0), "top_p"), (lambda: top_k(x, -3), "top_k"),
                        (lambda: tail_free(x, math.nan), "tfs"),
                        (lambda: apply_temperature(x, -1.0), "temperature"),
                        (lambda: top_k(torch.zeros(2, 3), 1), "logits"),
                        (lambda: repetition_penalty(torch.tensor([9]), x, 1.1), "context_ids"),
                        (lambda: repetition_penalty(torch.tensor([0.5]), x, 1.1), "context_ids")]:
        with pytest.raises(SamplerError) as info:
            call()
        assert info.value.field == field


# ------------------------------------------------------------------------ penalties


def test_repetition_penalty_positive_and_negative_logits() -> None:
    x = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0])
    out = repetition_penalty(torch.tensor([0, 1, 3, 0, 0]), x, 1.11)
    assert out.tolist() == pytest.approx([2.0 / 1.11, -1.11, 0.5, 0.0, 3.0])
    assert x.tolist() == [2.0, -1.0, 0.5, 0.0, 3.0]  # input untouched
    # transformers' fixture: penalty 2 -> -0.1 becomes -0.2, 0.1 becomes 0.05, 0.4 -> 0.2
    hf = repetition_penalty(torch.tensor([0, 1, 2]), torch.tensor([-0.1, 0.1, 0.4]), 2.0)
    assert hf.tolist() == pytest.approx([-0.2, 0.05, 0.2])


def test_repetition_penalty_range() -> None:
    x = torch.full((8,), 2.0)
    context = torch.tensor([5] + [7] * 2048)
    assert repetition_penalty(context, x, 2.0, 2048)[5] == 2.0  # 2049 tokens back: outside
    assert repetition_penalty(context, x, 2.0, 2049)[5] == 1.0
    assert repetition_penalty(context, x, 2.0, 0)[5] == 1.0  # 0 = the whole context
    assert repetition_penalty(context, x, 2.0, 2048)[7] == 1.0
    assert repetition_penalty(torch.tensor([1, 2, 3]), x, 2.0, 2).tolist() == \
        [2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_presence_and_frequency_penalties() -> None:
    out = presence_frequency_penalty(torch.tensor([1, 1, 2]), torch.zeros(4), 0.5, 0.25)
    assert out.tolist() == [0.0, -1.0, -0.75, 0.0]
    out = presence_frequency_penalty(torch.tensor([1, 1, 2]), torch.zeros(4), 0.5, 0.25, 1)
    assert out.tolist() == [0.0, 0.0, -0.75, 0.0]


def test_koboldcpp_slope_halves() -> None:
    x = torch.full((6,), 2.0)
    # window [1, 2 | 3, 4]: the older half gets 1 + (1.5 - 1) * 0.5 = 1.25
    out = koboldcpp_repetition_penalty(torch.tensor([1, 2, 3, 4]), x, 1.5, 4, 0.5)
    assert out.tolist() == pytest.approx([2.0, 1.6, 1.6, 2 / 1.5, 2 / 1.5, 2.0])
    # an odd window's newer half is the smaller one (KoboldCpp: slot i is near if 2i >= n)
    out = koboldcpp_repetition_penalty(torch.tensor([1, 2, 1, 3, 5]), x, 1.5, 5, 0.5)
    assert out.tolist() == pytest.approx([2.0, 1.6, 1.6, 2 / 1.5, 2.0, 2 / 1.5])
    # a token in both halves counts as near
    out = koboldcpp_repetition_penalty(torch.tensor([1, 2, 3, 1]), x, 1.5, 4, 0.5)
    assert out.tolist() == pytest.approx([2.0, 2 / 1.5, 1.6, 2 / 1.5, 2.0, 2.0])
    # slope 1 (default) and slopes outside (0, 1] are flat
    for slope in (1.0, 0.0, 3.0):
        flat = koboldcpp_repetition_penalty(torch.tensor([1, 2, 3, 4]), x, 1.5, 4, slope)
        assert flat[1:5].tolist() == pytest.approx([2 / 1.5] * 4)


def test_koboldcpp_range_and_presence() -> None:
    x = torch.tensor([1.0, -1.0, 2.0, 0.0])
    # KoboldCpp clamps range 0 to 1: only the last token
    out = koboldcpp_repetition_penalty(torch.tensor([0, 1, 2]), x, 2.0, 0)
    assert out.tolist() == [1.0, -1.0, 1.0, 0.0]
    # logit <= 0 is multiplied; presence is subtracted from every window token
    out = koboldcpp_repetition_penalty(torch.tensor([0, 1, 3]), x, 2.0, 3, 1.0, 0.25)
    assert out.tolist() == [0.25, -2.25, 2.0, -0.25]


# ------------------------------------------------------------------- chain and order


def test_disabled_samplers_are_skipped() -> None:
    assert build_stages(SamplerSettings()) == []
    assert len(build_stages(SamplerSettings(dialect="koboldcpp"))) == 1  # the 3000 cut
    assert len(build_stages(get_preset("limamono"))) == 2  # rep-pen, tfs
    x = torch.randn(50)
    assert torch.equal(make_sampler(SamplerSettings()).process(NO_CONTEXT, x), x)


def test_koboldcpp_prefilters_to_3000_tokens() -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    assert len(kept(make_sampler(SamplerSettings()).process(NO_CONTEXT, x))) == 5000
    kcpp = make_sampler(SamplerSettings(dialect="koboldcpp")).process(NO_CONTEXT, x)
    assert kept(kcpp) == kept(top_k(x, 3000))
    # rep-pen runs after the cut: even a boosting penalty (< 1) cannot bring a token back
    low = int(x.argmin())
    s = SamplerSettings(dialect="koboldcpp", rep_pen=0.01, rep_pen_range=4)
    assert low in kept(make_sampler(s.replace(dialect="textgen")).process(torch.tensor([low]), x))
    assert low not in kept(make_sampler(s).process(torch.tensor([low]), x))


def test_textgen_order() -> None:
    assert textgen_order(SamplerSettings()) == (
        "dry", "top_n_sigma", "top_k", "top_p", "typical_p", "tfs", "top_a", "min_p",
        "mirostat", "xtc", "temperature", "dynamic_temperature", "quadratic_sampling")
    # unlisted samplers run first, as text-generation-webui sorts them
    assert textgen_order(SamplerSettings(sampler_priority=("min_p", "temperature")))[-2:] == \
        ("min_p", "temperature")


def test_chain_equals_composed_functions() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=gen) * 3
    context = torch.randint(0, 1000, (3000,), generator=gen)
    before = x.clone()
    got = make_sampler(get_preset("limamono")).process(context, x)
    assert torch.equal(x, before)  # the chain works on its own copy
    want = tail_free(repetition_penalty(context, x, 1.11, 2048), 0.85, "textgen")
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)])

    s = SamplerSettings(temperature=0.8, top_k=200, top_p=0.95, min_p=0.02, typical=0.97,
                        top_a=0.01, tfs=0.97, rep_pen=1.2, rep_pen_range=500, rep_pen_slope=0.5,
                        presence_penalty=0.1, dialect="koboldcpp")
    got = make_sampler(s).process(context, x)
    y = koboldcpp_repetition_penalty(context, x, 1.2, 500, 0.5, 0.1)
    y = top_a(top_k(y, 200), 0.01)
    y = min_p(top_p(typical_p(tail_free(y, 0.97, "koboldcpp"), 0.97), 0.95), 0.02)
    want = apply_temperature(y, 0.8)
    assert kept(got) == kept(want) and len(kept(got)) > 1
    assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)])


def test_textgen_order_changes_survivors() -> None:
    x = logits_of([0.5, 0.3, 0.2])
    temp_last = SamplerSettings(temperature=4.0, min_p=0.5)
    temp_first = temp_last.replace(sampler_priority=("temperature", "min_p"))
    assert kept(make_sampler(temp_last).process(NO_CONTEXT, x)) == [0, 1]
    assert kept(make_sampler(temp_first).process(NO_CONTEXT, x)) == [0, 1, 2]


def test_koboldcpp_order_changes_survivors() -> None:
    x = torch.tensor([3.0, 2.9, 1.0])
    s = SamplerSettings(top_k=1, rep_pen=2.0, rep_pen_range=8, dialect="koboldcpp")
    assert kept(make_sampler(s).process(torch.tensor([0]), x)) == [1]  # rep-pen first
    late = make_sampler(s.replace(sampler_order=(0, 1, 3, 4, 2, 5, 6)))
    assert late.process(torch.tensor([0]), x).tolist() == [1.5, -math.inf, -math.inf]
    t_first = SamplerSettings(temperature=4.0, tfs=0.85, dialect="koboldcpp",
                              sampler_order=(5, 6, 0, 1, 3, 4, 2))
    probs = logits_of([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.03])
    assert len(kept(make_sampler(t_first).process(NO_CONTEXT, probs))) == 3
    assert len(kept(make_sampler(t_first.replace(sampler_order=(6, 0, 1, 3, 4, 2, 5)))
                    .process(NO_CONTEXT, probs))) == 1


def test_temperature_zero_is_greedy_after_penalties() -> None:
    x = torch.tensor([3.0, 2.9, 1.0])
    s = get_preset("greedy").replace(rep_pen=2.0)
    assert make_sampler(s).sample(torch.tensor([0]), x) == 1
    assert kept(make_sampler(s).process(torch.tensor([0]), x)) == [1]


def test_processes_bf16_and_keeps_dtype() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.bfloat16)
    out = make_sampler(SamplerSettings(top_k=2)).process(NO_CONTEXT, x)
    assert out.dtype == torch.bfloat16 and kept(out) == [1, 2]


# ----------------------------------------------------------- parity with transformers


@pytest.mark.parametrize(("settings", "warper"), [
    ({"temperature": 0.7}, ("TemperatureLogitsWarper", 0.7)),
    ({"top_k": 50}, ("TopKLogitsWarper", 50)),
    ({"top_p": 0.9}, ("TopPLogitsWarper", 0.9)),
    ({"min_p": 0.1}, ("MinPLogitsWarper", 0.1)),
    ({"typical": 0.9}, ("TypicalLogitsWarper", 0.9)),
    ({"rep_pen": 1.3}, ("RepetitionPenaltyLogitsProcessor", 1.3)),
])
def test_equals_transformers_processor(settings: dict, warper: tuple[str, float]) -> None:
    import transformers

    gen = torch.Generator().manual_seed(7)
    context = torch.randint(0, 500, (300,), generator=gen)
    hf = getattr(transformers, warper[0])(warper[1])
    sampler = make_sampler(SamplerSettings(**settings))
    for _ in range(5):
        x = torch.randn(500, generator=gen) * 4
        want = hf(context.unsqueeze(0), x.unsqueeze(0)).squeeze(0)
        got = sampler.process(context, x)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)], atol=1e-6)


# ------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_deterministic() -> None:
    x = torch.zeros(1000)
    a, b, c = (make_sampler(SamplerSettings(seed=s)) for s in (11, 11, 12))
    seq_a = [a.sample(NO_CONTEXT, x) for _ in range(20)]
    assert seq_a == [b.sample(NO_CONTEXT, x) for _ in range(20)]
    assert seq_a != [c.sample(NO_CONTEXT, x) for _ in range(20)]
    # an explicit generator wins over the sampler's own
    draws = [make_sampler(SamplerSettings(seed=s)).sample(NO_CONTEXT, x,
                                                          torch.Generator().manual_seed(5))
             for s in (1, 2)]
    assert draws[0] == draws[1]


def test_sampling_follows_the_distribution() -> None:
    sampler = make_sampler(SamplerSettings(seed=3, top_k=3))
    x = logits_of([0.5, 0.3, 0.15, 0.05])  # top-k 3 renormalises to .5/.95, .3/.95, .15/.95
    counts = torch.bincount(torch.tensor([sampler.sample(NO_CONTEXT, x) for _ in range(4000)]),
                            minlength=4) / 4000
    assert counts.tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
                                            abs=0.03)
    assert make_sampler(get_preset("greedy")).sample(NO_CONTEXT, x) == 0


# ------------------------------------------------------------------ wire fields


def test_captured_sillytavern_body_is_the_limamono_preset(shared_dir) -> None:
    path = shared_dir / "testdata/sillytavern/limamono-presets/captured/" \
        "kcpp_Limamono_turn2_body.json"
    body = json.loads(path.read_text())
    plain = SamplerSettings()
    # The card's samplers exactly; the soft landing is limamono's own (no client sends it).
    card = PRESETS["limamono"].replace(soft_landing=False)
    assert settings_from_fields(body, plain, "koboldcpp") == card.replace(dialect="koboldcpp")
    assert settings_from_fields(body, plain, "textgen") == card
    assert unsupported_fields(body) == []


def test_published_textgen_preset_order(shared_dir) -> None:
    # what SillyTavern's ooba mode sends from the published preset's sampler fields
    preset = json.loads((shared_dir / "testdata/sillytavern/limamono-presets/"
                         "Limamono.textgen.json").read_text())
    fields = {"sampler_priority": preset["sampler_priority"],
              "temperature_last": preset["temperature_last"], "temperature": preset["temp"],
              "tfs": preset["tfs"], "repetition_penalty": preset["rep_pen"],
              "repetition_penalty_range": preset["rep_pen_range"], "top_k": preset["top_k"]}
    s = settings_from_fields(fields, SamplerSettings(), "textgen")
    assert s.sampler_priority[-3:] == ("temperature", "dynamic_temperature",
                                       "quadratic_sampling")
    classic = {"top_k", "top_p", "typical_p", "tfs", "top_a", "min_p", "temperature"}
    assert [n for n in textgen_order(s) if n in classic] == \
        [n for n in textgen_order(PRESETS["limamono"]) if n in classic] == \
        ["top_k", "top_p", "typical_p", "tfs", "top_a", "min_p", "temperature"]
    # samplers the old list does not name run first, as text-generation-webui sorts them
    assert textgen_order(s)[:3] == ("dry", "top_n_sigma", "xtc")
    assert s.replace(sampler_priority=None) == PRESETS["limamono"].replace(soft_landing=False)


def test_aliases_and_precedence() -> None:
    base = get_preset("limamono")
    assert settings_from_fields({}, base, "textgen") == base
    assert settings_from_fields({"temp": 0.5, "tfs_z": 0.9}, base, "textgen").temperature == 0.5
    assert settings_from_fields({"tfs_z": 0.9}, base, "textgen").tfs == 0.9
    both = {"typical_p": 0.8, "typical": 0.7}
    assert settings_from_fields(both, base, "textgen").typical == 0.8
    assert settings_from_fields(both, base, "koboldcpp").typical == 0.7
    pens = {"rep_pen": 1.3, "repetition_penalty": 1.2, "repeat_penalty": 1.1}
    assert settings_from_fields(pens, base, "textgen").rep_pen == 1.2
    assert settings_from_fields(pens, base, "koboldcpp").rep_pen == 1.3  # KoboldCpp: max
    ranges = {"repeat_last_n": 64, "presence_pen": 0.5, "freq_pen": 0.25}
    s = settings_from_fields(ranges, base, "textgen")
    assert (s.rep_pen_range, s.presence_penalty, s.frequency_penalty) == (64, 0.5, 0.25)
    seeds = {"seed": 5, "sampler_seed": 9}
    assert settings_from_fields(seeds, base, "textgen").seed == 5
    assert settings_from_fields(seeds, base, "koboldcpp").seed == 9


def test_wire_special_values() -> None:
    base = get_preset("limamono").replace(seed=4, top_k=20)
    s = settings_from_fields({"seed": -1, "top_k": -1, "rep_pen_range": -1, "top_p": None,
                              "mirostat_mode": 2, "banana": 1}, base, "textgen")
    assert (s.seed, s.top_k, s.rep_pen_range, s.top_p) == (None, 0, 0, 1.0)
    order = settings_from_fields({"sampler_order": [6, 5, 0, 1, 3, 4, 2]}, base, "koboldcpp")
    assert order.sampler_order == (6, 5, 0, 1, 3, 4, 2) and order.dialect == "koboldcpp"
    assert unsupported_fields({"mirostat_mode": 2, "epsilon_cutoff": 0, "eta_cutoff": 3e-4,
                               "no_repeat_ngram_size": 2}) == ["eta_cutoff", "no_repeat_ngram_size"]


def test_temperature_last() -> None:
    base = SamplerSettings()
    priority = ["temperature", "top_k", "min_p"]
    s = settings_from_fields({"sampler_priority": priority, "temperature_last": True},
                             base, "textgen")
    assert s.sampler_priority == ("top_k", "min_p", "temperature")
    assert settings_from_fields({"temperature_last": True}, base, "textgen") == base
    s = settings_from_fields({"temperature_last": False}, base, "textgen")
    # text-generation-webui's default (modules/presets.py): DRY, top-nσ, then temperature
    assert textgen_order(s)[:3] == ("dry", "top_n_sigma", "temperature")
    with pytest.raises(SamplerError) as info:
        settings_from_fields({"temperature_last": "yes"}, base, "textgen")
    assert info.value.field == "temperature_last"


@pytest.mark.parametrize(("fields", "field"), [
    ({"tfs_z": "high"}, "tfs_z"),
    ({"repetition_penalty": math.nan}, "repetition_penalty"),
    ({"temp": -1}, "temp"),
    ({"repeat_last_n": 2.5}, "repeat_last_n"),
    ({"sampler_order": [6, 0, 9]}, "sampler_order"),
    ({"sampler_priority": ["top_k", "bogus"]}, "sampler_priority"),
    ({"sampler_seed": "42"}, "sampler_seed"),
])
def test_bad_wire_values_name_the_wire_field(fields: dict, field: str) -> None:
    with pytest.raises(SamplerError) as info:
        settings_from_fields(fields, get_preset("limamono"), "textgen")
    assert info.value.field == field
    with pytest.raises(SamplerError):
        settings_from_fields({}, get_preset("limamono"), "kobold")


# ------------------------------------------------------------------ model.generate


def test_logits_processor_inside_generate() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from limamono.samplers import SamplerLogitsProcessor, generate_kwargs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[1, 5, 9, 12, 5, 30]])
    settings = get_preset("limamono").replace(seed=1)
    torch.manual_seed(1)
    out = model.generate(prompt, max_new_tokens=5, min_new_tokens=5,
                         **generate_kwargs(settings))
    assert out.shape == (1, 11) and torch.equal(out[0, :6], prompt[0])
    assert int(out.max()) < 64

    # greedy through the processor equals transformers' own greedy search
    greedy = model.generate(prompt, max_new_tokens=5, min_new_tokens=5,
                            **generate_kwargs(get_preset("greedy")))
    plain = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(greedy, plain)

    # batched rows are processed one by one with their own context
    proc = SamplerLogitsProcessor(SamplerSettings(rep_pen=3.0))
    ids = torch.tensor([[3, 4], [5, 6]])
    scores = torch.ones(2, 64)
    out = proc(ids, scores)
    assert out[0, 3] == pytest.approx(1 / 3) and out[1, 3] != pytest.approx(1 / 3)


def tgw_tail_free(scores: torch.Tensor, z: float) -> torch.Tensor:
    """text-generation-webui's TailFreeLogitsWarper (reference §5.2), one row, for parity."""
    sorted_logits, order = torch.sort(scores, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    d2 = probs.diff().diff().abs()
    cdf = (d2 / d2.sum()).cumsum(dim=-1)
    remove = torch.cat([torch.tensor([False]), cdf > z, torch.tensor([True])])
    return scores.masked_fill(remove.scatter(0, order, remove), -math.inf)


@pytest.mark.parametrize("k", [0, 40, 400])
def test_textgen_tfs_equals_text_generation_webui(k: int) -> None:
    # after top-k the removed tokens still add curvature at the cut in TGW's warper
    gen = torch.Generator().manual_seed(k)
    for _ in range(5):
        x = torch.randn(1000, generator=gen) * 3
        s = SamplerSettings(top_k=k, tfs=0.9)
        got = make_sampler(s).process(NO_CONTEXT, x)
        want = tgw_tail_free(top_k(x, k), 0.9)
        assert kept(got) == kept(want)


def test_textgen_chain_equals_composed_functions() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(800, generator=gen) * 3
    context = torch.randint(0, 800, (1000,), generator=gen)
    s = SamplerSettings(temperature=1.3, top_k=300, top_p=0.97, min_p=0.01, typical=0.98,
                        top_a=0.005, tfs=0.95, rep_pen=1.1, rep_pen_range=256,
                        presence_penalty=0.2, frequency_penalty=0.1)
    got = make_sampler(s).process(context, x)
    y = presence_frequency_penalty(context, repetition_penalty(context, x, 1.1, 256), 0.2, 0.1,
                                   256)
    y = tail_free(typical_p(top_p(top_k(y, 300), 0.97), 0.98), 0.95, "textgen")
    want = apply_temperature(min_p(top_a(y, 0.005), 0.01), 1.3)
    assert kept(got) == kept(want) and len(kept(got)) > 1
    assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)])


def test_ties_at_the_cut_keep_the_lowest_ids() -> None:
    x = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    assert kept(make_sampler(SamplerSettings(top_k=2)).process(NO_CONTEXT, x)) == [1, 2]
    assert kept(make_sampler(SamplerSettings(top_p=0.5, tfs=0.99)).process(NO_CONTEXT, x)) == \
        kept(top_p(tail_free(x, 0.99), 0.5))


@pytest.mark.parametrize("settings", [
    get_preset("limamono"), SamplerSettings(typical=0.9, min_p=0.05, seed=1),
    SamplerSettings(top_k=5, temperature=0.5), get_preset("limamono").replace(
        dialect="koboldcpp", sampler_order=(0, 6, 3, 4, 1, 2, 5), top_k=30, typical=0.95),
])
def test_samples_are_survivors(settings: SamplerSettings) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, generator=gen) * 2
    context = torch.randint(0, 300, (100,), generator=gen)
    sampler = make_sampler(settings)
    allowed = set(kept(sampler.process(context, x)))
    draws = {sampler.sample(context, x, gen) for _ in range(200)}
    assert draws <= allowed and len(draws) > 1


@pytest.mark.parametrize("bad", [[0.0, math.nan], [math.inf, 1.0], [-math.inf, -math.inf]])
def test_nan_or_inf_logits_are_reported(bad: list[float]) -> None:
    with pytest.raises(SamplerError, match="NaN") as info:
        make_sampler(SamplerSettings()).sample(NO_CONTEXT, torch.tensor(bad))
    assert info.value.field == "logits"


def test_bench_overhead_runs() -> None:
    ms = bench_overhead(vocab=2000, n=10, context=100)
    assert 0 < ms < 1000


# ----------------------------------------------------------------------------- CLI


def test_cli_samplers_commands() -> None:
    from typer.testing import CliRunner

    from limamono.cli import app

    runner = CliRunner()
    for args in (["samplers", "--help"], ["samplers", "list", "--help"],
                 ["samplers", "bench", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output
    listed = runner.invoke(app, ["samplers", "list"])
    assert listed.exit_code == 0
    assert "tfs=0.85, rep_pen=1.11, rep_pen_range=2048" in listed.output
    bench = runner.invoke(app, ["samplers", "bench", "--vocab", "500", "--n", "5",
                                "--dialect", "koboldcpp"])
    assert bench.exit_code == 0 and "limamono (koboldcpp):" in bench.output
    assert runner.invoke(app, ["samplers", "bench", "--preset", "nope"]).exit_code == 2


# ------------------------------------------------------------------------ properties

from hypothesis import given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

unit = st.floats(0.0, 1.0)
temperatures = st.one_of(st.just(0.0), st.floats(1e-3, 3.0))


@hyp_settings(max_examples=80, deadline=None)
@given(values=st.lists(st.floats(-30, 30), min_size=1, max_size=40), temperature=temperatures,
       k=st.integers(0, 50), p=unit, mp=unit, typ=unit, a=unit, z=unit,
       pen=st.floats(0.5, 2.0), rng=st.integers(0, 8),
       dialect=st.sampled_from(["textgen", "koboldcpp"]),
       order=st.permutations(list(range(7))))
def test_any_settings_keep_a_token_and_never_nan(values, temperature, k, p, mp, typ, a, z, pen,
                                                rng, dialect, order) -> None:
    s = SamplerSettings(temperature=temperature, top_k=k, top_p=p, min_p=mp, typical=typ,
                        top_a=a, tfs=z, rep_pen=pen, rep_pen_range=rng, rep_pen_slope=0.5,
                        dialect=dialect, sampler_order=tuple(order), seed=0)
    x = torch.tensor(values)
    context = torch.arange(len(values)) % 3
    sampler = make_sampler(s)
    out = sampler.process(context, x)
    assert not torch.isnan(out).any()
    survivors = kept(out)
    assert survivors
    assert sampler.sample(context, x) in survivors
