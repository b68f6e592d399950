"""The server fits prompts with the prompt policy, logs every cut, reports its real context,
and renders SillyTavern's default Chat Completion bodies as the right Limamono prompt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.core import format as fmt
from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine

TRIGGER = fmt.TRIGGERS["card"]
EDDA_SHEET = (f"{TRIGGER}\n\n### Instruction:\nEdda Varn\nOccupation: lighthouse keeper\n"
              "Edda has kept the Saltreach light for twenty-six years. She is gruff, practical "
              "and kind underneath.\nScenario: A courier knocks on the lighthouse door during "
              "a storm.")


@dataclass
class TokenizerEngine(FakeEngine):
    """The fake engine, counting tokens with a real tokenizer."""

    tokenizer: Any = None

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def serve(engine: FakeEngine) -> TestClient:
    return TestClient(create_app(engine, ServerConfig()))


def repro(shared_dir: Path) -> dict[str, Any]:
    return json.loads((shared_dir / "testdata/repros/long_newest_user_turn.json").read_text())


def cut_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("prompt cut")]


# --------------------------------------------------------------------------- the repro

def test_newest_user_turn_repro_keeps_the_users_message(shared_dir, tokenizer, caplog):
    body = repro(shared_dir)
    prompt = body["prompt"]
    count = len(tokenizer.encode(prompt, add_special_tokens=False))
    first_reply = "\n\n### Response:\nEdda Varn: \"Who's there?\""
    kept = prompt.replace(first_reply, "")
    assert kept != prompt
    kept_count = len(tokenizer.encode(kept, add_special_tokens=False))
    assert (count, kept_count) == (1197, 1180)
    # The whole prompt needs 1197 + 8; one token less of context drops the oldest turn.
    engine = TokenizerEngine(reply=" Aye.", context_length=count + 8 - 1, tokenizer=tokenizer)
    caplog.set_level(logging.INFO, "limamono.server")
    with serve(engine) as client:
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    sent = engine.calls[0].prompt
    assert sent == kept  # the trigger, the sheet, the whole user message, the open header
    assert sent.endswith("The wind turned again and the sails tore.\n\n### Response: "
                         "(length = long)\nEdda Varn:")
    assert cut_lines(caplog) == [f"prompt cut to fit: 1197 -> 1180 tokens (budget "
                                 f"{count - 1}), 1 oldest turn(s) dropped"]


@pytest.mark.parametrize("context,max_tokens", [(1024, 8), (1300, 200)])
def test_newest_user_turn_repro_that_cannot_fit_is_a_clear_400(shared_dir, tokenizer,
                                                               context, max_tokens):
    body = {**repro(shared_dir), "max_tokens": max_tokens}
    engine = TokenizerEngine(context_length=context, tokenizer=tokenizer)
    with serve(engine) as client:
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == ("prompt", "context_length_exceeded")
    assert error["message"].startswith(
        f"the prompt needs 1180 tokens even with every older turn left out (the Instruction "
        f"block, the newest user turn and the open reply header), but only "
        f"{context - max_tokens} fit (context {context} minus {max_tokens} for the reply); "
        "fix: ")
    assert engine.calls == []  # never a raw cut that loses the trigger and the sheet


def test_kobold_route_fits_the_same_way(shared_dir, tokenizer, caplog):
    body = repro(shared_dir)
    engine = TokenizerEngine(context_length=1024, tokenizer=tokenizer)
    with serve(engine) as client:
        response = client.post("/api/v1/generate", json={"prompt": body["prompt"],
                                                         "max_length": 8})
    assert response.status_code == 400
    assert response.json()["detail"]["type"] == "context_length_exceeded"


def test_a_clients_smaller_context_is_fitted_by_whole_turns(caplog):
    head = f"{TRIGGER}\n\n### Instruction:\nMira"
    turns = ["\n\n### Response:\nMira: " + "a" * 40, "\n\n### Input: (length = tiny)\nTom: hi",
             "\n\n### Response: (length = long)\nMira:"]
    engine = FakeEngine(reply=" ok", context_length=4096)  # one character is one token
    caplog.set_level(logging.INFO, "limamono.server")
    budget = len(head + turns[1] + turns[2])
    with serve(engine) as client:
        response = client.post("/v1/completions", json={
            "prompt": head + "".join(turns), "max_tokens": 10,
            "truncation_length": budget + 10})
    assert response.status_code == 200
    assert engine.calls[0].prompt == head + turns[1] + turns[2]
    assert len(cut_lines(caplog)) == 1


def test_text_that_is_not_a_limamono_prompt_is_cut_raw_to_a_smaller_context(caplog):
    engine = FakeEngine(reply=" ok", context_length=4096)
    with serve(engine) as client:
        client.post("/v1/completions", json={"prompt": "0123456789" * 3, "max_tokens": 3,
                                             "truncation_length": 15})
    assert engine.calls[0].prompt == "890123456789"


# --------------------------------------------------------------------------- context reports

def test_every_model_route_reports_the_real_context():
    engine = FakeEngine(context_length=1024)
    with serve(engine) as client:
        assert client.get("/v1/models").json()["data"][0]["max_model_len"] == 1024
        info = client.get("/v1/internal/model/info").json()
        assert (info["context_length"], info["prompt_policy"]) == (1024, "training")
        assert client.get("/api/extra/true_max_context_length").json() == {"value": 1024}
        assert client.get("/api/v1/config/max_context_length").json() == {"value": 1024}


# --------------------------------------------------------------------------- SillyTavern chat

def st_body(shared_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((shared_dir / "testdata/sillytavern" / name).read_text())["body"]


@pytest.mark.parametrize("name,last_label", [("chat_completion_default.json", "tiny"),
                                             ("chat_completion_names.json", "micro")])
def test_sillytavern_default_chat_completion_renders_the_right_prompt(shared_dir, name,
                                                                      last_label):
    body = st_body(shared_dir, name)
    engine = FakeEngine(reply=" Aye, it burns.", context_length=16384)
    with serve(engine) as client:
        response = client.post("/v1/chat/completions", json={**body, "stream": False})
    assert response.status_code == 200, response.text
    call = engine.calls[0]
    assert call.prompt.startswith(EDDA_SHEET + "\n\n### Response: (length = tiny)\nEdda "
                                  "Varn: Edda looked up from her logbook")
    for gone in ("[Start a new Chat]", "Write Edda Varn's next reply", "Edda_Varn",
                 "[Circumstances"):
        assert gone not in call.prompt
    last = body["messages"][-1]["content"]
    assert call.prompt.endswith(f"\n\n### Input: (length = {last_label})\nUser: {last}\n\n"
                                "### Response: (length = long)\nEdda Varn:")
    assert "\nUser:" in call.stop and "###" in call.stop
    turns = body["messages"][4:]
    assert call.prompt.count("\nEdda Varn: ") == sum(m["role"] == "assistant" for m in turns)
    assert call.prompt.count("\nUser: ") == sum(m["role"] == "user" for m in turns)


def test_completion_object_names_give_the_same_prompt_as_none(shared_dir):
    body = st_body(shared_dir, "chat_completion_names.json")
    unnamed = [{k: v for k, v in m.items() if k != "name"} for m in body["messages"]]
    prompts = []
    for messages in (body["messages"], unnamed):
        engine = FakeEngine(reply=" Aye.", context_length=16384)
        with serve(engine) as client:
            client.post("/v1/chat/completions", json={**body, "messages": messages,
                                                      "stream": False})
        prompts.append(engine.calls[0].prompt)
    assert prompts[0] == prompts[1]


def test_chat_route_drops_oldest_turns_and_logs_the_cut(shared_dir, caplog):
    body = {**st_body(shared_dir, "chat_completion_default.json"), "stream": False,
            "max_tokens": 100}
    caplog.set_level(logging.INFO, "limamono.server")
    engine = FakeEngine(reply=" Aye.", context_length=1500)  # characters are tokens
    with serve(engine) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    prompt = engine.calls[0].prompt
    assert prompt.startswith(EDDA_SHEET + "\n\n### ")
    assert prompt.endswith("pulling off my wet gloves.\n\n### Response: (length = long)\n"
                           "Edda Varn:")
    assert len(prompt) <= 1400
    [line] = cut_lines(caplog)
    assert line.startswith("prompt cut to fit: ") and line.endswith("oldest turn(s) dropped")
    too_small = FakeEngine(context_length=400)
    with serve(too_small) as client:
        refused = client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages"
    assert "fix: " in refused.json()["error"]["message"]


def test_sillytavern_personality_markers_and_names():
    from limamono.core.conversation import Character
    from limamono.server import stchat

    messages = [
        {"role": "system", "content": "Write Ann Lee's next reply in a fictional chat between "
                                      "Ann Lee and Bo."},
        {"role": "system", "content": "A baker."},
        {"role": "system", "content": "[Ann Lee's personality: warm, loud]"},
        {"role": "system", "content": "[Example Chat]"},
        {"role": "user", "name": "Bo_Ek", "content": "Hi."},
    ]
    conv = stchat.conversation(messages)
    assert conv.character == Character("Ann Lee", "Personality: warm, loud\nA baker.")
    assert conv.user.name == "Bo_Ek"  # "Bo Ek" appears nowhere: the name is kept as sent
    assert stchat.conversation(messages, user_name="Cy").user.name == "Bo_Ek"
    unnamed = [{k: v for k, v in m.items() if k != "name"} for m in messages]
    assert stchat.conversation(unnamed).user.name == "Bo"  # from the main prompt


@dataclass
class BosEngine(TokenizerEngine):
    """A fake engine on a tokenizer that adds BOS, feeding BOS before every prompt."""

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))  # add_special_tokens: BOS first


def test_a_raw_cut_leaves_room_for_bos(tiny_mistral_dir):
    from limamono.engine import load_engine

    engine = load_engine(str(tiny_mistral_dir), dtype="fp32", backend="torch")
    with TestClient(create_app(engine, ServerConfig())) as client:
        body = client.post("/v1/completions", json={
            "prompt": "word " * 40, "max_tokens": 3, "truncation_length": 15,
            "temperature": 0}).json()
    assert body["usage"]["prompt_tokens"] == 15 - 3  # <s> and the last 11 text tokens


def test_the_repro_on_mistrals_tokenizer_counts_bos(shared_dir, mistral_tokenizer, caplog):
    body = repro(shared_dir)
    prompt = body["prompt"]
    fed = len(mistral_tokenizer.encode(prompt))
    assert mistral_tokenizer.encode(prompt)[0] == mistral_tokenizer.bos_token_id
    # Exactly the whole prompt with its BOS: nothing is cut.
    engine = BosEngine(reply=" Aye.", context_length=fed + 8, tokenizer=mistral_tokenizer)
    with serve(engine) as client:
        assert client.post("/v1/completions", json=body).status_code == 200
    assert engine.calls[0].prompt == prompt
    # One token less (the BOS): the oldest turn goes, the user's message stays.
    engine = BosEngine(reply=" Aye.", context_length=fed + 8 - 1, tokenizer=mistral_tokenizer)
    caplog.set_level(logging.INFO, "limamono.server")
    with serve(engine) as client:
        assert client.post("/v1/completions", json=body).status_code == 200
    assert engine.calls[0].prompt == prompt.replace(
        "\n\n### Response:\nEdda Varn: \"Who's there?\"", "")
    [line] = cut_lines(caplog)
    assert line.startswith(f"prompt cut to fit: {fed} -> ")
