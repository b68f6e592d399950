"""Banned phrases with backtracking (KoboldCpp/TabbyAPI ``banned_strings``).

KoboldCpp's "antislop" (``gpttype_adapter.cpp``: ``banned_phrases``, ``ContextRewind``,
``antislop_banned_token_ids``) rewinds to the token where a banned phrase began, bans that
token at that position and samples again, holding back output that could still become a
phrase. Tested here: the pure filter on hand-made tokens, a scripted engine whose
distribution forces the phrase, and the tiny torch model (the KV cache after a rewind).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from limamono.engine.loop import EngineBase, SlotStart
from limamono.engine.phrasebans import PhraseFilter, fold
from limamono.samplers import SamplerSettings, get_preset

# ------------------------------------------------------------------- the pure filter

PIECES = ["<eos>", "I", " wh", "isp", "ered", " softly", " Whisper", ".", " w"]


def decode(ids: Sequence[int]) -> str:
    return "".join(PIECES[i] for i in ids if i != 0)


def feed(bans: PhraseFilter, ids: list[int]) -> list:
    return [bans.add(i) for i in ids]


def test_phrase_across_tokens_rewinds_to_the_token_where_it_began() -> None:
    bans = PhraseFilter(["WHISPER"], decode)
    first, wh, isp, ered = feed(bans, [1, 2, 3, 4])
    assert first.text == "I"  # " wh" could begin "whisper": held back, space and all
    assert (wh.text, isp.text) == ("", "")
    assert (ered.rollback, ered.ban, ered.phrase) == (3, 2, "whisper")
    assert bans.text == "I" and bans.rolled_back == 3
    # sampled again at that position: " softly" releases everything
    assert bans.add(5).text == " softly"
    assert bans.flush() == ""


def test_a_phrase_inside_one_token_and_case_folding() -> None:
    bans = PhraseFilter(["whisper"], decode)
    assert feed(bans, [1, 6])[1].rollback == 1  # " Whisper" holds the whole phrase
    # folding keeps offsets: "İ".lower() is two characters, so it is left as it is
    assert fold("İ Whisper") == "İ whisper"


def test_held_text_is_released_when_it_cannot_become_a_phrase() -> None:
    bans = PhraseFilter(["whisper"], decode)
    assert bans.add(1).text == "I"
    assert bans.add(8).text == ""  # " w"
    assert bans.add(7).text == " w."  # " w." cannot grow into "whisper"
    bans = PhraseFilter(["whisper"], decode)
    feed(bans, [1, 2, 3])
    assert bans.flush() == " whisp"  # the reply ended: a partial phrase is harmless


def test_bounded_retries_then_the_phrase_is_allowed_with_a_note(caplog) -> None:
    bans = PhraseFilter(["whisper"], decode, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="limamono.engine.torch_engine"):
        assert feed(bans, [1, 6])[1].rollback == 1
        assert bans.add(6).rollback == 1  # the second retry at reply token 1
        allowed = bans.add(6)
    assert allowed.rollback == 0 and allowed.text == " Whisper"
    assert "allowed after 2 retries at reply token 1" in caplog.text


# ------------------------------------------------------- a scripted engine (layer 2)

WORDS = ["<eos>", " She", " felt", " a", " shiver", " down", " her", " spine", ".", " chill",
         " prickle"]
#: The next tokens each token prefers, best first: greedy decoding of " She" gives
#: " felt a shiver down her spine." unless " shiver" is banned after " a".
SCRIPT = {1: [2], 2: [3], 3: [4, 9, 10], 4: [5], 5: [6], 6: [7], 7: [8], 8: [0], 9: [5],
          10: [8]}


class ScriptedSlot:
    """A KV "cache" that remembers the evaluated tokens; logits follow ``SCRIPT``."""

    def __init__(self, log: list[list[int]]) -> None:
        self.ids: list[int] = []
        self.log = log

    def eval(self, ids: Sequence[int]):
        import torch

        self.ids += list(ids)
        self.log.append(list(self.ids))
        logits = torch.full((len(WORDS),), -20.0)
        for rank, token in enumerate(SCRIPT.get(self.ids[-1], [0])):
            logits[token] = 10.0 - 3 * rank
        return logits

    def crop(self, keep: int) -> None:
        del self.ids[keep:]


class ScriptedEngine(EngineBase):
    model_name = "scripted"
    context_length = 64
    eos_ids = frozenset({0})

    def __init__(self) -> None:
        super().__init__()
        self.evals: list[list[int]] = []

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
        return SlotStart(ScriptedSlot(self.evals), 0)

    def _close_slot(self, slot, ids) -> None:
        pass

    def _clear_slots(self) -> None:
        pass


def banned(*phrases: str) -> SamplerSettings:
    return get_preset("greedy").replace(banned_strings=phrases)


def test_scripted_engine_baseline() -> None:
    assert ScriptedEngine().generate(" She", get_preset("greedy"), 20).text == \
        " felt a shiver down her spine."


@pytest.mark.parametrize("phrase, taken_back", [("shiver down", 2), ("SHIVER DOWN", 2),
                                                ("ver down h", 3)])
def test_the_phrase_never_appears_not_even_in_a_chunk(phrase: str, taken_back: int) -> None:
    """The last case begins inside " shiver" and ends inside " her": the rewind goes back
    to " shiver" (3 tokens) and bans it there."""
    engine = ScriptedEngine()
    chunks = [c.text for c in engine.stream_text(" She", banned(phrase), 20)]
    assert "".join(chunks) == " felt a chill down her spine."
    assert not any("shiver" in c for c in chunks)
    assert engine.stats.rolled_back_tokens == taken_back
    # layer 1 re-ran the token before the rewound one and continued from there
    assert engine.evals[-1] == engine.tokenize(" She felt a chill down her spine.")


def test_two_phrases_and_a_second_rewind_at_the_same_position() -> None:
    engine = ScriptedEngine()
    reply = engine.generate(" She", banned("shiver", "chill"), 20)
    assert reply.text == " felt a prickle." and reply.completion_tokens == 5
    assert engine.stats.rolled_back_tokens == 2


def test_banning_the_only_likely_token_takes_the_next_one() -> None:
    """After " felt" the script offers only " a"; banned, the next most likely is EOS."""
    engine = ScriptedEngine()
    assert engine.generate(" She", banned(" a "), 20).text == " felt"


def test_stop_strings_still_work_with_bans() -> None:
    engine = ScriptedEngine()
    reply = engine.generate(" She", banned("shiver"), 20, stop=[" her"])
    assert reply.text == " felt a chill down" and reply.stop_string == " her"


def test_settings_validate_banned_strings() -> None:
    from limamono.samplers import SamplerError

    assert SamplerSettings(banned_strings=["x", "", "  "]).banned_strings == ("x",)
    with pytest.raises(SamplerError) as info:
        SamplerSettings(banned_strings=["x" * 201])
    assert info.value.field == "banned_strings[0]"
    with pytest.raises(SamplerError) as info:
        SamplerSettings(banned_strings="one phrase")
    assert info.value.field == "banned_strings"


# -------------------------------------------------------------- the tiny torch model


def test_torch_engine_rewind_and_cache(tiny_model_dir) -> None:
    """Ban the text of greedy reply tokens 2-3: the reply avoids it, and continuing from
    the cache after the rewind equals a fresh greedy run (fresh prefill) from there."""
    import torch

    from limamono.engine import load_engine

    engine = load_engine(str(tiny_model_dir), dtype="fp32", threads=1)
    with torch.no_grad():
        engine.model.model.embed_tokens.weight.mul_(8)  # sharp logits: clear greedy choices
    prompt = "Mira looked out over the harbour. The boats were"
    ids = engine.tokenize(prompt)
    settings = get_preset("limamono").replace(seed=5)
    plain = list(engine.stream_tokens(ids, settings, 12))
    phrase = next(p for k in range(1, 10)
                  if len(p := engine._reply_text(plain[k:k + 2]).strip()) >= 3
                  and p.lower() not in engine._reply_text(plain[:k + 1]).lower())
    engine.clear_cache()
    chunks = list(engine.stream_text(prompt, settings.replace(banned_strings=(phrase,)), 12))
    text = "".join(c.text for c in chunks)
    assert phrase.lower() not in text.lower()
    assert not any(phrase.lower() in c.text.lower() for c in chunks)
    assert engine.stats.rolled_back_tokens >= 1
    # The KV cache that went through the rewind (crop + re-run) now holds prompt + reply:
    # evaluating it again reuses all but its last token and must give the logits of a
    # fresh prefill of the same tokens.
    held = engine.prompt_cache.token_ids()[-1]
    assert held[:len(ids)] == ids and len(held) > len(ids) + 3
    reused = engine.prompt_logits(held)
    assert engine.stats.last_reused == len(held) - 1
    engine.clear_cache()
    fresh = engine.prompt_logits(held)
    assert engine.stats.last_reused == 0
    assert torch.allclose(reused, fresh, atol=1e-4)


def test_cli_generate_ban(tiny_model_dir) -> None:
    from typer.testing import CliRunner

    from limamono.cli import app

    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "The boats were",
            "--preset", "greedy", "-n", "8", "--threads", "1", "--dtype", "fp32"]
    runner = CliRunner()
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    words = plain.stdout.split()
    assert len(words) >= 2
    phrase = words[1]
    banned_run = runner.invoke(app, [*args, "--ban", phrase.upper()])
    assert banned_run.exit_code == 0, banned_run.output
    assert phrase.lower() not in banned_run.stdout.lower()
