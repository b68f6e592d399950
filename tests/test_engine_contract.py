"""The engine contract that every engine passes (torch; llama.cpp where it is installed).

Layer 1's rollback (a banned-phrase filter's backtracking) and the behaviour of layers 2-3
that must not depend on the engine underneath.
"""

from __future__ import annotations

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


@pytest.fixture(params=["torch"])
def engine(request):
    """Each engine in turn, with an empty KV cache."""
    made = request.getfixturevalue(f"{request.param}_engine")
    made.clear_cache()
    return made


def _greedy():
    return get_preset("greedy")


def _seeded(seed: int = 3):
    return replace(get_preset("limamono"), seed=seed)


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
