"""The FIFO queue, 503 when full, cancellation on disconnect and abort, and the token routes
answering while a generation runs. On uvicorn (loopback, OS-chosen port) with a slow fake
engine whose chunks wait for an event, so every step is ordered without sleeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from limamono.samplers import get_preset
from limamono.server import ServerConfig, create_app
from limamono.server.params import GenerationRequest
from limamono.server.queue import GenerationQueue, QueueFullError
from test_server_fakes import FakeEngine, live_server


@pytest.fixture
def slow_engine() -> FakeEngine:
    return FakeEngine(slow=True)


def serve(engine: FakeEngine, **config: Any) -> Any:
    return live_server(create_app(engine, ServerConfig(**config)))


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` (an HTTP call or a cheap read) until it holds or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
    return False


def data_lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON ``data:`` payloads of a stream, as they arrive.

    Keep the iterator while the stream should stay open: when it is garbage-collected,
    httpx closes the connection (which is how the tests drop a stream on purpose).
    """
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt, get_preset("limamono"), 100, (), 2048)


def test_queue_is_fifo_and_refuses_when_full(slow_engine: FakeEngine) -> None:
    queue = GenerationQueue(slow_engine, max_waiting=1)

    async def scenario() -> list[str]:
        first = queue.submit(request("a"), "a")
        second = queue.submit(request("b"), "b")
        with pytest.raises(QueueFullError):
            queue.submit(request("c"), "c")
        slow_engine.release.set()
        texts = []
        for job in (first, second):
            texts.append("".join([chunk.text async for chunk in job.chunks()]))
        return texts

    try:
        texts = asyncio.run(scenario())
    finally:
        queue.close()
    assert texts == [slow_engine.reply, slow_engine.reply]
    assert [c.prompt for c in slow_engine.calls] == ["a", "b"]
    assert queue.stats.rejected == 1


def test_full_queue_answers_503_with_retry_after(slow_engine: FakeEngine) -> None:
    with serve(slow_engine, queue=1) as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/api/extra/generate/stream", json={"prompt": "a"}) as first:
            events = data_lines(first)  # kept: dropping the iterator closes the connection
            next(events)  # running
            waiter = threading.Thread(target=lambda: httpx.post(
                f"{url}/v1/completions", json={"prompt": "b"}, timeout=10))
            waiter.start()
            assert wait_until(lambda: client.get("/health").json()["waiting"] == 1)
            busy = client.post("/api/v1/generate", json={"prompt": "c"})
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "2"
            assert "busy" in busy.json()["detail"]["msg"]
            busy_openai = client.post("/v1/completions", json={"prompt": "c"})
            assert busy_openai.status_code == 503 and busy_openai.json()["error"]["message"]
            slow_engine.release.set()
            assert list(events)[-1]["finish_reason"] == "stop"
        waiter.join(10)
    assert [c.prompt for c in slow_engine.calls] == ["a", "b"]


def test_dropped_stream_frees_the_engine_within_a_second(slow_engine: FakeEngine) -> None:
    with serve(slow_engine) as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True}) as response:
            events = data_lines(response)
            next(events)
        dropped = time.monotonic()  # leaving the block closed the connection
        assert slow_engine.stopped.wait(1.0)
        assert time.monotonic() - dropped < 1.0
        assert wait_until(lambda: client.get("/api/extra/perf").json()["cancelled"] == 1)
        assert client.get("/health").json()["busy"] is False


def test_disconnected_non_streaming_request_is_cancelled(slow_engine: FakeEngine) -> None:
    with serve(slow_engine) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/api/v1/generate", json={"prompt": "a"}, timeout=0.5)
        gave_up = time.monotonic()
        assert slow_engine.stopped.wait(1.0)
        assert time.monotonic() - gave_up < 1.0


def test_abort_ends_the_running_generation(slow_engine: FakeEngine) -> None:
    with serve(slow_engine) as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/api/extra/generate/stream",
                           json={"prompt": "a", "genkey": "KCPP42"}) as response:
            events = data_lines(response)
            first = next(events)
            mine = {"results": [{"text": first["token"]}]}
            nothing = {"results": [{"text": ""}]}
            assert client.get("/api/extra/generate/check?genkey=KCPP42").json() == mine
            assert client.post("/api/extra/generate/check",
                               json={"genkey": "KCPP42"}).json() == mine
            # Another client's reply is not readable (issue 24, defect 15).
            assert client.get("/api/extra/generate/check").json() == nothing
            assert client.post("/api/extra/generate/check").json() == nothing
            assert client.post("/api/extra/generate/check",
                               json={"genkey": "KCPP4"}).json() == nothing
            assert client.post("/api/extra/abort", json={"genkey": "KCPP42"}).json() == {
                "success": "true", "done": "true"}
            rest = list(events)
        assert rest[-1]["finish_reason"] == "stop"  # an aborted reply stopped
        assert first["token"] + "".join(e["token"] for e in rest) == "Hello"


def test_client_leaving_the_queue_is_skipped(slow_engine: FakeEngine) -> None:
    with serve(slow_engine) as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True}) as running:
            running_events = data_lines(running)
            next(running_events)
            with client.stream("POST", "/v1/completions",
                               json={"prompt": "b", "stream": True}) as waiting:
                assert waiting.status_code == 200
                assert wait_until(lambda: client.get("/health").json()["waiting"] == 1)
            # The server has seen the waiting client leave before the running job ends.
            assert wait_until(lambda: client.get("/health").json()["waiting"] == 0)
            slow_engine.release.set()
            assert list(running_events)[-1]["choices"][0]["finish_reason"] == "stop"
        assert wait_until(lambda: client.get("/api/extra/perf").json()["total_gens"] == 2)
    assert [c.prompt for c in slow_engine.calls] == ["a"]


def test_token_and_info_routes_answer_while_a_generation_runs(slow_engine: FakeEngine) -> None:
    with serve(slow_engine) as url, httpx.Client(base_url=url, timeout=2) as client, \
            client.stream("POST", "/v1/completions",
                          json={"prompt": "a", "stream": True}) as response:
        events = data_lines(response)
        next(events)
        assert client.get("/health").json()["busy"] is True
        start = time.monotonic()
        assert client.post("/api/extra/tokencount", json={"prompt": "abc"}).json() == {
            "value": 3, "ids": [97, 98, 99]}
        assert client.post("/v1/internal/encode", json={"text": "ab"}).json()["length"] == 2
        assert client.post("/v1/internal/token-count", json={"text": "a"}).json() == {
            "length": 1}
        for path in ("/v1/models", "/api/v1/model", "/api/extra/version",
                     "/api/v1/info/version", "/v1/internal/model/info"):
            assert client.get(path).status_code == 200
        assert time.monotonic() - start < 2.0
        assert client.get("/health").json()["busy"] is True  # still generating
        slow_engine.release.set()


def test_close_cancels_running_and_waiting_jobs(slow_engine: FakeEngine) -> None:
    queue = GenerationQueue(slow_engine, max_waiting=4)

    async def scenario() -> list[str | None]:
        running = queue.submit(request("a"), "a")
        waiting = queue.submit(request("b"), "b")
        first = [chunk async for chunk in _take(running, 1)]
        queue.close()  # as at shutdown: both end at once, neither hangs
        ends = []
        for job in (running, waiting):
            ends.append([c async for c in job.chunks()][-1].finish_reason)
        return [first[0].finish_reason, *ends]

    assert asyncio.run(scenario()) == [None, "cancelled", "cancelled"]
    assert [c.prompt for c in slow_engine.calls] == ["a"]
    assert not queue.alive


async def _take(job: Any, n: int) -> Any:
    count = 0
    async for chunk in job.chunks():
        yield chunk
        count += 1
        if count == n:
            return
