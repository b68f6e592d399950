"""The server, unchanged, on the llama.cpp engine: every body a real SillyTavern sent.

Each captured request (``shared/testdata/sillytavern``) is replayed as it was sent, except
that its reply length is capped at 12 tokens; the engine's context of 512 tokens makes the
server fit the long prompts (llama.cpp reads a Q4_1 prompt at ~100-200 tokens a second on
one thread), which keeps the test fast and runs the fitting too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app
from test_server_fakes import sse_events

LENGTH_FIELDS = ("max_tokens", "max_new_tokens", "max_length")
CAP = 12


@pytest.fixture(scope="module")
def engine() -> Any:
    from limamono.engine import load_engine

    made = load_engine(threads=1, context_length=512, backend="llamacpp")
    yield made
    made.close()


@pytest.fixture(scope="module")
def client(engine: Any) -> Any:
    with TestClient(create_app(engine, ServerConfig())) as test_client:
        yield test_client


def replay(client: TestClient, shared_dir: Path, name: str) -> tuple[dict[str, Any], Any]:
    item = json.loads((shared_dir / "testdata" / "sillytavern" / name).read_text("utf-8"))
    body = {k: min(v, CAP) if k in LENGTH_FIELDS else v for k, v in item["body"].items()}
    return body, client.request(item["method"], item["path"], json=body)


def test_the_engine_is_llamacpp(engine: Any, client: TestClient) -> None:
    assert engine.backend == "llamacpp"
    assert client.get("/v1/models").json()["data"][0]["id"] == "smollm2-135m"


@pytest.mark.parametrize("name", ["koboldcpp_completions.json", "kobold_classic_generate.json",
                                  "chat_completion_default.json",
                                  "chat_completion_names.json"])
def test_captured_generation_bodies(client: TestClient, shared_dir: Path, name: str) -> None:
    body, response = replay(client, shared_dir, name)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(response.text)
        assert events[-1]["data"] == "[DONE]"
        chunks = [json.loads(e["data"]) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        reply = {"choices": [{"message": {"content": "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks)}}]}
    else:
        reply = response.json()
    if "results" in reply:  # KoboldAI Classic
        text = reply["results"][0]["text"]
    elif "message" in reply["choices"][0]:
        text = reply["choices"][0]["message"]["content"]
        assert "###" not in text
    else:
        text = reply["choices"][0]["text"]
        assert 1 <= reply["usage"]["completion_tokens"] <= CAP
    assert isinstance(text, str) and "\ufffd" not in text
    for stop in body.get("stop") or body.get("stop_sequence") or []:
        assert stop not in text


def test_captured_stream_joins_and_ends_with_a_finish_reason(client: TestClient,
                                                             shared_dir: Path) -> None:
    body, response = replay(client, shared_dir, "koboldcpp_completions_stream.json")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1]["data"] == "[DONE]"
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    seeded = {**body, "stream": False, "seed": 5, "temperature": 0}
    whole = client.post("/v1/completions", json=seeded).json()["choices"][0]["text"]
    again = client.post("/v1/completions", json={**seeded, "stream": True})
    joined = "".join(json.loads(e["data"])["choices"][0]["text"]
                     for e in sse_events(again.text)[:-1])
    assert joined == whole


def test_captured_tokencount_uses_the_gguf_tokenizer(client: TestClient, engine: Any,
                                                     shared_dir: Path) -> None:
    _, response = replay(client, shared_dir, "koboldcpp_tokencount.json")
    ids = engine.tokenize("Seraphina")
    assert response.json() == {"value": len(ids), "ids": ids}
