"""The engine contract that both engines pass: torch (tiny random model) and llama.cpp.

Streaming, stop strings, UTF-8, cancellation, finish reasons, seeded equality with and
without KV reuse, and layer 1's rollback (a banned-phrase filter's backtracking). The
llama.cpp engine runs the embedded model's GGUF as shipped (loads in well under a second);
``make setup`` builds llama-cpp-python, so these tests never skip.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from limamono.samplers import get_preset

PROMPT = "Mira looked out over the harbour. The boats were"


@pytest.fixture(scope="module")
def torch_engine(tiny_model_dir):
    """The tiny random model in fp32 with sharpened logits (see test_engine.sharp_engine)."""
    import torch

    from limamono.engine import load_engine

    engine = load_engine(str(tiny_model_dir), dtype="fp32", threads=1)
    with torch.no_grad():
        engine.model.model.embed_tokens.weight.mul_(8)
    return engine


@pytest.fixture(scope="module")
def llamacpp_engine():
    """The embedded model's Q4_1 GGUF in llama.cpp, one thread (the machine is shared)."""
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engine = LlamaCppEngine(embedded_gguf(), context_length=2048, threads=1)
    yield engine
    engine.close()


@pytest.fixture(params=["torch", "llamacpp"])
def engine(request):
    """Each engine in turn, with an empty KV cache."""
    made = request.getfixturevalue(f"{request.param}_engine")
    made.clear_cache()
    return made


def _greedy():
    return get_preset("greedy")


def _seeded(seed: int = 3):
    # The card's samplers without the soft landing (tests/test_soft_landing.py has it):
    # these tests count on replies running to their cap.
    return replace(get_preset("limamono"), seed=seed, soft_landing=False)


def test_rollback_resamples_the_same_greedy_token(engine):
    ids = engine.tokenize(PROMPT)
    stream = engine.stream_tokens(ids, _greedy(), 8)
    first = [next(stream) for _ in range(6)]
    stream.rollback(3)
    rest = list(stream)
    assert first[:3] + rest == list(engine.stream_tokens(ids, _greedy(), 8))


def test_rollback_with_a_ban_takes_another_token_and_the_cache_stays_right(engine):
    ids = engine.tokenize(PROMPT)
    stream = engine.stream_tokens(ids, _greedy(), 8)
    first = [next(stream) for _ in range(4)]
    stream.rollback(2, ban={first[2]})
    replacement = next(stream)
    assert replacement != first[2]
    rest = list(stream)
    assert len(rest) == 8 - 3
    # The cache after the rollback held exactly prompt + the kept tokens: continuing from
    # it equals a fresh greedy run over prompt + kept + replacement.
    engine.clear_cache()
    fresh = list(engine.stream_tokens(ids + first[:2] + [replacement], _greedy(), len(rest)))
    assert rest == fresh


def test_rollback_of_the_whole_reply_and_after_the_last_token(engine):
    ids = engine.tokenize(PROMPT)
    expected = list(engine.stream_tokens(ids, _greedy(), 3))
    stream = engine.stream_tokens(ids, _greedy(), 3)
    got = [next(stream) for _ in range(3)]
    stream.rollback(3)  # the last allowed token was out: the stream continues
    assert got == expected and list(stream) == expected


def test_rollback_bounds_are_checked(engine):
    stream = engine.stream_tokens(engine.tokenize(PROMPT), _greedy(), 2)
    next(stream)
    with pytest.raises(ValueError, match="rollback n=2: must be between 1 and the 1"):
        stream.rollback(2)
    with pytest.raises(ValueError, match="n=0"):
        stream.rollback(0)
    list(stream)
    with pytest.raises(ValueError, match="after the stream ended"):
        stream.rollback(1)


def test_seeded_sampling_is_the_same_with_and_without_reuse(engine):
    first = engine.generate(PROMPT, _seeded(11), 12)
    again = engine.generate(PROMPT, _seeded(11), 12)
    assert first == again
    assert engine.stats.last_reused == first.prompt_tokens - 1


def test_streaming_equals_generate_and_counts_tokens(engine):
    chunks = list(engine.stream_text(PROMPT, _seeded(), 20))
    whole = engine.generate(PROMPT, _seeded(), 20)
    assert "".join(c.text for c in chunks) == whole.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == whole.finish_reason == "length"
    assert whole.completion_tokens == 20
    assert whole.prompt_tokens == len(engine.tokenize(PROMPT))


def test_max_tokens_ends_with_length(engine):
    result = engine.generate(PROMPT, _seeded(5), 5)
    assert (result.finish_reason, result.completion_tokens, result.stop_string) == \
        ("length", 5, None)


def test_stop_string_across_token_boundary_is_cut_with_finish_stop(engine):
    chunks = [c.text for c in engine.stream_text(PROMPT, _seeded(), 30)]
    full = "".join(chunks)
    # A stop that starts in the 3rd non-empty chunk and ends in the 4th.
    texts = [t for t in chunks if t]
    before = len("".join(texts[:3]))
    stop = full[before - 2:before + 2]
    assert len(stop) == 4
    streamed = list(engine.stream_text(PROMPT, _seeded(), 30, stop=[stop]))
    text = "".join(c.text for c in streamed)
    assert text == full[:full.index(stop)]
    assert all(stop not in c.text for c in streamed)
    assert (streamed[-1].finish_reason, streamed[-1].stop_string) == ("stop", stop)
    assert streamed[-1].completion_tokens < 30


def test_eos_ends_with_stop_and_no_stop_string(engine):
    [token] = engine.stream_tokens(engine.tokenize(PROMPT), _seeded(), 1)
    saved = engine.eos_ids
    engine.eos_ids = frozenset({token})
    try:
        result = engine.generate(PROMPT, _seeded(), 10)
    finally:
        engine.eos_ids = saved
    assert (result.text, result.finish_reason, result.stop_string, result.completion_tokens) \
        == ("", "stop", None, 1)


def test_utf8_is_never_split_in_engine_chunks(engine, monkeypatch):
    text = "Her café smelled of crème brûlée 🍮; she hummed ♪ and grinned 😀."
    ids = engine.tokenize(text)
    monkeypatch.setattr(engine, "stream_tokens", lambda *a, **k: (i for i in ids))
    chunks = list(engine.stream_text("x", _seeded(), len(ids)))
    assert all("\ufffd" not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == "length"


def test_cancel_from_another_thread_ends_with_cancelled(engine):
    cancel = threading.Event()
    chunks = []
    for chunk in engine.stream_text(PROMPT, _seeded(), 1500, cancel=cancel):
        chunks.append(chunk)
        if len(chunks) == 2:
            setter = threading.Thread(target=cancel.set)
            setter.start()
            setter.join()
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].completion_tokens < 10


def test_seeded_chat_turns_are_the_same_with_and_without_reuse(engine):
    prompts, replies = [PROMPT], []
    for turn in range(3):
        replies.append(engine.generate(prompts[-1], _seeded(turn), 16))
        if turn:  # the previous prompt is reused whole (re-tokenised reply text may differ)
            assert engine.stats.last_reused >= replies[-2].prompt_tokens - 1
        prompts.append(f"{prompts[-1]}{replies[-1].text}\nSam: and then?\nMira:")
    for turn, expected in enumerate(replies):
        engine.clear_cache()
        assert engine.generate(prompts[turn], _seeded(turn), 16) == expected
        assert engine.stats.last_reused == 0


def test_prompts_start_as_the_models_tokenizer_says(engine):
    # SmolLM2's convention (HF tokenizer and the GGUF's add_bos flag alike): no BOS.
    assert engine.start_ids == ()
    assert engine.prompt_ids(PROMPT) == engine.tokenize(PROMPT)
    saved, engine.start_ids = engine.start_ids, (1,)  # Llama-family: BOS before every prompt
    try:
        assert engine.prompt_ids(PROMPT) == [1, *engine.tokenize(PROMPT)]
        assert engine.fit_prompt(PROMPT, 8) == [1, *engine.tokenize(PROMPT)]
    finally:
        engine.start_ids = saved


class _FixedLogits:
    """A KV slot that always answers the same logits (to compare the sampling alone)."""

    def __init__(self, logits):
        self.logits = logits

    def eval(self, ids):
        return self.logits.clone()

    def crop(self, keep):
        pass


@pytest.mark.parametrize("dialect", ["textgen", "koboldcpp"])
def test_both_engines_draw_the_same_tokens_from_the_same_logits(torch_engine, llamacpp_engine,
                                                                monkeypatch, dialect):
    import torch

    from limamono.engine.loop import SlotStart

    logits = 3 * torch.randn(49152, generator=torch.Generator().manual_seed(0))
    logits[[0, 2, 4]] = float("-inf")  # no end-of-sequence token in either engine
    settings = replace(get_preset("limamono"), seed=9, dialect=dialect)
    draws = []
    for engine in (torch_engine, llamacpp_engine):
        monkeypatch.setattr(engine, "_open_slot",
                            lambda ids: SlotStart(_FixedLogits(logits), 0))
        monkeypatch.setattr(engine, "_close_slot", lambda slot, ids: None)
        draws.append(list(engine.stream_tokens([5, 6, 7], settings, 24)))
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 5  # a real draw, not one token repeated


def test_several_conversations_keep_their_caches(engine):
    first = PROMPT + " drifting past the old grey lighthouse at the point"
    second = "Bravo sailed the cold northern sea for three long winters"
    engine.generate(first, _seeded(), 4)
    engine.generate(second, _seeded(), 4)  # another conversation: the first is kept
    engine.generate(first + " and", _seeded(), 4)
    assert engine.stats.last_reused == len(engine.tokenize(first))
    engine.generate(second + " and", _seeded(), 4)
    assert engine.stats.last_reused == len(engine.tokenize(second))


def test_llamacpp_keeps_at_most_cache_entries_and_forks_a_shared_prefix():
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engine = LlamaCppEngine(embedded_gguf(), context_length=256, threads=1, cache_entries=2)
    prompts = ["Alpha went to the market", "Bravo sailed the cold sea",
               "Charlie painted a red door"]
    for p in prompts[:2]:
        engine.generate(p, _seeded(), 2)
    engine.generate(prompts[0] + " and", _seeded(), 2)  # A is still kept (as a saved state)
    assert engine.stats.last_reused == len(engine.tokenize(prompts[0]))
    engine.generate(prompts[2], _seeded(), 2)  # evicts B, the least recently used
    assert len(engine._saved) + sum(bool(seq.ids) for seq in engine._seqs) == 2
    engine.generate(prompts[1], _seeded(), 2)
    assert engine.stats.last_reused == 0
    long_a = PROMPT + " drifting slowly past the old grey lighthouse at the point"
    engine.generate(long_a, _seeded(), 4)
    engine.generate(PROMPT + " red", _seeded(), 4)  # shares less than half: a fork
    assert engine.stats.last_reused == len(engine.tokenize(PROMPT))
    engine.generate(long_a, _seeded(), 4)
    assert engine.stats.last_reused == len(engine.tokenize(long_a)) - 1
    engine.close()
