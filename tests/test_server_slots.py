"""The server on a llama.cpp engine with slots: ``n`` choices and a storm of client drops.

``n`` choices read the prompt once (choice 0), then the others copy its slot and decode
beside it; choice i samples with seed + i and must equal a single request with that seed.
The drop storm submits 200 jobs straight to the queue (the scheduler's front) and cancels
them at random points: no slot may leak and the next greedy reply must be the one before.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.samplers import get_preset
from limamono.server import ServerConfig, create_app
from limamono.server.params import GenerationRequest
from limamono.server.queue import GenerationQueue
from test_server_fakes import sse_events

pytestmark = pytest.mark.slow

PROMPT = "The old lighthouse keeper opened the door and"


@pytest.fixture(scope="module")
def engine() -> Any:
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    made = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1, parallel=4)
    yield made
    made.close()


@pytest.fixture(scope="module")
def client(engine: Any) -> Any:
    with TestClient(create_app(engine, ServerConfig())) as test_client:
        yield test_client


def _body(**fields: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "top_p": 0.9,
            "seed": 40, **fields}


def test_n_choices_equal_single_requests_with_seed_plus_index(client: TestClient,
                                                              engine: Any) -> None:
    # Each single request reads the prompt cold (an empty cache); the forks read only its
    # last token. Both read that token alone (a batch of one row, engine.loop.prefill_end),
    # so every choice equals its single request to the bit: tokens and log-probabilities.
    singles = []
    for i in range(3):
        engine.clear_cache()
        singles.append(client.post("/v1/completions", json=_body(seed=40 + i, logprobs=2)
                                   ).json())
    engine.clear_cache()
    evaluated = engine.stats.evaluated_tokens
    got = client.post("/v1/completions", json=_body(n=3, logprobs=2))
    assert got.status_code == 200, got.text
    data = got.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert [c["text"] for c in data["choices"]] == [s["choices"][0]["text"] for s in singles]
    assert [c["logprobs"] for c in data["choices"]] == [s["choices"][0]["logprobs"]
                                                        for s in singles]
    assert data["usage"]["completion_tokens"] == sum(s["usage"]["completion_tokens"]
                                                     for s in singles)
    # Choice 0 read the prompt; the forks read only its last token.
    prompt = singles[0]["usage"]["prompt_tokens"]
    assert engine.stats.evaluated_tokens - evaluated == prompt + 2
    assert len({c["text"] for c in data["choices"]}) > 1  # other seeds, other replies


def test_n_choices_stream_with_their_index(client: TestClient) -> None:
    body = {"messages": [{"role": "system", "content": "Edda\nA keeper.\nScenario: Rain."},
                         {"role": "user", "content": "Hello there."}], "max_tokens": 8,
            "temperature": 1.0, "seed": 7, "stream": True}
    client.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})
    singles = [client.post("/v1/chat/completions",
                           json={**body, "stream": False, "seed": 7 + i}).json()
               for i in range(2)]
    response = client.post("/v1/chat/completions", json={**body, "n": 2})
    events = sse_events(response.text)
    assert events[-1]["data"] == "[DONE]"
    texts, finished, roles = ["", ""], [None, None], [0, 0]
    for event in events[:-1]:
        choice = json.loads(event["data"])["choices"][0]
        delta = choice["delta"]
        roles[choice["index"]] += delta.get("role") == "assistant"
        texts[choice["index"]] += delta.get("content", "")
        finished[choice["index"]] = choice["finish_reason"] or finished[choice["index"]]
    assert roles == [1, 1]
    assert texts == [s["choices"][0]["message"]["content"] for s in singles]
    assert None not in finished


@pytest.mark.parametrize("n", [0, 9, "2"])
def test_n_out_of_range_is_refused(client: TestClient, n: Any) -> None:
    response = client.post("/v1/completions", json=_body(n=n))
    assert response.status_code in (400, 422)
    assert "n" in response.text


def test_kobold_refuses_n(client: TestClient) -> None:
    response = client.post("/api/v1/generate", json={"prompt": PROMPT, "n": 2})
    assert response.status_code == 400


def test_the_scheduler_holds_under_200_random_drops(engine: Any) -> None:
    greedy = replace(get_preset("greedy"))
    queue = GenerationQueue(engine, max_waiting=300)

    async def reply(settings: Any, tokens: int) -> str:
        job = queue.submit(GenerationRequest(PROMPT, settings, tokens, (), 512), PROMPT)
        return "".join([chunk.text async for chunk in job.chunks()])

    async def storm() -> tuple[str, str, int]:
        before = await reply(greedy, 12)
        rng = random.Random(0)
        jobs = []
        for i in range(200):
            prompt = f"{PROMPT} {rng.choice(['slowly', 'at once', 'with care'])} {i}"
            settings = replace(get_preset("limamono"), seed=i)
            n = rng.choice([1, 1, 1, 2])
            jobs.append(queue.submit(GenerationRequest(prompt, settings, 6, (), 512, n=n),
                                     prompt))

        async def drop(job: Any, after: int) -> None:
            count = 0
            try:
                async for _ in job.choice_chunks():
                    count += 1
                    if count >= after:
                        break
            finally:
                job.request_cancel()

        await asyncio.gather(*(drop(job, rng.randrange(0, 5)) for job in jobs))
        for _ in range(600):  # every cancelled job leaves within a few steps
            if queue.running == 0 and queue.waiting == 0:
                break
            await asyncio.sleep(0.05)
        after = await reply(greedy, 12)
        for _ in range(100):  # the worker counts a job just after its last chunk
            if queue.stats.total == 202:
                break
            await asyncio.sleep(0.05)
        return before, after, queue.stats.total

    try:
        before, after, total = asyncio.run(storm())
    finally:
        queue.close()
    assert after == before and before
    assert total == 202
    assert engine._open == 0 and not any(seq.busy for seq in engine._seqs)
    assert engine._pending == []
