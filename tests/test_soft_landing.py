"""Soft landing (``limamono.engine.landing``): exact logits on a hand-made vocabulary, a
scripted engine that never ends on its own, and both real engines at their token cap."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from limamono.engine.landing import FORCE_EOS, MAX_BIAS, soft_landing_stage, window
from limamono.engine.loop import EngineBase, SlotStart
from limamono.samplers import SamplerSettings, get_preset, make_sampler
from limamono.samplers.vocab import Vocabulary
from limamono.style.spans import ends_sentence, open_span

PIECES = ["<eos>", "\n", ".", '"', "_", " He", " said", ' "', "Come", " in", " and", " sit",
          "!", "Maybe", " so"]
EOS, NL, DOT, QUOTE, UNDER, HE, SAID, OPEN, COME, IN, AND, SIT, BANG, MAYBE, SO = range(15)


def text_of(ids: Sequence[int]) -> str:
    return "".join(PIECES[i] for i in ids if i != EOS)


VOCAB = Vocabulary(len(PIECES), lambda t: [], PIECES, frozenset({EOS}))
LOGITS = torch.tensor([-2.0, -1.0, 0.5, 0.25, -0.5, 1.0, 2.0, 0.0, 1.5, 3.0, 2.5, -3.0, 0.75,
                       -1.25, 1.75])
PROMPT = [HE, SAID]  # two prompt tokens, then the reply


def process(reply: list[int], budget: int, settings: SamplerSettings | None = None,
            landing: bool = True) -> torch.Tensor:
    settings = settings or SamplerSettings()
    stage = soft_landing_stage(VOCAB, len(PROMPT), budget, text_of) if landing else None
    sampler = make_sampler(settings, VOCAB, landing=stage)
    return sampler.process(torch.tensor(PROMPT + reply), LOGITS.clone())


def test_the_window_is_an_eighth_of_the_budget_within_bounds():
    assert [window(b) for b in (4, 64, 96, 192, 384, 2000)] == [8, 8, 12, 24, 48, 48]


@pytest.mark.parametrize("settings", [SamplerSettings(), get_preset("limamono")])
def test_before_the_window_the_distribution_is_exactly_unchanged(settings):
    budget = 40  # window 8: tokens 1..32 of the reply are before it
    for reply in ([], [OPEN, COME], [OPEN, COME, IN] * 10 + [AND]):
        assert len(reply) + window(budget) < budget
        on = process(reply, budget, settings)
        off = process(reply, budget, settings, landing=False)
        assert torch.equal(on, off)
    assert torch.equal(process([], budget), LOGITS)  # neutral settings: the logits as given


def test_inside_the_window_sentence_ends_get_the_growing_bias():
    budget = 16  # window 8
    reply = [OPEN, COME, IN]  # ' "Come in': dialogue open, no full stop yet
    assert open_span(text_of(reply)) == "dialogue"
    for left in (8, 5, 4):  # at 3 left the full stop is forced (below)
        pad = [AND] * (budget - left - len(reply))
        out = process([*reply, *pad], budget)
        bias = MAX_BIAS * (8 - left + 1) / 8
        want = LOGITS.clone()
        want[[DOT, BANG]] += bias  # the pieces that end a sentence
        assert torch.equal(out, want), left
    assert torch.equal(process([AND] * 4 + reply, budget), LOGITS)  # left 9: outside


def test_after_the_full_stop_the_open_quote_is_favoured_then_forced():
    budget = 16
    reply = [OPEN, COME, IN, DOT]  # ' "Come in.'
    out = process([AND] * 8 + reply, budget)  # left 4
    want = LOGITS.clone()
    want[QUOTE] += MAX_BIAS * 5 / 8
    assert torch.equal(out, want)
    forced = process([AND] * 11 + reply, budget)  # left 1: only the closing quote remains
    assert torch.isfinite(forced).nonzero().flatten().tolist() == [QUOTE]
    assert forced[QUOTE] == LOGITS[QUOTE]


def test_with_one_token_of_slack_the_closer_is_forced_already():
    """Regression: at 2 tokens left after ' "Come in.' the quote was only favoured, so a
    word could follow (' "Come in. and') and the last token could then add only the full
    stop: the capped reply ended with its quote open (the llama.cpp eval, docs/EVAL.md)."""
    budget = 16
    reply = [OPEN, COME, IN, DOT]
    out = process([AND] * 10 + reply, budget)  # left 2, one closer needed
    assert torch.isfinite(out).nonzero().flatten().tolist() == [QUOTE]
    unpunctuated = process([AND] * 11 + [OPEN, COME, IN], budget)  # left 2, '.' then '"'
    assert torch.isfinite(unpunctuated).nonzero().flatten().tolist() == [DOT]
    out = process([AND] * 10 + [OPEN, COME, IN], budget)  # left 3: one token of slack
    assert torch.isfinite(out).nonzero().flatten().tolist() == [DOT]


def test_the_last_two_tokens_force_a_full_stop_then_the_closer():
    budget = 16
    reply = [MAYBE, SO]
    assert open_span("_" + text_of(reply)) == "thought"
    # ' and ... and\n_Maybe so': left 2, a thought open, no full stop
    out = process([AND] * 10 + [NL, UNDER, *reply], budget)
    assert torch.isfinite(out).nonzero().flatten().tolist() == [DOT]
    out = process([AND] * 10 + [NL, UNDER, *reply, DOT], budget)  # left 1
    assert torch.isfinite(out).nonzero().flatten().tolist() == [UNDER]


def test_at_a_sentence_end_the_reply_is_steered_to_end_then_ended():
    budget = 16
    reply = [OPEN, COME, IN, DOT, QUOTE]  # ' "Come in."' : a landing point
    assert ends_sentence(text_of(reply))
    out = process([AND] * 5 + reply, budget)  # left 6
    want = LOGITS.clone()
    want[[EOS, NL]] += MAX_BIAS * 3 / 8
    assert torch.equal(out, want)
    ended = process([AND] * (12 - FORCE_EOS) + [*reply[:-1], QUOTE], budget)
    assert torch.isfinite(ended).nonzero().flatten().tolist() == [EOS]


def test_a_ban_wins_over_the_landing():
    budget = 16
    reply = [AND] * 11 + [OPEN, COME, IN, DOT]  # left 1: the quote would be forced
    banned = SamplerSettings(custom_token_bans=(QUOTE,))
    assert torch.equal(process(reply, budget, banned),
                       process(reply, budget, banned, landing=False))


def test_the_setting_is_on_in_the_limamono_presets_and_a_wire_field():
    from limamono.samplers.wire import settings_from_fields

    assert get_preset("limamono").soft_landing and get_preset("limamono-dry").soft_landing
    assert not get_preset("greedy").soft_landing and not SamplerSettings().soft_landing
    off = settings_from_fields({"soft_landing": False}, get_preset("limamono"), "textgen")
    assert off.soft_landing is False


# ----------------------------------------------------------- the decode loop (layer 1-3)

WORDS = ["<eos>", " He", " said", ' "', "Come", " in", " and", " sit", ".", '"', " She",
         " nodded"]
#: Greedy decoding never ends: ' "Come in and sit in and sit ...' (no stop, no quote).
SCRIPT = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 5, 10: 11, 11: 8, 8: 0}


class ScriptedSlot:
    def __init__(self) -> None:
        self.ids: list[int] = []

    def eval(self, ids: Sequence[int]) -> torch.Tensor:
        self.ids += list(ids)
        logits = torch.full((len(WORDS),), -5.0)
        logits[SCRIPT.get(self.ids[-1], 0)] = 5.0
        return logits

    def crop(self, keep: int) -> None:
        del self.ids[keep:]


class ScriptedEngine(EngineBase):
    model_name = "scripted"
    context_length = 128
    eos_ids = frozenset({0})

    def tokenize(self, text: str) -> list[int]:
        ids, rest = [], text
        while rest:
            word = max((w for w in WORDS[1:] if rest.startswith(w)), key=len)
            ids.append(WORDS.index(word))
            rest = rest[len(word):]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(WORDS[i] for i in ids)

    def _reply_text(self, ids: Sequence[int]) -> str:
        return "".join(WORDS[i] for i in ids if i != 0)

    def _open_slot(self, ids: list[int]) -> SlotStart:
        return SlotStart(ScriptedSlot(), 0)

    def _close_slot(self, slot: object, ids: object) -> None:
        pass

    def _clear_slots(self) -> None:
        pass


def test_a_reply_at_its_cap_lands_with_its_quote_closed():
    engine = ScriptedEngine()
    on = get_preset("greedy").replace(soft_landing=True)
    off = engine.generate(" He", get_preset("greedy"), 24)
    landed = engine.generate(" He", on, 24)
    assert off.text == ' said "Come in and sit' + " in and sit" * 6  # 6 + 18 tokens
    assert off.finish_reason == "length" and open_span(off.text) == "dialogue"
    # The closer comes with a token to spare, and that token ends the reply (EOS).
    assert (landed.finish_reason, landed.completion_tokens) == ("stop", 24), landed
    assert landed.text.endswith('."') and ends_sentence(landed.text)
    # The first 24 - 8 tokens (before the window) are the same.
    ids_on, ids_off = engine.tokenize(landed.text), engine.tokenize(off.text)
    assert ids_on[:16] == ids_off[:16] and ids_on != ids_off


def test_a_reply_that_ends_before_the_window_is_unchanged():
    engine = ScriptedEngine()
    on = get_preset("greedy").replace(soft_landing=True)
    for budget in (12, 40):
        a = engine.generate(" She", on, budget)
        b = engine.generate(" She", get_preset("greedy"), budget)
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason) == (" nodded.", "stop")


# ----------------------------------------------------------------- the real engines

PROMPTS = ['Mira looked up from the lamp. "Who\'s there?"\n\n### Response: (length = short)\n'
           'Mira: "', "Tom:", "She whispered, _"]


def _check_landed(engine: EngineBase) -> None:
    """Seeded replies with and without the landing: the same first 16 tokens (the window of
    a 24-token budget is 8), and every reply that reaches the cap ends a sentence."""
    settings = get_preset("limamono")
    assert settings.soft_landing
    capped = 0
    for seed, prompt in enumerate(PROMPTS):
        ids = engine.fit_prompt(prompt, 24)
        engine.clear_cache()  # both from a full prefill: no float drift from a cached prefix
        on = list(engine.stream_tokens(ids, settings.replace(seed=seed), 24))
        engine.clear_cache()
        off = list(engine.stream_tokens(ids, settings.replace(seed=seed, soft_landing=False),
                                        24))
        assert on[:16] == off[:16]
        if len(off) == 24 and off[-1] not in engine.eos_ids:  # cut at the cap without it
            capped += 1
            # with it: cut at a sentence end, or ended (EOS) at one
            assert ends_sentence(engine._reply_text(on)), engine._reply_text(on)
    assert capped  # random tiny models seldom end on their own within 24 tokens


@pytest.mark.slow
def test_the_torch_engine_lands_at_its_cap(tiny_model_dir):
    from limamono.engine import load_engine

    _check_landed(load_engine(str(tiny_model_dir), dtype="fp32", backend="torch"))


@pytest.mark.slow
def test_the_torch_engine_lands_on_the_mistral_tokenizer(tiny_mistral_dir):
    from limamono.engine import load_engine

    _check_landed(load_engine(str(tiny_mistral_dir), dtype="fp32", backend="torch"))


@pytest.mark.slow
def test_the_llamacpp_engine_lands_at_its_cap():
    from limamono.engine import load_engine

    pytest.importorskip("llama_cpp")
    _check_landed(load_engine("smollm2-135m", backend="llamacpp", threads=1,
                              context_length=512))


# ----------------------------------------------------------------- where it is chosen

def test_cards_written_before_the_setting_get_it_from_their_preset(tmp_path):
    import dataclasses
    import json

    from limamono.models.adapter_card import read_card

    values = {k: v for k, v in dataclasses.asdict(get_preset("limamono")).items()
              if k != "soft_landing"}  # a card from before the soft landing
    (tmp_path / "limamono.json").write_text(json.dumps(
        {"format_version": 1, "sampler_preset": {"name": "limamono", "values": values}}))
    card = read_card(tmp_path)
    assert card is not None and card.sampler_settings() == get_preset("limamono")
    values["soft_landing"] = False  # a card that says so keeps it off
    (tmp_path / "limamono.json").write_text(json.dumps(
        {"format_version": 1, "sampler_preset": {"name": "limamono", "values": values}}))
    card = read_card(tmp_path)
    assert card is not None and card.sampler_settings().soft_landing is False


def test_eval_and_serve_turn_it_off_on_request(tmp_path):
    from pathlib import Path

    from limamono.cli.serve_cmd import server_config
    from limamono.engine.protocol import Completion
    from limamono.evaluate.run import EvalConfig, generate_samples, held_out, make_prompts

    class Recorder:
        def __init__(self) -> None:
            self.settings: list[SamplerSettings] = []

        def generate(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                     stop: Sequence[str] = (), **kwargs: object) -> Completion:
            self.settings.append(settings)
            return Completion(" Fine.", "stop", 10, 2, None)

    data = Path(__file__).parent / "assets" / "eval_data"
    for flag in (True, False):
        config = EvalConfig(data=data, lengths=("short", "long"), samples=1,
                            soft_landing=flag)
        engine = Recorder()
        generate_samples(engine, make_prompts(held_out(data), config), config)
        assert [s.soft_landing for s in engine.settings] == [flag, flag]
    on, _ = server_config(None, 4, None, [], 1.0, 64, "none")
    off, _ = server_config(None, 4, None, [], 1.0, 64, "none", soft_landing=False)
    assert on.sampler_settings().soft_landing is True
    assert off.sampler_settings().soft_landing is False
