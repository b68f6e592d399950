"""Issue 24 (hardening, round 3), the server's part: one request never freezes the server.

Reproductions: ``shared/testdata/repros/audit-3/`` (numbered as the issue's defects); the
hostile request bodies among them are in ``tests/assets/hostile/http/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app, stchat
from limamono.server.connections import (
    ConnectionLimits,
    EventTally,
    quiet_accept_errors,
    uvicorn_config,
)
from test_server_fakes import FakeEngine, live_server


def make_client(engine: Any, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ServerConfig(**config)), raise_server_exceptions=False)


# --------------------------------------------------------------------------- 1: ReDoS

#: System texts that made the old regular expressions backtrack (defect 1 and its kin).
BACKTRACKERS = [
    "[" + "x's personality: " * 250_000,  # the reproduction's shape, 4 MB
    "[" + "Edda Varn's personality: " * 100_000 + "\n]",
    "Write " + "a's next reply in a fictional chat between " * 100_000,
    "Write " + "a's next reply in a fictional chat between a and " * 60_000,
    "[Circumstances and context of the dialogue: " * 100_000,
    "[Start a new group chat. Group members: " * 100_000,
]


@pytest.mark.parametrize("text", BACKTRACKERS, ids=range(len(BACKTRACKERS)))
def test_the_sheet_parses_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    stchat.main_prompt_names(text)
    stchat.scenario_text(text)
    stchat.personality_text(text)
    stchat.conversation([{"role": "system", "content": text}, {"role": "user", "content": "hi"}])
    assert time.perf_counter() - start < 1.0


def test_sheet_parts_keep_sillytavern_meanings() -> None:
    assert stchat.main_prompt_names("Write Edda's next reply in a fictional chat between Edda "
                                    "and Tom.\nMore.") == ("Edda", "Tom")
    assert stchat.main_prompt_names("Write Edda's next reply in a fictional chat between Ann "
                                    "and Tom.") is None
    assert stchat.personality_text("[Edda's personality: calm, [sly]]") == "calm, [sly]"
    assert stchat.personality_text("[Ed]da's personality: calm]") is None
    assert stchat.personality_text("['s personality: 's personality: x]") == "x"
    assert stchat.scenario_text("[Circumstances and context of the dialogue: a mill]") == "a mill"
    assert stchat.scenario_text("[Circumstances and context of the dialogue: a mill") is None


@dataclasses.dataclass
class SlowTokenizer(FakeEngine):
    """Tokenizing blocks its thread for ``delay`` seconds (a CPU-heavy prompt)."""

    delay: float = 3.0
    tokenizing: threading.Event = dataclasses.field(default_factory=threading.Event)

    def tokenize(self, text: str) -> list[int]:
        self.tokenizing.set()
        time.sleep(self.delay)
        return super().tokenize(text)


def test_a_heavy_request_step_runs_off_the_event_loop() -> None:
    engine = SlowTokenizer()
    with live_server(create_app(engine, ServerConfig())) as url:
        worker = threading.Thread(target=httpx.post, args=(url + "/api/extra/tokencount",),
                                  kwargs={"json": {"prompt": "abc"}, "timeout": 30})
        worker.start()
        assert engine.tokenizing.wait(10)
        start = time.perf_counter()
        health = httpx.get(url + "/health", timeout=30)
        waited = time.perf_counter() - start
        worker.join()
    assert health.status_code == 200
    assert waited < 1.5  # on the event loop it would wait out the 3 s


def test_heavy_steps_are_bounded_and_the_excess_gets_503() -> None:
    engine = SlowTokenizer()
    engine.delay = 1.5
    app = create_app(engine, ServerConfig(cpu_threads=1, cpu_waiting=1))
    with live_server(app) as url:
        results: list[int] = []

        def count() -> None:
            response = httpx.post(url + "/v1/internal/token-count", json={"text": "abc"},
                                  timeout=30)
            results.append(response.status_code)

        workers = [threading.Thread(target=count) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(0.3)
        refused = httpx.post(url + "/v1/internal/token-count", json={"text": "abc"}, timeout=30)
        for worker in workers:
            worker.join()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert sorted(results) == [200, 200]


# --------------------------------------------------------------------------- 3: surrogates

REPROS = "/work/shared/testdata/repros/audit-3/"  # the bodies below are copied from there
SURROGATE_BODIES = [  # (route, body, field)
    ("/v1/completions", b'{"prompt":"\\ud800","max_tokens":1}', "prompt"),
    ("/v1/completions", b'{"prompt":"\\ud800 hello","max_tokens":3,"stream":true}', "prompt"),
    ("/v1/completions", b'{"prompt":["ok \\udfff"],"max_tokens":3}', "prompt[0]"),
    ("/api/extra/tokencount", b'{"prompt":"\\ud800"}', "prompt"),
    ("/api/v1/generate", b'{"prompt":"ok","memory":"\\ud83d"}', "memory"),
    ("/api/extra/generate/stream", b'{"prompt":"a\\udbffb"}', "prompt"),
    ("/v1/internal/encode", b'{"text":"abc\\udc00"}', "text"),
    ("/v1/internal/token-count", b'{"text":"\\ud800"}', "text"),
    ("/v1/chat/completions", b'{"messages":[{"role":"system","content":"x"},'
     b'{"role":"user","name":"\\ud800","content":"x"}],"max_tokens":1}', "messages[1].name"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi \\ud800"}]}',
     "messages[0].content"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":[{"type":"text",'
     b'"text":"\\ud83d\\ude00 ok \\ude00"}]}]}', "messages[0].content[0].text"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],'
     b'"stop":["\\ud800"]}', "stop[0]"),
    ("/api/v1/generate", b'{"prompt":"ok","\\ud800":1}', "a key of the body"),
]


@pytest.mark.parametrize(("route", "body", "field"), SURROGATE_BODIES)
def test_a_lone_surrogate_is_a_400_naming_the_field(route: str, body: bytes,
                                                    field: str) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    response = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()
    if route.startswith("/api/"):
        assert error["detail"]["field"] == field
        message = error["detail"]["msg"]
    else:
        assert error["error"]["param"] == field
        message = error["error"]["message"]
    assert message.startswith(f"{field}: holds a lone surrogate \\u")
    assert engine.calls == [] and engine.tokenized == 0


def test_the_reproductions_get_400() -> None:
    client = make_client(FakeEngine())
    for route, name in [("/v1/completions", "03_surrogate_prompt.json"),
                        ("/v1/completions", "03_surrogate_prompt_stream.json"),
                        ("/api/extra/tokencount", "03_surrogate_tokencount.json"),
                        ("/v1/chat/completions", "03_surrogate_chat_name.json")]:
        path = Path(REPROS) / name
        if not path.exists():
            pytest.skip("the shared reproductions are not on this machine")
        response = client.post(route, content=path.read_bytes(),
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (name, response.text)


def test_paired_surrogates_are_text() -> None:
    engine = FakeEngine()
    response = make_client(engine).post(
        "/v1/completions", content=b'{"prompt":"a\\ud83d\\ude00b","max_tokens":2}',
        headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert engine.calls[0].prompt == "a\U0001f600b"


# --------------------------------------------------------------------------- 4: context of 1

class RealTokens(FakeEngine):
    """The fake engine, counting tokens as a real tokenizer does (start tokens included)."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))  # with the BOS where the family adds one


CONTEXT_CASES = [  # (route, body without its context, context field)
    ("/api/v1/generate", {"prompt": "hello there", "max_length": 1}, "max_context_length"),
    ("/api/extra/generate/stream", {"prompt": "hello there", "max_length": 1},
     "max_context_length"),
    ("/v1/completions", {"prompt": "hello there", "max_tokens": 1}, "truncation_length"),
    ("/v1/completions", {"prompt": "hello there", "max_tokens": 1, "stream": True}, "num_ctx"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Mira"},
                                           {"role": "user", "content": "hi"}],
                              "max_tokens": 1}, "truncation_length"),
]


@pytest.mark.parametrize("family", ["tokenizer", "mistral_tokenizer"])
@pytest.mark.parametrize(("route", "body", "field"), CONTEXT_CASES)
def test_a_context_without_room_for_a_prompt_is_a_400_before_queueing(
        family: str, route: str, body: dict[str, Any], field: str,
        request: pytest.FixtureRequest) -> None:
    engine = RealTokens(request.getfixturevalue(family))
    start = len(engine.prompt_ids(""))
    assert start == (0 if family == "tokenizer" else 1)  # SmolLM2: no BOS; Mistral: BOS
    client = make_client(engine)
    for context in range(1, start + 2):
        response = client.post(route, json={**body, field: context})
        assert response.status_code == 400, response.text
        error = response.json()
        where = error["detail"]["field"] if route.startswith("/api/") else error["error"]["param"]
        assert where == field
        assert f"{field}={context}: no room for a prompt" in response.text
        assert f"at least {start + 2} tokens" in response.text
    assert engine.calls == []
    if route != "/v1/chat/completions":  # the smallest context that holds a prompt token
        response = client.post(route, json={**body, field: start + 2})
        assert response.status_code == 200, response.text
        assert len(engine.calls) == 1


# --------------------------------------------------------------------------- 16: rebinding

def test_a_foreign_host_name_is_refused_before_anything_runs() -> None:
    engine = FakeEngine()
    client = make_client(engine)
    for host in ("evil.com", "evil.com:5001", "localhost.evil.com.", "127.0.0.1.nip.io:80"):
        for method, route in (("POST", "/v1/completions"), ("POST", "/api/v1/generate"),
                              ("GET", "/api/extra/generate/check"), ("GET", "/health")):
            response = client.request(method, route, json={"prompt": "hi", "max_tokens": 2},
                                      headers={"Host": host})
            assert response.status_code == 400, (host, route, response.text)
            assert f"Host '{host}' is not a name of this server" in response.text
            assert "--allow-host" in response.text
    assert engine.calls == [] and engine.tokenized == 0


@pytest.mark.parametrize("host", ["127.0.0.1:5001", "localhost:5001", "[::1]:5001",
                                  "192.168.1.20:5001", "mybox:5001", "st.localhost"])
def test_loopback_addresses_and_local_names_are_served(host: str) -> None:
    # SillyTavern calls from its own server (node-fetch): Host is the URL's, no Origin.
    response = make_client(FakeEngine()).post("/v1/completions", headers={"Host": host},
                                              json={"prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text


def test_allow_host_adds_names() -> None:
    client = make_client(FakeEngine(), allowed_hosts=("llm.example.org", "*.lan"))
    for host, status in (("llm.example.org", 200), ("llm.example.org:443", 200),
                         ("box.lan", 200), ("a.box.lan:5001", 200), ("example.org", 400)):
        response = client.post("/v1/completions", headers={"Host": host},
                               json={"prompt": "hi", "max_tokens": 2})
        assert response.status_code == status, (host, response.text)
    anyone = make_client(FakeEngine(), allowed_hosts=("*",))
    assert anyone.get("/health", headers={"Host": "evil.com"}).status_code == 200


def test_a_cross_site_page_cannot_abort_or_generate_without_a_key() -> None:
    engine = FakeEngine(slow=True)
    with live_server(create_app(engine, ServerConfig())) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True, "max_tokens": 50}) as running:
            assert engine.started.wait(5)
            evil = {"Origin": "http://evil.com"}
            for route in ("/api/extra/abort", "/v1/internal/stop-generation",
                          "/v1/completions", "/api/extra/tokencount"):
                refused = client.post(route, headers=evil)  # body-less, as the audit's
                assert refused.status_code == 403, (route, refused.text)
                assert "origin 'http://evil.com' is refused" in refused.text
            assert not engine.stopped.is_set()
            assert client.get("/health", headers=evil).json()["busy"] is True  # reads pass
            # The server's own pages (same origin) may stop it.
            own = {"Origin": url}
            assert client.post("/api/extra/abort", headers=own).json()["success"] == "true"
            text = "".join(line for line in running.iter_lines())
        assert engine.stopped.wait(5)
    assert "[DONE]" in text


def test_a_cors_origin_may_post() -> None:
    client = make_client(FakeEngine(), cors_origins=("http://localhost:8000",))
    ok = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                     headers={"Origin": "http://localhost:8000"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:8000"
    other = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                        headers={"Origin": "http://localhost:8001"})
    assert other.status_code == 403
    null = client.post("/api/extra/abort", headers={"Origin": "null"})
    assert null.status_code == 403


# --------------------------------------------------------------------------- 2: slowloris

@contextlib.contextmanager
def guarded_server(limits: ConnectionLimits, tally: EventTally | None = None,
                   engine: Any = None) -> Iterator[tuple[str, int]]:
    """The app on uvicorn behind ``limits``, as ``limamono serve`` runs it: (host, port)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    config = uvicorn_config(create_app(engine or FakeEngine(), ServerConfig()), limits, tally,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def read_until_closed(conn: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (seconds)."""
    start, got = time.monotonic(), b""
    conn.settimeout(limit)
    try:
        while chunk := conn.recv(65536):
            got += chunk
    except TimeoutError:
        return got, float("inf")
    except ConnectionResetError:
        pass
    return got, time.monotonic() - start


SLOW_STARTS = {  # what a slow client sends first (the kinds of 02_slowloris_probe.py)
    "nothing": b"",
    "partial_line": b"GET /he",
    "slow_headers": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
    "slow_body": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 100\r\n\r\n{\"pro",
}


@pytest.mark.parametrize("kind", sorted(SLOW_STARTS))
def test_half_sent_requests_get_408_and_are_closed(kind: str) -> None:
    limits = ConnectionLimits(header_timeout_s=0.6, body_timeout_s=0.9, log_interval_s=60)
    tally = EventTally(60)
    with guarded_server(limits, tally) as address, \
            socket.create_connection(address) as conn:
        conn.sendall(SLOW_STARTS[kind])
        dribbled = 0.0
        if kind in ("slow_headers", "slow_body"):  # dribbling does not extend the deadline
            for _ in range(3):
                time.sleep(0.15)
                conn.sendall(b"X-a: b\r\n" if kind == "slow_headers" else b"m")
            dribbled = 0.45
        got, closed = read_until_closed(conn, 5)
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
    expected = 0.9 if kind == "slow_body" else 0.6
    assert expected - 0.1 < closed + dribbled < expected + 1.0
    stage = "body" if kind == "slow_body" else "headers"
    assert tally.counts == {f"timeout_{stage}": 1}


def test_whole_requests_and_long_replies_are_not_cut() -> None:
    engine = FakeEngine(slow=True)
    limits = ConnectionLimits(header_timeout_s=0.3, body_timeout_s=0.3, log_interval_s=60)
    with guarded_server(limits, engine=engine) as (host, port), \
            httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True, "max_tokens": 50}) as reply:
            assert engine.started.wait(5)
            time.sleep(0.8)  # longer than both deadlines: the reply is still being written
            engine.release.set()
            text = "".join(reply.iter_lines())
        assert "[DONE]" in text and '"finish_reason":"stop"' in text
        time.sleep(0.5)  # idle on a kept-alive connection: the next request works
        assert client.get("/health").status_code == 200


def test_connections_over_the_cap_get_503_at_once_and_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    limits = ConnectionLimits(header_timeout_s=30, max_connections=5, log_interval_s=60)
    tally = EventTally(60)
    with guarded_server(limits, tally) as address:
        idle = [socket.create_connection(address) for _ in range(5)]
        time.sleep(0.2)
        refused = []
        for _ in range(20):
            with socket.create_connection(address) as extra:
                refused.append(read_until_closed(extra, 5))
        for conn in idle:
            conn.close()
        time.sleep(0.2)
        with httpx.Client(base_url=f"http://{address[0]}:{address[1]}") as client:
            assert client.get("/health").status_code == 200  # the cap is free again
    assert all(got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") for got, _ in refused)
    assert all(closed < 1.0 for _, closed in refused)
    assert tally.counts == {"over_cap": 20}
    lines = [r.getMessage() for r in caplog.records if "over the cap" in r.getMessage()]
    assert lines == ["refused connections over the cap of 5 with 503 (1 time in the last "
                     "60 s; logged at most once per 60 s)"]


def test_accept_failures_are_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        tally = EventTally(60)
        quiet_accept_errors(loop, tally)
        for _ in range(1000):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE,
                                                              "Too many open files")})
    finally:
        loop.close()
    assert tally.counts == {"accept_failed": 1000}
    lines = [r for r in caplog.records if "could not accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


def test_content_length_with_chunked_is_refused_at_once() -> None:
    limits = ConnectionLimits(header_timeout_s=5, body_timeout_s=5)
    with guarded_server(limits) as address, socket.create_connection(address) as conn:
        body = b'{"prompt": "hi"}'
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n" % len(body) + body)
        got, closed = read_until_closed(conn, 5)
    assert got.startswith(b"HTTP/1.1 400 "), got
    assert b"both Content-Length and Transfer-Encoding" in got
    assert closed < 1.0


@pytest.mark.parametrize(("value", "message"), [
    ({"header_timeout_s": 0}, "header_timeout_s=0: must be a positive number of seconds"),
    ({"body_timeout_s": float("nan")}, "body_timeout_s=nan: must be a positive number"),
    ({"max_connections": 0}, "max_connections=0: must be a whole number >= 1"),
])
def test_connection_limits_are_checked(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ConnectionLimits(**value)


# --------------------------------------------------------------------------- 14: keepalive

@pytest.mark.parametrize(("route", "body"), [
    ("/v1/completions", {"prompt": "b", "stream": True, "max_tokens": 5}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Mira"},
                                           {"role": "user", "content": "hi"}],
                              "stream": True, "max_tokens": 5}),
    ("/api/extra/generate/stream", {"prompt": "b", "max_length": 5}),
])
def test_a_queued_stream_gets_keepalives_with_its_position(
        route: str, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from limamono.server import streaming

    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.3)
    engine = FakeEngine(slow=True)
    with live_server(create_app(engine, ServerConfig())) as url, \
            httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=1.0)) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True, "max_tokens": 50}) as running:
            assert engine.started.wait(5)
            # A client that gives up after 1 s without a byte waits here for 2.5 s.
            with client.stream("POST", route, json=body) as queued:
                lines = queued.iter_lines()
                assert next(lines) == ": queued, position 1"
                start, seen = time.monotonic(), 0
                while time.monotonic() - start < 2.5:
                    line = next(lines)
                    assert line in ("", ": queued, position 1"), line
                    seen += line != ""
                assert seen >= 4  # one every 0.3 s
                engine.release.set()
                rest = [line for line in lines if line]
                for _ in running.iter_lines():
                    pass
        data = [line for line in rest if line.startswith("data:")]
        assert data and all(not line.startswith(": queued") for line in rest
                            if line.startswith(":") and line != ": generating")


def test_the_queue_position_counts_live_jobs_ahead() -> None:
    from limamono.server.params import GenerationRequest
    from limamono.server.queue import GenerationQueue

    async def run() -> list[int]:
        engine = FakeEngine(slow=True)
        queue = GenerationQueue(engine, 8)
        try:
            request = GenerationRequest("p", None, 50, (), 100)  # type: ignore[arg-type]
            jobs = [queue.submit(request, "p") for _ in range(4)]
            await asyncio.to_thread(engine.started.wait, 5)
            jobs[1].request_cancel()
            return [job.position() for job in jobs]
        finally:
            engine.release.set()
            queue.close()

    assert asyncio.run(run()) == [0, 1, 1, 2]  # running; cancelled (skipped); 2nd; 3rd


# --------------------------------------------------------------------------- 13: perf

def test_perf_reports_queue_wait_apart_from_cancel_latency() -> None:
    engine = FakeEngine(slow=True)
    with live_server(create_app(engine, ServerConfig())) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "a", "stream": True, "max_tokens": 50}) as running:
            assert engine.started.wait(5)
            with client.stream("POST", "/v1/completions",
                               json={"prompt": "b", "stream": True}) as waiting:
                next(waiting.iter_lines())  # queued
            time.sleep(1.0)  # the waiting client left 1 s before the running one ends
            engine.release.set()
            for _ in running.iter_lines():
                pass
        perf = client.get("/api/extra/perf").json()
        deadline = time.monotonic() + 5
        while perf["total_gens"] < 2 and time.monotonic() < deadline:
            perf = client.get("/api/extra/perf").json()
    assert (perf["total_gens"], perf["cancelled"]) == (2, 1)
    assert perf["max_queue_wait_s"] >= 1.0  # the skipped job waited for the slot
    assert perf["max_cancel_latency_s"] == 0.0  # ... which is no cancel latency


# --------------------------------------------------------------------------- 13: prefill

def test_prefill_chunks_follow_the_measured_speed() -> None:
    from limamono.engine.loop import CANCEL_CHECK_S, MIN_PREFILL_CHUNK, PREFILL_CHUNK, prefill_chunk

    assert prefill_chunk(None) == MIN_PREFILL_CHUNK  # nothing measured yet: small
    assert prefill_chunk(0.0) == PREFILL_CHUNK
    assert prefill_chunk(CANCEL_CHECK_S / 100) == 64  # 100 fit: the power of two below
    assert prefill_chunk(CANCEL_CHECK_S / 128) == 128
    assert prefill_chunk(CANCEL_CHECK_S / 10_000) == PREFILL_CHUNK
    assert prefill_chunk(1.0) == MIN_PREFILL_CHUNK  # a very slow machine: the floor


def test_a_cancel_during_prompt_reading_is_seen_within_a_chunk_of_the_target() -> None:
    from limamono.engine.loop import CANCEL_CHECK_S, SlotStart
    from limamono.samplers import get_preset
    from test_phrasebans import ScriptedEngine, ScriptedSlot

    class SlowSlot(ScriptedSlot):
        def eval(self, ids: Any) -> Any:
            time.sleep(0.004 * len(ids))  # 512 tokens: 2 s, as a loaded CPU reads them
            return super().eval(ids)

    class SlowEngine(ScriptedEngine):
        def _open_slot(self, ids: list[int]) -> SlotStart:
            return SlotStart(SlowSlot(self.evals), 0)

    engine = SlowEngine()
    cancel = threading.Event()
    prompt = [1] * 3000
    stopped: list[float] = []

    def run() -> None:
        for _ in engine.stream_tokens(prompt, get_preset("greedy"), 5, cancel):
            pass
        stopped.append(time.monotonic())

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)  # reading the prompt (3000 tokens take 12 s)
    cancel.set()
    cancelled = time.monotonic()
    worker.join(10)
    chunks = [len(b) - len(a) for a, b in zip([[], *engine.evals], engine.evals, strict=False)]
    assert stopped and stopped[0] - cancelled < CANCEL_CHECK_S * 2 + 0.3, chunks
    assert chunks[0] == 16 and max(chunks) <= 64, chunks  # 0.004 s a token: 62 fit
    assert sum(chunks) < len(prompt)
