"""The server on the real torch engine (``engine.torch_engine.Engine``) with the tiny random model.

The text is noise, but everything around it is real: tokenizer, KV cache, stop strings,
the generation lock, truncation and cancellation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from limamono.engine.torch_engine import Engine
from limamono.server import ServerConfig, create_app
from test_server_fakes import live_server, sse_events

CONTEXT = 256


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return Engine(model, tokenizer, name="tiny-llama", context_length=CONTEXT)


@pytest.fixture
def client(engine: Engine) -> Any:
    with TestClient(create_app(engine, ServerConfig())) as test_client:
        yield test_client


GREEDY = {"temperature": 0, "max_tokens": 12}


def test_greedy_completion_is_repeatable_and_counts_tokens(client: TestClient,
                                                           engine: Engine) -> None:
    body = {"prompt": "The lighthouse keeper said", **GREEDY}
    first = client.post("/v1/completions", json=body).json()
    second = client.post("/v1/completions", json=body).json()
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    usage = first["usage"]
    assert usage["prompt_tokens"] == len(engine.tokenize(body["prompt"]))
    assert 1 <= usage["completion_tokens"] <= 12
    count = client.post("/api/extra/tokencount", json={"prompt": body["prompt"]}).json()
    assert count == {"value": usage["prompt_tokens"], "ids": engine.tokenize(body["prompt"])}


def test_kobold_stream_joins_to_the_non_streamed_reply(client: TestClient) -> None:
    body = {"prompt": "Once upon a time", "max_length": 12, "temperature": 0,
            "rep_pen": 1.1, "rep_pen_range": 64, "tfs": 0.9}
    whole = client.post("/api/v1/generate", json=body).json()["results"][0]["text"]
    events = sse_events(client.post("/api/extra/generate/stream", json=body).text)
    data = [json.loads(e["data"]) for e in events]
    assert all(e["event"] == "message" for e in events)
    assert "".join(d["token"] for d in data) == whole
    assert data[-1]["finish_reason"] in ("stop", "length")


def test_chat_completion_on_the_real_engine(client: TestClient) -> None:
    body = {"messages": [{"role": "system", "content": "Edda\nA keeper.\nScenario: Rain."},
                         {"role": "user", "content": "Hello?"}], **GREEDY}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert "###" not in reply["choices"][0]["message"]["content"]


def test_overflowing_prompt_is_cut_from_the_left(client: TestClient) -> None:
    prompt = "word " * 600  # about 600 tokens, far over the 256-token context
    reply = client.post("/v1/completions", json={"prompt": prompt, **GREEDY})
    assert reply.status_code == 200
    assert reply.json()["usage"]["prompt_tokens"] <= CONTEXT - 12


def test_dropped_stream_frees_the_real_engine(engine: Engine) -> None:
    # A 2000-token reply takes seconds: the drop must stop it, not its natural end.
    engine = Engine(engine.model, engine.tokenizer, name="tiny-llama", context_length=2048)
    app = create_app(engine, ServerConfig())
    body = {"prompt": "The storm", "max_tokens": 2000, "stream": True,
            "temperature": 1.0, "seed": 1}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            count = client.post("/api/extra/tokencount", json={"prompt": "abc"}).json()
            assert count["value"] == len(engine.tokenize("abc"))  # not blocked by the lock
        dropped = time.monotonic()
        while client.get("/health").json()["busy"]:
            assert time.monotonic() - dropped < 1.0
        perf = client.get("/api/extra/perf").json()
        assert perf["cancelled"] == 1 and perf["max_cancel_latency_s"] < 1.0
    app.state.limamono.queue.close()


def test_context_boundary_fits_exactly_and_one_more_token_is_cut(client: TestClient,
                                                                 engine: Engine) -> None:
    budget = CONTEXT - 12
    words = ["Rain"]
    while len(engine.tokenize(" ".join(words))) < budget:
        words.append("rain")
    exact = " ".join(words)
    assert len(engine.tokenize(exact)) == budget  # " rain" is one token
    fits = client.post("/v1/completions", json={"prompt": exact, **GREEDY}).json()
    assert fits["usage"]["prompt_tokens"] == budget  # prompt + max_tokens == context
    over = client.post("/v1/completions", json={"prompt": exact + " rain", **GREEDY}).json()
    assert over["usage"]["prompt_tokens"] == budget  # one token over: cut from the left
