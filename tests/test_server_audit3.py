"""Issue 24 (hardening, round 3), the server's part: one request never freezes the server.

Reproductions: ``shared/testdata/repros/audit-3/`` (numbered as the issue's defects); the
hostile request bodies among them are in ``tests/assets/hostile/http/``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app, stchat
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


class SlowTokenizer(FakeEngine):
    """Tokenizing blocks its thread for ``delay`` seconds (a CPU-heavy prompt)."""

    delay: float = 1.5

    def tokenize(self, text: str) -> list[int]:
        time.sleep(self.delay)
        return super().tokenize(text)


def test_a_heavy_request_step_runs_off_the_event_loop() -> None:
    engine = SlowTokenizer()
    with live_server(create_app(engine, ServerConfig())) as url:
        worker = threading.Thread(target=httpx.post, args=(url + "/api/extra/tokencount",),
                                  kwargs={"json": {"prompt": "abc"}, "timeout": 30})
        worker.start()
        time.sleep(0.3)  # the tokenizing has started
        start = time.perf_counter()
        health = httpx.get(url + "/health", timeout=30)
        waited = time.perf_counter() - start
        worker.join()
    assert health.status_code == 200
    assert waited < 0.5


def test_heavy_steps_are_bounded_and_the_excess_gets_503() -> None:
    engine = SlowTokenizer()
    engine.delay = 1.0
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
