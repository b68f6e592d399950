"""SillyTavern's samplers through the server: replayed bodies with DRY, XTC, banned strings
and logit bias switched on reach the chain (no "ignoring" warning), token ids are checked
against the vocabulary, and log-probabilities come back on every route, streaming included.

Shapes: OpenAI's completions ``logprobs`` (SillyTavern reads ``choices[0].logprobs
.top_logprobs``), the chat ``logprobs.content`` entries, KoboldCpp's ``n_probs``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.samplers import get_preset
from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine, sse_events

SWITCHED_ON = {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
               "xtc_probability": 0.5, "xtc_threshold": 0.1, "banned_strings": ["a shiver"],
               "logit_bias": {"5": -100, "7": 2.5}, "mirostat_mode": 0, "nsigma": 1.0}


def captured(shared_dir: Path, name: str) -> tuple[str, dict[str, Any]]:
    data = json.loads((shared_dir / "testdata/sillytavern" / name).read_text())
    return data["path"], data["body"]


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_client(fake: FakeEngine) -> Any:
    with TestClient(create_app(fake, ServerConfig())) as client:
        yield client


@pytest.mark.parametrize("name, dialect", [
    ("koboldcpp_completions.json", "koboldcpp"),
    ("koboldcpp_completions_stream.json", "koboldcpp"),
    ("kobold_classic_generate.json", "koboldcpp"),
    ("chat_completion_default.json", "textgen"),
])
def test_replayed_bodies_with_the_samplers_on(shared_dir: Path, fake_client: TestClient,
                                             fake: FakeEngine, name: str, dialect: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path, body = captured(shared_dir, name)
    body = {**body, **SWITCHED_ON}
    with caplog.at_level(logging.WARNING, logger="limamono.server"):
        response = fake_client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert "ignoring" not in caplog.text
    s = fake.calls[0].settings
    assert s.dialect == dialect
    assert (s.dry_multiplier, s.xtc_probability, s.top_n_sigma) == (0.8, 0.5, 1.0)
    assert s.banned_strings == ("a shiver",)
    assert s.logit_bias == ((5, -100.0), (7, 2.5))
    assert s.dry_sequence_breakers == ("\n", ":", '"', "*")  # the JSON string, parsed


def test_textgen_mode_body_is_the_textgen_dialect(shared_dir: Path, fake_client: TestClient,
                                                  fake: FakeEngine) -> None:
    """SillyTavern's ooba mode sends the same fields without KoboldCpp's markers."""
    _, body = captured(shared_dir, "koboldcpp_completions.json")
    body = {k: v for k, v in body.items() if k not in ("api_type", "sampler_order")}
    body.update(SWITCHED_ON, custom_token_bans="3, 9", dynamic_temperature=True,
                dynatemp_low=0.5, dynatemp_high=1.5)
    assert fake_client.post("/v1/completions", json=body).status_code == 200
    s = fake.calls[0].settings
    assert s.dialect == "textgen" and s.custom_token_bans == (3, 9)
    assert (s.dynamic_temperature, s.dynatemp_low, s.dynatemp_high) == (True, 0.5, 1.5)


def test_token_ids_outside_the_vocabulary_are_a_400(fake_client: TestClient,
                                                    fake: FakeEngine) -> None:
    fake.n_vocab = 100  # type: ignore[attr-defined]
    for route, body in (("/v1/completions", {"prompt": "x", "logit_bias": {"100": 1}}),
                        ("/api/v1/generate", {"prompt": "x", "logit_bias": {"250": -5}}),
                        ("/v1/completions", {"prompt": "x", "custom_token_bans": "1,100"})):
        response = fake_client.post(route, json=body)
        assert response.status_code == 400
        assert "out of range; this model's ids are 0-99" in response.text
    ok = fake_client.post("/v1/completions", json={"prompt": "x", "logit_bias": {"99": 1}})
    assert ok.status_code == 200
    bad = fake_client.post("/v1/completions", json={"prompt": "x", "logit_bias": {"a": 1}})
    assert bad.status_code == 400 and "logit_bias['a']" in bad.text


def test_bad_sampler_values_name_the_field(fake_client: TestClient) -> None:
    for body, field in (({"dry_sequence_breakers": "[oops"}, "dry_sequence_breakers"),
                        ({"xtc_probability": 2}, "xtc_probability"),
                        ({"sampler_priority": ["top_k", "warp"]}, "sampler_priority"),
                        ({"logprobs": 50}, "logprobs")):
        response = fake_client.post("/v1/completions", json={"prompt": "x", **body})
        assert response.status_code == 400, body
        assert field in response.text
    kobold = fake_client.post("/api/v1/generate", json={"prompt": "x",
                                                        "sampler_order": [6, 0, 9]})
    assert kobold.status_code == 400 and "sampler_order" in kobold.text


def test_the_servers_own_bans_hold_for_every_request(fake: FakeEngine) -> None:
    base = get_preset("limamono").replace(banned_strings=("ozone",))
    with TestClient(create_app(fake, ServerConfig(samplers=base))) as client:
        client.post("/v1/completions", json={"prompt": "x", "banned_strings": ["a shiver"]})
        client.post("/v1/completions", json={"prompt": "x", "banned_strings": []})
    assert fake.calls[0].settings.banned_strings == ("ozone", "a shiver")
    assert fake.calls[1].settings.banned_strings == ("ozone",)


# ------------------------------------------------------ log-probabilities, real engine


@pytest.fixture(scope="module")
def tiny_client(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from limamono.engine.torch_engine import Engine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = Engine(model, tokenizer, name="tiny", context_length=256)
    with TestClient(create_app(engine, ServerConfig())) as client:
        yield client


# soft_landing off: a pure argmax (the landing may force a closing "." near max_tokens).
GREEDY = {"prompt": "The lighthouse keeper said", "temperature": 0, "max_tokens": 8,
          "soft_landing": False}


def _check_completion_logprobs(logprobs: dict[str, Any], text: str, top: int) -> None:
    assert "".join(logprobs["tokens"]) == text
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"])
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(t) == top for t in logprobs["top_logprobs"])
    # greedy: the chosen token is the most likely one
    for chosen, alternatives in zip(logprobs["token_logprobs"], logprobs["top_logprobs"],
                                    strict=True):
        assert chosen == pytest.approx(max(alternatives.values()))
    offsets = [0]
    for token in logprobs["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets


def test_completion_logprobs(tiny_client: TestClient) -> None:
    reply = tiny_client.post("/v1/completions", json={**GREEDY, "logprobs": 3}).json()
    choice = reply["choices"][0]
    _check_completion_logprobs(choice["logprobs"], choice["text"], 3)
    plain = tiny_client.post("/v1/completions", json=GREEDY).json()["choices"][0]
    assert plain["logprobs"] is None and plain["text"] == choice["text"]
    # streamed: each chunk carries its tokens; together they equal the whole reply's
    events = sse_events(tiny_client.post("/v1/completions",
                                         json={**GREEDY, "logprobs": 3, "stream": True}).text)
    chunks = [json.loads(e["data"]) for e in events if e["data"] != "[DONE]"]
    tokens = [t for c in chunks if c["choices"][0]["logprobs"]
              for t in c["choices"][0]["logprobs"]["tokens"]]
    assert tokens == choice["logprobs"]["tokens"]
    offsets = [o for c in chunks if c["choices"][0]["logprobs"]
               for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == choice["logprobs"]["text_offset"]


def test_chat_logprobs(tiny_client: TestClient) -> None:
    body = {"messages": [{"role": "system", "content": "Mira keeps a lighthouse."},
                         {"role": "user", "content": "Hello?"}],
            "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    choice = tiny_client.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert content and all(len(e["top_logprobs"]) == 2 for e in content)
    assert all(bytes(e["bytes"]).decode("utf-8") == e["token"] for e in content)
    events = sse_events(tiny_client.post("/v1/chat/completions",
                                         json={**body, "stream": True}).text)
    streamed = [e for ev in events if ev["data"] != "[DONE]"
                for e in ((json.loads(ev["data"])["choices"][0].get("logprobs") or {})
                          .get("content", []))]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert all(math.isfinite(e["logprob"]) for e in streamed)


def test_kobold_n_probs(tiny_client: TestClient) -> None:
    body = {"prompt": "Once upon a time", "max_length": 6, "temperature": 0, "n_probs": 2}
    result = tiny_client.post("/api/v1/generate", json=body).json()["results"][0]
    content = result["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == result["text"]
    assert all(len(e["top_logprobs"]) == 2 for e in content)
    events = sse_events(tiny_client.post("/api/extra/generate/stream", json=body).text)
    streamed = [e["token"] for ev in events
                for e in (json.loads(ev["data"]).get("logprobs") or {}).get("content", [])]
    assert streamed == [e["token"] for e in content]
    assert "logprobs" not in tiny_client.post(
        "/api/v1/generate", json={**body, "n_probs": 0}).json()["results"][0]


def test_ban_eos_reaches_the_chain_and_min_tokens_is_logged(
        fake_client: TestClient, fake: FakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="limamono.server"):
        fake_client.post("/v1/completions", json={"prompt": "x", "ban_eos_token": True,
                                                  "min_tokens": 5})
    assert fake.calls[0].settings.ban_eos_token
    assert "does not implement: min_tokens" in caplog.text


def test_serve_ban_option_sets_the_servers_bans() -> None:
    from limamono.cli.serve_cmd import server_config

    config, _ = server_config(None, 16, None, [], 4.0, 256, "none", bans=("ozone", "a shiver"))
    assert config.sampler_settings().banned_strings == ("ozone", "a shiver")
    with pytest.raises(ValueError, match="--ban: banned_strings"):
        server_config(None, 16, None, [], 4.0, 256, "none", bans=("x" * 300,))
