"""One test per SillyTavern mode, with bodies shaped as SillyTavern sends them, on a fake engine.

Request shapes follow ``shared/reference/sillytavern_api.md`` §1 (what SillyTavern sends per
mode) and the bodies captured from a real SillyTavern (``shared/testdata/sillytavern``),
which are replayed unchanged. Responses are read the way SillyTavern reads them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.core.policy import get_policy
from limamono.samplers import KOBOLDCPP_DEFAULT_ORDER
from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine, sse_events

REPLY = "Edda looked up. \"Who's there?\"\nTester: I am"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=REPLY)


@pytest.fixture
def client(engine: FakeEngine) -> Any:
    with TestClient(create_app(engine, ServerConfig())) as test_client:
        yield test_client


def captured(shared_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((shared_dir / "testdata" / "sillytavern" / name).read_text("utf-8"))


def replay(client: TestClient, shared_dir: Path, name: str) -> Any:
    """Send a captured request exactly as the backend received it."""
    item = captured(shared_dir, name)
    return client.request(item["method"], item["path"], json=item["body"])


def stream_chunks(text: str) -> list[dict[str, Any]]:
    """OpenAI stream: every event but the final ``[DONE]`` is JSON; check the framing."""
    events = sse_events(text)
    assert events[-1]["data"] == "[DONE]"
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    for chunk in chunks:  # SillyTavern treats these keys as an error (tryParseStreamingError)
        assert not {"error", "message", "detail"} & chunk.keys()
    return chunks


# --------------------------------------------------------------------------- KoboldAI Classic

def test_kobold_classic_status_checks(client: TestClient) -> None:
    # SillyTavern's /status makes these three GETs; feature flags compare `result`.
    assert client.get("/api/v1/info/version").json() == {"result": "1.2.5"}
    extra = client.get("/api/extra/version").json()
    assert extra["result"] == "KoboldCpp" and not extra["result"][0].isdigit()
    assert client.get("/api/v1/model").json() == {"result": "fake-limamono"}
    assert client.get("/api/v1/config/max_context_length").json() == {"value": 2048}
    assert client.get("/api/v1/config/max_length").json() == {"value": 256}


def test_kobold_classic_captured_generate(client: TestClient, engine: FakeEngine,
                                          shared_dir: Path) -> None:
    response = replay(client, shared_dir, "kobold_classic_generate.json")
    assert response.status_code == 200
    # SillyTavern reads data.results[0].text.
    assert response.json()["results"][0]["text"] == REPLY
    assert response.json()["results"][0]["finish_reason"] == "stop"
    call = engine.calls[0]
    assert call.prompt == "User: Hi\nAssistant:"
    assert (call.max_new_tokens, call.stop) == (50, ("\nUser:",))
    assert (call.settings.dialect, call.settings.temperature) == ("koboldcpp", 0.7)


def kobold_classic_body(prompt: str) -> dict[str, Any]:
    """``kobold.js /generate`` re-packed body (reference §1.5), streaming on."""
    return {
        "prompt": prompt, "use_story": False, "use_memory": False, "use_authors_note": False,
        "use_world_info": False, "max_context_length": 4096, "max_length": 120,
        "rep_pen": 1.11, "rep_pen_range": 2048, "rep_pen_slope": 0.9, "temperature": 1,
        "tfs": 0.85, "top_a": 0, "top_k": 0, "top_p": 1, "min_p": 0, "typical": 1,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5], "singleline": False,
        "use_default_badwordsids": False, "mirostat": 0, "mirostat_eta": 0.1,
        "mirostat_tau": 5, "grammar": "", "sampler_seed": 42, "stop_sequence": ["\nTester:"],
        "streaming": True, "can_abort": True, "api_server": "http://127.0.0.1:5001/api",
    }


def test_kobold_classic_stream_framing(client: TestClient, engine: FakeEngine) -> None:
    response = client.post("/api/extra/generate/stream", json=kobold_classic_body("Hi"))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert all(e["event"] == "message" for e in events)
    data = [json.loads(e["data"]) for e in events]
    # The finish reason is the *string* "null" until the last event.
    assert [d["finish_reason"] for d in data] == ["null"] * (len(data) - 1) + ["stop"]
    assert "".join(d["token"] for d in data) == "Edda looked up. \"Who's there?\""
    settings = engine.calls[0].settings
    assert (settings.dialect, settings.tfs, settings.rep_pen_slope, settings.seed) == (
        "koboldcpp", 0.85, 0.9, 42)
    assert settings.sampler_order == KOBOLDCPP_DEFAULT_ORDER


def test_kobold_generate_check_and_abort_when_idle(client: TestClient) -> None:
    assert client.get("/api/extra/generate/check").json() == {"results": [{"text": ""}]}
    assert client.post("/api/extra/abort").json() == {"success": "false", "done": "false"}
    assert client.post("/api/extra/abort", json={"genkey": "KCPP1234"}).json()["done"] == "false"


# --------------------------------------------------------------------------- KoboldCpp (TC)

def test_koboldcpp_captured_completion(client: TestClient, engine: FakeEngine,
                                       shared_dir: Path) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "fake-limamono"
    response = replay(client, shared_dir, "koboldcpp_completions.json")
    body = response.json()
    assert response.status_code == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Edda looked up. \"Who's there?\""
    assert body["choices"][0]["finish_reason"] == "stop"
    call = engine.calls[0]
    assert call.stop == ("\nTester:", "\n***")  # leading newlines kept, as sent
    assert call.max_new_tokens == 350
    s = call.settings
    assert (s.dialect, s.rep_pen, s.rep_pen_range, s.top_p, s.seed) == (
        "koboldcpp", 1.1, 0, 0.9, None)


def test_koboldcpp_captured_stream(client: TestClient, shared_dir: Path) -> None:
    response = replay(client, shared_dir, "koboldcpp_completions_stream.json")
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = stream_chunks(response.text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == REPLY.split("\nTester:")[0]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_koboldcpp_captured_tokencount(client: TestClient, shared_dir: Path) -> None:
    # SillyTavern reads `value` (count) and `ids`; the fake has one token per character.
    body = replay(client, shared_dir, "koboldcpp_tokencount.json").json()
    assert body == {"value": 9, "ids": [ord(c) for c in "Seraphina"]}


def test_limamono_preset_turn_two_body(client: TestClient, engine: FakeEngine,
                                       shared_dir: Path) -> None:
    path = "limamono-presets/captured/kcpp_Limamono_turn2_body.json"
    body = captured(shared_dir, path)
    body = body.get("body", body)
    assert client.post("/v1/completions", json=body).status_code == 200
    call = engine.calls[0]
    assert call.prompt == body["prompt"]
    assert "###" in call.stop and "\nCorin:" in call.stop
    s = call.settings
    assert (s.dialect, s.tfs, s.rep_pen, s.rep_pen_range) == ("koboldcpp", 0.85, 1.11, 2048)


# --------------------------------------------------------------------------- text-generation-webui

def textgen_body(prompt: str) -> dict[str, Any]:
    """What SillyTavern sends in Text Completion -> Text Generation WebUI mode (§1.3, §6.6)."""
    return {
        "prompt": prompt, "max_new_tokens": 200, "max_tokens": 200, "temperature": 0.8,
        "top_p": 0.95, "typical_p": 1, "typical": 1, "sampler_seed": 7, "min_p": 0.05,
        "repetition_penalty": 1.05, "frequency_penalty": 0, "presence_penalty": 0,
        "top_k": 40, "min_length": 0, "min_tokens": 0, "num_beams": 1, "length_penalty": 1,
        "early_stopping": False, "add_bos_token": True, "dynamic_temperature": False,
        "dynatemp_low": 0, "dynatemp_high": 2, "dynatemp_range": 0, "dynatemp_exponent": 1,
        "smoothing_factor": 0, "smoothing_curve": 1, "dry_multiplier": 0,
        "dry_sequence_breakers": "[\"\\n\",\":\",\"\\\"\",\"*\"]", "sampler_priority": [
            "temperature", "top_k", "top_p", "typical_p", "tfs", "top_a", "min_p"],
        "stopping_strings": ["\n### Input:", "\nTester:"], "stop": ["\n### Input:", "\nTester:"],
        "truncation_length": 8192, "ban_eos_token": False, "skip_special_tokens": True,
        "top_a": 0, "tfs": 0.9, "epsilon_cutoff": 0, "eta_cutoff": 0, "mirostat_mode": 0,
        "mirostat_tau": 5, "mirostat_eta": 0.1, "custom_token_bans": "", "banned_strings": [],
        "api_type": "ooba", "api_server": "http://127.0.0.1:5000", "legacy_api": False,
        "rep_pen": 1.05, "rep_pen_range": 0, "repetition_penalty_range": 1024,
        "encoder_repetition_penalty": 1, "no_repeat_ngram_size": 0, "penalty_alpha": 0,
        "temperature_last": True, "do_sample": True, "seed": 7, "guidance_scale": 1,
        "negative_prompt": "", "grammar_string": "", "repeat_penalty": 1.05, "tfs_z": 0.9,
        "repeat_last_n": 0, "n_predict": 200, "num_predict": 200, "num_ctx": 8192,
        "mirostat": 0, "ignore_eos": False, "rep_pen_slope": 1, "xtc_threshold": 0.1,
        "xtc_probability": 0,
    }


def test_textgen_mode(client: TestClient, engine: FakeEngine) -> None:
    # Status: /v1/models then /v1/internal/model/info (enables remote token counting).
    assert client.get("/v1/internal/model/info").json() == {
        "model_name": "fake-limamono", "lora_names": [], "context_length": 2048,
        "prompt_policy": "training"}
    assert client.post("/v1/internal/encode", json={"text": "abc"}).json() == {
        "tokens": [97, 98, 99], "length": 3}
    assert client.post("/v1/internal/token-count", json={"text": "abcd"}).json() == {"length": 4}
    body = client.post("/v1/completions", json=textgen_body("Tester: hi")).json()
    assert body["choices"][0]["text"] == REPLY.split("\nTester:")[0]
    s = engine.calls[0].settings
    # textgen names win: repetition_penalty_range, not rep_pen_range; temperature moved last.
    assert (s.dialect, s.rep_pen_range, s.top_k, s.min_p, s.tfs, s.seed) == (
        "textgen", 1024, 40, 0.05, 0.9, 7)
    assert s.sampler_priority[-1] == "temperature"
    assert client.post("/v1/internal/stop-generation").json() == "OK"


# --------------------------------------------------------------------------- generic OpenAI

def test_generic_openai_mode_takes_missing_samplers_from_the_preset(
        client: TestClient, engine: FakeEngine) -> None:
    # ST-new filters the body to OPENAI_KEYS and cuts `stop` to 4 entries.
    body = {"model": "fake-limamono", "prompt": "Hello", "stream": False, "temperature": 0.7,
            "top_p": 0.9, "frequency_penalty": 0, "presence_penalty": 0,
            "stop": ["\nTester:", "###", "\n***", "\n<|end|>"], "seed": 3, "max_tokens": 64,
            "n": 1, "logprobs": None}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 5
    s = engine.calls[0].settings
    assert (s.temperature, s.top_p, s.seed, s.dialect) == (0.7, 0.9, 3, "textgen")
    assert (s.tfs, s.rep_pen, s.rep_pen_range) == (0.85, 1.11, 2048)  # the limamono preset


def test_generic_openai_stream_with_usage(client: TestClient) -> None:
    body = {"prompt": "Hello", "stream": True, "max_tokens": 8,
            "stream_options": {"include_usage": True}}
    chunks = stream_chunks(client.post("/v1/completions", json=body).text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Edda loo"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 8,
                                   "total_tokens": 13}


# --------------------------------------------------------------------------- chat completions

def chat_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Edda Varn\nA lighthouse keeper.\nScenario: A storm."},
        {"role": "assistant", "content": "Edda looked up."},
        {"role": "user", "name": "Corin", "content": "Hello?"},
    ]


def test_chat_completion_renders_the_limamono_format(client: TestClient,
                                                     engine: FakeEngine) -> None:
    engine.reply = " She opened the door.\nCorin: thanks"
    body = client.post("/v1/chat/completions", json={
        "messages": chat_messages(), "max_tokens": 100, "response_length": "medium"}).json()
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": "She opened the door."}
    conversation = Conversation(
        Character("Edda Varn", "A lighthouse keeper."), User("Corin"), "A storm.",
        [Message("char", "Edda looked up."), Message("user", "Hello?")])
    expected = get_policy("training").render(conversation, response_length="medium")
    call = engine.calls[0]
    assert call.prompt == expected
    assert "### Response: (length = micro)\nEdda Varn: Edda looked up.\n\n### Input: " \
        "(length = micro)\nCorin: Hello?" in call.prompt
    assert call.prompt.endswith("### Response: (length = medium)\nEdda Varn:")
    assert set(fmt.stop_strings("Corin")) <= set(call.stop)


def test_chat_completion_stream(client: TestClient, engine: FakeEngine) -> None:
    engine.reply = " She nods."
    response = client.post("/v1/chat/completions",
                           json={"messages": chat_messages(), "stream": True})
    chunks = stream_chunks(response.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "She nods."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_completion_names_the_bad_message(client: TestClient) -> None:
    messages = [*chat_messages(), {"role": "tool", "content": "x"}]
    response = client.post("/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[3]"


# --------------------------------------------------------------------------- health

def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": "fake-limamono",
                                            "busy": False, "waiting": 0}


def test_chat_takes_the_character_name_from_its_turns(client: TestClient,
                                                      engine: FakeEngine) -> None:
    messages = [{"role": "system", "content": "Write the next reply.\nScenario: A storm."},
                {"role": "assistant", "name": "Edda Varn", "content": "Who's there?"},
                {"role": "user", "name": "Corin", "content": "Hello?"}]
    client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 10})
    assert engine.calls[0].prompt.endswith("\nEdda Varn:")
    assert engine.calls[0].prompt.startswith(f"{fmt.TRIGGERS['card']}\n\n### Instruction:\n"
                                             "Edda Varn\nWrite the next reply.\nScenario: A "
                                             "storm.\n\n### Response: (length = micro)\n"
                                             "Edda Varn: Who's there?")


def test_chat_policy_sillytavern_renders_as_the_presets(client: TestClient,
                                                        engine: FakeEngine) -> None:
    client.post("/v1/chat/completions", json={"messages": chat_messages(), "max_tokens": 10,
                                              "policy": "sillytavern"})
    conversation = Conversation(
        Character("Edda Varn", "A lighthouse keeper."), User("Corin"), "A storm.",
        [Message("char", "Edda looked up."), Message("user", "Hello?")])
    assert engine.calls[0].prompt == fmt.render(conversation, open_response=True,
                                                input_length="tiny")
    bad = client.post("/v1/chat/completions", json={"messages": chat_messages(),
                                                    "policy": "chat"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "policy"


def test_unimplemented_samplers_are_accepted_with_a_warning(
        client: TestClient, engine: FakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    body = {"prompt": "x", "mirostat_mode": 2, "dry_multiplier": 0, "xtc_probability": 0.5,
            "eta_cutoff": 3e-4}
    with caplog.at_level("WARNING", logger="limamono.server"):
        assert client.post("/v1/completions", json=body).status_code == 200
    assert "does not implement: eta_cutoff\n" in caplog.text  # mirostat and XTC are run
    settings = engine.calls[0].settings
    assert (settings.mirostat, settings.xtc_probability) == (2, 0.5)


def test_sse_frames_are_one_compact_line_with_unicode_kept(client: TestClient,
                                                            engine: FakeEngine) -> None:
    engine.reply = "Café\nnaïve"
    raw = client.post("/api/extra/generate/stream", json={"prompt": "x"}).text
    # a queued stream may first get SSE comments (": queued, position 1"), which clients skip
    raw = re.sub(r"\A(?::[^\n]*\n\n)+", "", raw)
    assert raw.startswith('event: message\ndata: {"token":"Café","finish_reason":"null"}\n\n')
    assert '"token":"\\nnaïve"' in raw  # a newline in text cannot split an event
