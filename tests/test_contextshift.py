"""ContextShift: reuse a chat's cache after its oldest turns were left out, without re-reading.

The plan (which cached tokens to drop and which to keep) is pure and tested exactly; the
llama.cpp engine is tested on the embedded model: the shifted prompt keeps the Instruction
block, only the new tokens are evaluated, and the next-token distribution stays within the
stated tolerance of a fresh evaluation of the same prompt.
"""

from __future__ import annotations

import pytest

from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.engine.kvreuse import MIN_SHIFT_MATCH, Reuse, plan_reuse

# -- the plan (pure) ----------------------------------------------------------------------

HEAD = [1, 2, 3]
OLD, KEPT, NEW = list(range(100, 130)), list(range(200, 240)), [7, 8, 9]


def test_a_grown_prompt_reuses_the_whole_cache_as_a_prefix():
    cached = HEAD + OLD
    assert plan_reuse(cached, cached + NEW) == Reuse(len(cached))


def test_the_same_prompt_leaves_one_token_to_evaluate():
    assert plan_reuse(HEAD + OLD, HEAD + OLD) == Reuse(len(HEAD + OLD) - 1)


def test_dropped_turns_are_found_after_the_head_and_the_kept_ones_matched():
    plan = plan_reuse(HEAD + OLD + KEPT, HEAD + KEPT + NEW)
    assert plan == Reuse(prefix=3, dropped=30, matched=40)
    assert plan.reused == 43


def test_no_shift_when_disabled_or_the_match_is_short():
    assert plan_reuse(HEAD + OLD + KEPT, HEAD + KEPT + NEW, shift=False) == Reuse(3)
    short = KEPT[:MIN_SHIFT_MATCH - 1]
    assert plan_reuse(HEAD + OLD + short, HEAD + short + NEW) == Reuse(3)


def test_no_shift_without_a_common_head():
    assert plan_reuse(OLD + KEPT, KEPT + NEW) == Reuse(0)


def test_the_shifted_match_still_leaves_one_token_to_evaluate():
    plan = plan_reuse(HEAD + OLD + KEPT, HEAD + KEPT)
    assert plan == Reuse(prefix=3, dropped=30, matched=39)


# -- on the llama.cpp engine --------------------------------------------------------------

LINES = [
    "Good evening. Is the ferry still running tonight, or have I missed the last one?",
    "You have missed it by ten minutes, I am afraid. The next boat leaves at six.",
    "Six in the morning? Then I will need somewhere to sleep. Is there an inn nearby?",
    "The Anchor has rooms above the bar. Tell Marta that the pilot sent you.",
    "Thank you. Do you always work this late, down here on the docks?",
    "Only when the fog comes in. Somebody has to keep the lamps lit for the boats.",
    "It must be lonely work. What do you think about, out here all night?",
    "My father, mostly. He kept these lamps before me, and his mother before him.",
    "That is a long line of lamp keepers. Did you ever want to do anything else?",
    "Once I wanted to be a sailor. Then I saw what the sea does to boats in winter.",
    "Fair enough. Can I buy you a cup of tea at the Anchor before I go up?",
    "Marta makes it too strong, but yes. Let me lock the shed first.",
]


def _chat(turns: int) -> Conversation:
    messages = [Message("user" if i % 2 == 0 else "char", line)
                for i, line in enumerate(LINES[:turns])]
    return Conversation(character=Character("Mira", "Occupation: harbour pilot"),
                        user=User("Sam"), scenario="The docks on a foggy night.",
                        messages=messages)


@pytest.fixture(scope="module")
def shifting():
    """Two llama.cpp engines on the embedded model: one shifts, one always starts fresh."""
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engines = (LlamaCppEngine(embedded_gguf(), context_length=320, threads=1),
               LlamaCppEngine(embedded_gguf(), context_length=320, threads=1, cache_entries=0))
    yield engines
    for engine in engines:
        engine.close()


def _kl(fresh, shifted) -> float:
    """KL(fresh || shifted) of the next-token distributions, in nats."""
    import torch

    p, q = torch.log_softmax(fresh, -1), torch.log_softmax(shifted, -1)
    return float((p.exp() * (p - q)).sum())


def test_shift_keeps_the_instruction_block_and_evaluates_only_the_new_turn(shifting):
    engine, fresh = shifting
    assert engine.shift
    engine.clear_cache()
    previous: list[int] = []
    for turns in range(7, len(LINES) + 1):
        prompt = fmt.render(_chat(turns), open_response=True)
        ids = engine.fit_prompt(prompt, 64)
        head = prompt[:prompt.index(fmt.BLOCK_SEP + fmt.INPUT)]
        assert engine.detokenize(ids).startswith(head)
        shifted = engine.prompt_logits(ids)
        stats = engine.stats
        if stats.last_shifted:
            break
        previous = ids
    else:
        pytest.fail("the chat never outgrew the context")
    assert len(ids) < len(engine.tokenize(prompt))  # the policy left old turns out
    assert stats.last_reused + stats.last_evaluated == len(ids)
    new_turn = len(engine.tokenize(LINES[turns - 1])) + 20  # + headers
    assert stats.last_evaluated <= new_turn  # not the whole prompt again
    plan = plan_reuse(previous, ids)
    assert (stats.last_shifted, stats.last_reused) == (plan.dropped, plan.reused)
    dropped = engine.detokenize(previous[plan.prefix:plan.prefix + plan.dropped])
    # Whole turns after the head; token boundaries put the shared "###" on the other side.
    assert ("###" + dropped).startswith(fmt.INPUT) and dropped.endswith(fmt.BLOCK_SEP + "###")
    assert LINES[0] in dropped and LINES[0] not in engine.detokenize(ids)
    # Tolerance: the kept turns' keys were computed while the dropped turns were in view,
    # so the distribution differs a little from a fresh read of the same prompt (measured
    # 0.02-0.10 nats on longer chats); the most likely token is the same.
    reference = fresh.prompt_logits(ids)
    assert int(shifted.argmax()) == int(reference.argmax())
    assert _kl(reference, shifted) < 0.1


def test_shifting_positions_re_rotates_the_keys(shifting):
    """Moving a cached sequence 100 positions on (``seq_add``) gives the logits of reading it
    there fresh: RoPE depends on relative positions only. Tolerance: f16 keys round
    differently at other positions (reading the same text fresh at 0 and at 100 differs by
    0.006 nats here), so KL < 0.01 nats and the same most likely token."""
    engine, _ = shifting
    ids = engine.tokenize(" ".join(LINES[:2]))
    seq = engine._seqs[0]  # the one slot; its positions are the indexes of seq.ids
    engine.clear_cache()
    seq.ids = [0] * 100
    expected = seq.eval(ids)  # read at positions 100...
    engine.clear_cache()
    seq.eval(ids[:-1])
    engine._ll.llama_memory_seq_add(engine._mem, 0, 0, -1, 100)
    seq.ids = [0] * 100 + seq.ids
    moved = seq.eval(ids[-1:])  # llama.cpp refuses a gap in positions: the last token
    engine.clear_cache()
    assert _kl(expected, moved) < 0.01
    assert int(moved.argmax()) == int(expected.argmax())


def test_no_shift_engine_re_reads_the_kept_turns(shifting):
    _, fresh = shifting
    prompt = fmt.render(_chat(len(LINES)), open_response=True)
    ids = fresh.fit_prompt(prompt, 64)
    fresh.prompt_logits(ids)
    assert (fresh.stats.last_reused, fresh.stats.last_shifted) == (0, 0)
    assert fresh.stats.last_evaluated == len(ids)


# -- on the torch engine (RoPE re-rotation of a DynamicCache) ----------------------------


@pytest.fixture(scope="module")
def torch_pair(tiny_model_dir):
    from limamono.engine import load_engine
    from limamono.engine.torch_engine import Engine

    engine = load_engine(str(tiny_model_dir), dtype="fp32", threads=1, backend="torch")
    return engine, Engine(engine.model, engine.tokenizer, cache_entries=0)


def _layer0_keys(engine):
    return engine.prompt_cache._entries[-1].cache.layers[0].keys


def test_torch_shift_re_rotates_the_kept_keys_exactly(torch_pair):
    """Layer 0's keys depend only on the token and its position, so after a shift they
    must equal a fresh read's up to fp32 rounding (deeper layers saw the dropped turn)."""
    engine, _ = torch_pair
    assert engine.rope is not None
    head, dropped, kept = (engine.tokenize(LINES[0]), engine.tokenize(" " + LINES[1]),
                           engine.tokenize(" " + LINES[2] + " " + LINES[3]))
    engine.clear_cache()
    engine.prompt_logits(head + dropped + kept)
    engine.prompt_logits(head + kept + [13])
    assert (engine.stats.last_shifted, engine.stats.last_reused) == (
        len(dropped), len(head + kept))
    shifted = _layer0_keys(engine)
    engine.clear_cache()
    engine.prompt_logits(head + kept + [13])
    fresh = _layer0_keys(engine)
    assert shifted.shape == fresh.shape
    assert float((shifted - fresh).abs().max()) < 1e-4


def test_torch_chat_shifts_instead_of_re_reading(torch_pair):
    from limamono.engine.torch_engine import Engine

    model, tokenizer = torch_pair[0].model, torch_pair[0].tokenizer
    engine = Engine(model, tokenizer, context_length=320)
    engine.generate(fmt.render(_chat(7), open_response=True), get_preset_greedy(), 4)
    for turns in range(8, len(LINES) + 1):
        prompt = fmt.render(_chat(turns), open_response=True)
        result = engine.generate(prompt, get_preset_greedy(), 4)
        if engine.stats.last_shifted:
            break
    else:
        pytest.fail("the chat never outgrew the context")
    assert engine.stats.last_evaluated < result.prompt_tokens // 3
    no_shift = Engine(model, tokenizer, context_length=320)
    no_shift.rope = None  # what a model without plain RoPE gets
    no_shift.prompt_cache._shift = None
    assert no_shift.generate(prompt, get_preset_greedy(), 4).prompt_tokens == \
        result.prompt_tokens


def get_preset_greedy():
    from limamono.samplers import get_preset

    return get_preset("greedy")
