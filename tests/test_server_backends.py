"""SillyTavern's llama.cpp, TabbyAPI and Aphrodite/vLLM Text Completion types (issue 21).

What SillyTavern 1.12.6 (ba6f7b7a) calls and reads, from its source:
- generation: ``POST /completion`` for llama.cpp (src/endpoints/backends/text-completions.js
  256-269), its whole body forwarded; the page reads ``data.content`` from each streamed
  event and from the reply (public/scripts/textgen-settings.js 905);
- llama.cpp's body adds ``samplers`` (LLAMACPP_DEFAULT_ORDER, textgen-settings.js 62-69),
  ``logit_bias`` as ``[id, bias]`` pairs with ``[id, false]`` for a banned token, ``grammar``
  and ``cache_prompt`` (textgen-settings.js 1286-1300);
- token counts: ``POST /tokenize`` with ``{"content"}`` (llama.cpp), ``/v1/token/encode``
  with ``{"text"}`` (TabbyAPI), ``/v1/tokenize`` with ``{"model", "prompt"}`` (Aphrodite);
  the count is ``length ?? count ?? value ?? tokens.length`` and the ids ``tokens ?? ids``
  (src/endpoints/tokenizers.js 957-979, 996-997);
- status: ``/v1/models`` (llama.cpp, Aphrodite), ``/v1/model/list`` then ``/v1/model``
  (TabbyAPI), each model's ``id`` (text-completions.js 105-124, 165-210);
- ``/props`` and ``/slots`` (text-completions.js 514-590) for its slash commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine, sse_events

LLAMACPP_DEFAULT_ORDER = ["top_k", "tfs_z", "typical_p", "top_p", "min_p", "temperature"]


def st_llamacpp_body(shared_dir: Path) -> dict[str, Any]:
    """A body SillyTavern sends to the llama.cpp type: the captured Text Completion body
    (the same settings object for every type), with llama.cpp's additions instead of
    KoboldCpp's."""
    body = json.loads((shared_dir / "testdata/repros/sillytavern-2"
                       / "D3_D5_tc_personality_examples_st_body.json").read_text())
    for key in ("sampler_order", "api_type"):
        body.pop(key)
    body.update(api_type="llamacpp", samplers=LLAMACPP_DEFAULT_ORDER, logit_bias=[],
                grammar="", cache_prompt=True, stream=False, n_predict=40, max_tokens=40,
                max_new_tokens=40, num_predict=40)
    return body


def serve(engine: FakeEngine) -> TestClient:
    return TestClient(create_app(engine, ServerConfig()))


def test_completion_runs_llamacpp_names_with_koboldcpp_semantics(shared_dir):
    engine = FakeEngine(reply=' "Two coins," she said.', context_length=8192)
    with serve(engine) as client:
        reply = client.post("/completion", json=st_llamacpp_body(shared_dir))
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["content"] == ' "Two coins," she said.'
    assert (data["stop"], data["stop_type"], data["tokens_predicted"]) == (True, "eos", 23)
    call = engine.calls[0]
    s = call.settings
    assert (s.dialect, s.tfs, s.rep_pen, s.rep_pen_range, s.temperature) == (
        "koboldcpp", 0.85, 1.11, 2048, 1)
    # penalties first, then the names in order; min_p runs after top_p, as in KoboldCpp
    assert s.sampler_order == (6, 0, 3, 4, 2, 5)
    assert call.max_new_tokens == 40
    assert "\nUser:" in call.stop and "###" in call.stop


def test_streamed_completion_is_llamacpp_events_without_done(shared_dir):
    engine = FakeEngine(reply=" Aye, the lamp.", context_length=8192)
    with serve(engine) as client:
        reply = client.post("/completion", json={**st_llamacpp_body(shared_dir),
                                                 "stream": True})
    events = [json.loads(e["data"]) for e in sse_events(reply.text)]
    # textgen-settings.js 905: data?.choices?.[0]?.text || data?.content
    assert "".join(e["content"] for e in events) == " Aye, the lamp."
    assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
    assert "[DONE]" not in reply.text


@pytest.mark.parametrize(("fields", "check"), [
    ({"repeat_last_n": 0}, lambda s: (s.rep_pen, s.presence_penalty) == (1.0, 0.0)),
    ({"repeat_last_n": -1}, lambda s: s.rep_pen_range == 8192),
    ({"dry_multiplier": 0.8, "dry_penalty_last_n": 0}, lambda s: s.dry_multiplier == 0.0),
    ({"logit_bias": [[5, False], [7, -2.5]]},
     lambda s: s.custom_token_bans == (5,) and s.logit_bias == ((7, -2.5),)),
    ({"samplers": ["temperature", "top_k", "xtc"]}, lambda s: s.sampler_order == (6, 5, 0)),
])
def test_llamacpp_wire_rules(fields, check):
    engine = FakeEngine(context_length=8192)
    with serve(engine) as client:
        reply = client.post("/completion", json={"prompt": "Once", "n_predict": 4, **fields})
    assert reply.status_code == 200, reply.text
    assert check(engine.calls[0].settings)


def test_a_bad_sampler_name_is_a_400_naming_samplers():
    with serve(FakeEngine()) as client:
        reply = client.post("/completion", json={"prompt": "x", "samplers": ["top_q"]})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "samplers"
    assert "unknown sampler 'top_q'" in reply.json()["error"]["message"]


def test_tokenize_routes_of_every_type():
    engine = FakeEngine()  # one character is one token
    with serve(engine) as client:
        answers = [client.post("/tokenize", json={"content": "Edda"}),
                   client.post("/tokenize", json={"model": "m", "prompt": "Edda"}),
                   client.post("/v1/tokenize", json={"model": "m", "prompt": "Edda"}),
                   client.post("/v1/token/encode", json={"text": "Edda"})]
        back = client.post("/detokenize", json={"tokens": [69, 100]})
        empty = client.post("/tokenize", json={})
    for answer in answers:
        data = answer.json()
        # tokenizers.js 996-997
        assert data.get("length", data.get("count")) == 4
        assert data["tokens"] == [69, 100, 100, 97]
    assert back.json() == {"content": "Ed"}
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "content"


def test_status_props_and_slots():
    engine = FakeEngine(context_length=4096)
    with serve(engine) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "fake-limamono"
        assert client.get("/v1/model/list").json()["data"][0]["id"] == "fake-limamono"
        assert client.get("/v1/model").json()["id"] == "fake-limamono"
        assert client.get("/props").json()["default_generation_settings"]["n_ctx"] == 4096
        assert client.get("/slots").json() == [{"id": 0, "n_ctx": 4096,
                                                "is_processing": False}]
        assert client.get("/health").json()["status"] == "ok"


def test_completion_probabilities_shape_sillytavern_reads():
    """textgen-settings.js 943-949: logprobs[0].probs.map(x => [x.tok_str, x.prob])."""
    import math

    from limamono.engine.protocol import TextChunk, TokenLogprob
    from limamono.server.backends import completion_probabilities

    chunk = TextChunk(" the", logprobs=(TokenLogprob(" the", 5, math.log(0.5),
                                                     ((" the", 5, math.log(0.5)),
                                                      (" a", 7, math.log(0.25)))),))
    assert completion_probabilities(chunk) == [
        {"content": " the", "probs": [{"tok_str": " the", "prob": 0.5},
                                      {"tok_str": " a", "prob": 0.25}]}]


@pytest.mark.parametrize(("route", "fields", "param"), [
    ("/completion", {"json_schema": {"type": "object"}}, "json_schema"),
    ("/completion", {"grammar": 'root ::= "yes"'}, "grammar"),
    ("/v1/completions", {"grammar_string": 'root ::= "yes"'}, "grammar_string"),
    ("/api/v1/generate", {"grammar": 'root ::= "yes"'}, "grammar"),
    ("/v1/completions", {"response_format": {"type": "json_object"}}, "response_format"),
])
def test_constrained_decoding_is_refused_naming_the_field(route, fields, param):
    """Free text to a client that parses JSON would fail later and silently: an engine
    without grammars (torch, this fake) refuses naming the field and the backend."""
    engine = FakeEngine()
    with serve(engine) as client:
        reply = client.post(route, json={"prompt": "Once", "max_tokens": 4, **fields})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param
    assert reply.json()["error"]["message"].startswith(
        f"{param}: grammars and JSON schemas need the llama.cpp backend")
    assert engine.calls == []


def test_empty_constraint_fields_pass(shared_dir):
    """SillyTavern sends grammar "" / grammar_string "" / json_schema {} when they are off."""
    engine = FakeEngine(context_length=8192)
    with serve(engine) as client:
        reply = client.post("/completion", json={**st_llamacpp_body(shared_dir),
                                                 "json_schema": {}, "grammar": ""})
    assert reply.status_code == 200, reply.text
