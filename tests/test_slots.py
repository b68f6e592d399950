"""Parallel slots on the llama.cpp engine: streams decoded together in one batch.

Each stream runs the shared decode loop in its own thread; the engine evaluates the open
slots' tokens in one ``llama_decode`` per step. Tolerance: a row's logits in a batch of
several slots can differ from a lone decode in the last float bits (llama.cpp picks other
matrix kernels for other batch shapes), so the tests compare the sampled tokens, which are
equal on these prompts, greedy and seeded.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from limamono.samplers import SamplerSettings, get_preset

PROMPTS = ["Mira looked out over the harbour. The boats were",
           "The lighthouse keeper climbed the stairs",
           "Once upon a time, in a small village at the edge of a dark forest, there lived "
           "an old woodcutter and his three daughters, who",
           "Rain"]


@pytest.fixture(scope="module")
def slots_engine():
    """The embedded model's GGUF with 4 slots, one thread (the machine is shared)."""
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engine = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1, parallel=4)
    yield engine
    engine.close()


def _settings(kind: str, seed: int) -> SamplerSettings:
    return get_preset("greedy") if kind == "greedy" else replace(get_preset("limamono"),
                                                                 seed=seed)


def _alone(engine, prompts: list[str], kind: str, tokens: int) -> list[list[int]]:
    """Each prompt's tokens from a lone stream on an empty cache."""
    out = []
    for i, prompt in enumerate(prompts):
        engine.clear_cache()
        out.append(list(engine.stream_tokens(engine.prompt_ids(prompt),
                                             _settings(kind, 10 + i), tokens)))
    engine.clear_cache()
    return out


def _together(engine, prompts: list[str], kind: str, tokens: int,
              cancel_after: dict[int, int] | None = None) -> list[list[int]]:
    """Each prompt's tokens from streams that run at once (one thread each)."""
    results: list[list[int]] = [[] for _ in prompts]
    errors: list[BaseException] = []
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        try:
            cancel = threading.Event()
            start.wait()
            stream = engine.stream_tokens(engine.prompt_ids(prompts[i]),
                                          _settings(kind, 10 + i), tokens, cancel)
            for token in stream:
                results[i].append(token)
                if cancel_after and len(results[i]) == cancel_after.get(i):
                    cancel.set()
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_batched_streams_give_the_tokens_of_lone_streams(slots_engine, kind):
    engine = slots_engine
    expected = _alone(engine, PROMPTS, kind, 12)
    steps, widest = engine.steps, engine.widest_step
    got = _together(engine, PROMPTS, kind, 12)
    assert got == expected
    # Streams batched (how many share a step depends on when each thread starts: all four
    # did on a loaded machine, three on a quiet one, in a fresh clone's run).
    assert engine.widest_step >= 2
    assert engine.steps - steps < 4 * 12  # fewer steps than lone decodes: they batched
    assert widest <= 4


def test_a_slot_cancelled_mid_batch_leaves_the_others_alone(slots_engine):
    engine = slots_engine
    expected = _alone(engine, PROMPTS, "seeded", 12)
    got = _together(engine, PROMPTS, "seeded", 12, cancel_after={1: 3})
    assert got[1] == expected[1][:3]
    assert [got[i] for i in (0, 2, 3)] == [expected[i] for i in (0, 2, 3)]
    assert engine._open == 0 and not any(seq.busy for seq in engine._seqs)


def test_more_streams_than_slots_wait_for_a_free_one(slots_engine):
    engine = slots_engine
    prompts = PROMPTS + [p + " and" for p in PROMPTS[:2]]  # 6 streams on 4 slots
    expected = _alone(engine, prompts, "greedy", 6)
    assert _together(engine, prompts, "greedy", 6) == expected
    assert engine._open == 0


def test_a_stream_reuses_the_prompt_another_slot_is_decoding(slots_engine):
    """A prompt that another running stream already read is copied from its slot
    (``llama_memory_seq_cp``), not read again: how ``n`` choices read a prompt once."""
    engine = slots_engine
    engine.clear_cache()
    ids = engine.prompt_ids(PROMPTS[2])
    expected = list(engine.stream_tokens(ids, _settings("seeded", 5), 8))
    engine.clear_cache()
    read, release = threading.Event(), threading.Event()

    def hold() -> None:  # the first stream reads the prompt and keeps its slot
        first = engine.stream_tokens(ids, _settings("seeded", 4), 8)
        next(first)
        read.set()
        release.wait(60)
        first.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert read.wait(60)
    second = list(engine.stream_tokens(ids, _settings("seeded", 5), 8))
    reused = engine.stats.last_reused
    release.set()
    holder.join(60)
    assert reused == len(ids) - 1
    assert second == expected
    assert engine._open == 0


@pytest.fixture(scope="module")
def long_engine():
    """Two slots of 2,048 tokens, for prompts longer than one 512-token chunk."""
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engine = LlamaCppEngine(embedded_gguf(), context_length=2048, threads=1, parallel=2)
    yield engine
    engine.close()


def _long_prompt(engine, words: int) -> list[int]:
    ids = engine.prompt_ids(" ".join(f"word{i % 97}" for i in range(words)))
    return ids[:1300]


class _SetWhileReading(threading.Event):
    """A cancel that reads as set only while a step of ``engine`` is reading a prompt: the
    cancel always arrives in the middle of a chunk, never between two."""

    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine

    def is_set(self) -> bool:
        return self.engine._watched is not None


def test_prompts_are_read_in_full_chunks_and_a_cancel_stops_one_half_way(long_engine):
    engine = long_engine
    ids = _long_prompt(engine, 2000)
    assert len(ids) == 1300 and engine.interrupts_eval
    engine.clear_cache()
    steps = engine.steps
    expected = list(engine.stream_tokens(ids, get_preset("greedy"), 4))
    # 512 + 512 + 275 prompt tokens, the last one alone (engine.loop.prefill_end), 3 rows
    assert engine.steps - steps == 4 + 3
    engine.clear_cache()
    aborted = engine.aborted_steps
    got = list(engine.stream_tokens(ids, get_preset("greedy"), 4, _SetWhileReading(engine)))
    assert got == [] and engine.aborted_steps == aborted + 1
    assert engine._open == 0 and not any(seq.busy or seq.ids for seq in engine._seqs)
    assert list(engine.stream_tokens(ids, get_preset("greedy"), 4)) == expected  # unspoiled


def test_a_cancelled_stream_never_stops_another_streams_step(long_engine, monkeypatch):
    """A cancel that arrives while a step reads a prompt chunk of the cancelled stream
    beside another stream's row: the step runs to its end (the other stream needs it), and
    the cancelled stream stops before its next step."""
    engine = long_engine
    ids = _long_prompt(engine, 2000)[:300]  # one chunk of 299 tokens, then the last one
    # Another text, so that neither prompt is a prefix of the other (a prefix would be
    # copied from the other slot instead of read).
    other = engine.prompt_ids(" ".join(f"tide{i % 89}" for i in range(400)))[:200]
    engine.clear_cache()
    expected = list(engine.stream_tokens(other, get_preset("greedy"), 24))
    assert len(expected) == 24  # it is still decoding while the other stream reads
    engine.clear_cache()
    aborted = engine.aborted_steps
    cancel, decoding = threading.Event(), threading.Event()
    shared: list[int] = []
    run_step = engine._run_step

    def cancel_in_a_shared_step(batch) -> None:
        mine = [r for r in batch if r.seq.cancel is cancel]
        if mine and len(batch) > 1 and len(mine[0].ids) > 1 and not shared:
            shared.append(len(mine[0].ids))
            cancel.set()
        run_step(batch)

    monkeypatch.setattr(engine, "_run_step", cancel_in_a_shared_step)
    # Every step waits for both open streams' tokens (the engine waits 20 ms, after which
    # a chunk may start alone: then which step is shared would depend on thread timing).
    monkeypatch.setattr("limamono.engine.llamacpp.BATCH_WAIT_S", 30.0)
    results: dict[str, list[int]] = {}

    def keep() -> None:
        results["kept"] = []
        for token in engine.stream_tokens(other, get_preset("greedy"), 24):
            results["kept"].append(token)
            decoding.set()

    def cancelled() -> None:
        assert decoding.wait(120)
        results["cancelled"] = list(engine.stream_tokens(ids, get_preset("greedy"), 6, cancel))

    threads = [threading.Thread(target=keep), threading.Thread(target=cancelled)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert shared == [299]  # the cancel came in a step that also held the kept row
    assert engine.aborted_steps == aborted  # so that step was not stopped
    assert results == {"kept": expected, "cancelled": []}
    assert engine._open == 0


def test_a_stream_samples_with_one_torch_thread_and_leaves_other_threads_alone(slots_engine):
    import torch

    before = torch.get_num_threads()
    seen: list[int] = []

    def run() -> None:
        torch.set_num_threads(2)
        list(slots_engine.stream_tokens(slots_engine.prompt_ids("Rain"), get_preset("greedy"),
                                        2))
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert seen == [1]
    assert torch.get_num_threads() == before
