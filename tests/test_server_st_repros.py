"""Regression tests for the defects a real SillyTavern 1.12.6 showed (issue 21, D1-D6).

Each test replays a request body captured between SillyTavern and ``limamono serve``
(``shared/testdata/repros/sillytavern-2/``, README there) against the app.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.cards import presets
from limamono.core.conversation import Character, load_yaml
from limamono.server import ServerConfig, create_app
from test_presets import sillytavern_prompt
from test_prompt_identity import render_prompt
from test_server_fakes import FakeEngine


def repro(shared_dir: Path, name: str) -> Any:
    return json.loads((shared_dir / "testdata/repros/sillytavern-2" / name).read_text())


def serve(engine: FakeEngine, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ServerConfig(**config)))


# --------------------------------------------------------------------------- D1

def test_d1_kobold_stream_error_carries_error_message(shared_dir):
    """SillyTavern pipes a streaming Kobold error through unchanged and toasts only
    ``error.message`` (public/scripts/kai-settings.js 148-164); without streaming its server
    reads ``detail.msg`` (src/endpoints/backends/kobold.js 109-113). Both must be there."""
    body = repro(shared_dir, "D1_kobold_stream_error_minimal_body.json")
    # One character is one token in the fake: 530 prompt characters and a 8190-token reply
    # (clamped to 1024 - 16) cannot share a 1024-token context.
    with serve(FakeEngine(context_length=1024)) as client:
        for route in ("/api/extra/generate/stream", "/api/v1/generate"):
            response = client.post(route, json=body)
            assert response.status_code == 400, route
            error = response.json()
            assert error["error"]["type"] == "context_length_exceeded"
            assert error["error"]["message"].startswith("the prompt needs ")
            assert error["detail"]["msg"] == error["error"]["message"]
            assert error["detail"]["field"] == error["error"]["param"]


def test_d1_every_error_path_carries_error_message():
    """Validation (422), an unknown route (404), auth (401) and the body limit (413), on
    the Kobold routes and the OpenAI ones."""
    with serve(FakeEngine(), api_key="k", max_body_bytes=4096) as client:
        auth = {"Authorization": "Bearer k"}
        answers = [
            client.post("/api/extra/generate/stream", json={"prompt": 3}, headers=auth),
            client.post("/v1/completions", json={"prompt": "x", "temperature": "hot"},
                        headers=auth),
            client.get("/api/nothing-here", headers=auth),
            client.post("/api/v1/generate", json={"prompt": "x"}),
            client.post("/api/extra/generate/stream", content=b"{" + b" " * 5000 + b"}",
                        headers=auth),
        ]
    assert [a.status_code for a in answers] == [422, 422, 404, 401, 413]
    for answer in answers:
        assert answer.json()["error"]["message"], answer.text


# --------------------------------------------------------------------------- D2

MARA_SHEET = ("Mara Quell\nPersonality: gruff, kind, superstitious\n"
              "WI-MARKER-CONSTANT: The Greywater ferry is a flat-bottomed boat painted green.\n"
              "Occupation: ferrywoman\nMara has run the Greywater ferry for eleven years.\n"
              "- She hums when she rows.\nScenario: User needs a crossing after dark.")


# In-chat system messages (Author's Note, World Info at a depth) join the sheet before
# its Scenario line.
IN_CHAT = ("AN-MARKER: it is raining hard.\n"
           "WI-MARKER-DEPTH: The lantern burns whale oil.\n")


@pytest.mark.parametrize(("name", "sheet"), [
    ("D2_chat_examples_minimal_body.json", MARA_SHEET),
    ("D2_chat_examples_full_st_body.json", MARA_SHEET.replace("Scenario:", IN_CHAT + "Scenario:")),
])
def test_d2_example_dialogue_is_left_out_with_a_note(shared_dir, caplog, name, sheet):
    """SillyTavern sends a card's mes_example as system messages named example_user /
    example_assistant (public/scripts/openai.js 664-698); they are not sheet lines."""
    body = {**repro(shared_dir, name), "stream": False}
    engine = FakeEngine(context_length=16384)
    caplog.set_level(logging.INFO, "limamono.server")
    with serve(engine) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    prompt = engine.calls[0].prompt
    instruction = prompt.split("### Instruction:\n")[1].split("\n\n###")[0]
    assert instruction == sheet
    assert "How much for the crossing?\n" not in prompt
    assert "Two coins, and you keep" not in prompt
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("example")]
    assert notes == ["example dialogue left out: 2 message(s) named example_user/"
                     "example_assistant (the Limamono format has no examples)"]


# --------------------------------------------------------------------------- D3, D5, D4

def _mara_st_prompt(shared_dir: Path, **extra: str) -> str:
    """SillyTavern's Text Completion assembly with the exported presets for the mara card
    and D3_D5_mara_chat.yaml, "Example Messages Behavior: Never include examples" set
    (power_user.strip_examples empties mesExamplesArray, public/script.js 3803-3806)."""
    card = repro(shared_dir, "mara.json")["data"]
    chat = load_yaml(shared_dir / "testdata/repros/sillytavern-2/D3_D5_mara_chat.yaml")
    chat = replace(chat, character=Character(card["name"], card["description"]))
    return sillytavern_prompt(chat, presets.instruct_preset(), presets.context_preset(),
                              personality=card["personality"], **extra)


def _mara_chat_body(shared_dir: Path, persona: str = "", wi_after: str = "") -> dict[str, Any]:
    """The Chat Completion body SillyTavern builds for the same chat, in its default
    prompt order (public/scripts/PromptManager.js 1895-1960: main, worldInfoBefore,
    personaDescription, charDescription, charPersonality, scenario, ..., worldInfoAfter,
    dialogueExamples, chatHistory)."""
    minimal = repro(shared_dir, "D2_chat_examples_minimal_body.json")["messages"]
    main, wi_before, description, personality, scenario, *rest = minimal
    extra = [{"role": "system", "content": persona}] if persona else []
    after = [{"role": "system", "content": wi_after}] if wi_after else []
    examples = rest[:4]  # [Example Chat], example_user, example_assistant, [Start a new Chat]
    greeting = rest[4]
    return {"policy": "sillytavern", "max_tokens": 40, "messages": [
        main, wi_before, *extra, description, personality, scenario, *after, *examples,
        greeting,
        {"role": "user", "name": "User",
         "content": '"How much for the crossing?" I asked, holding up a coin.'}]}


def _chat_route_prompt(body: dict[str, Any]) -> str:
    engine = FakeEngine(context_length=8192)
    with serve(engine) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return engine.calls[0].prompt


def test_d3_d5_presets_render_and_chat_route_agree_on_personality(shared_dir):
    expected = (shared_dir / "testdata/repros/sillytavern-2/D3_D5_expected_render.txt").read_text()
    assert _mara_st_prompt(shared_dir) == expected
    assert render_prompt(shared_dir / "testdata/repros/sillytavern-2/D3_D5_mara_chat.yaml",
                         "sillytavern") == expected
    # The chat route with the constant World Info left out (D3_D5_mara_chat.yaml has none).
    body = _mara_chat_body(shared_dir)
    del body["messages"][1]
    assert _chat_route_prompt(body) == expected


def test_d3_d5_presets_and_chat_route_agree_on_persona_and_world_info(shared_dir):
    wi_before = "WI-MARKER-CONSTANT: The Greywater ferry is a flat-bottomed boat painted green."
    persona, wi_after = "User is a travelling cartographer.", "WI-MARKER-AFTER: Fog at night."
    st = _mara_st_prompt(shared_dir, wiBefore=wi_before, persona=persona, wiAfter=wi_after)
    assert st.split("### Instruction:\n")[1].split("\n\n")[0] == (
        "Mara Quell\nPersonality: gruff, kind, superstitious\n" + wi_before + "\n" + persona
        + "\nOccupation: ferrywoman\nMara has run the Greywater ferry for eleven years.\n"
        "- She hums when she rows.\n" + wi_after + "\nScenario: User needs a crossing after dark.")
    assert _chat_route_prompt(_mara_chat_body(shared_dir, persona, wi_after)) == st


def test_d4_render_equals_what_sillytavern_sends_with_the_sillytavern_policy(shared_dir):
    folder = shared_dir / "testdata/repros/sillytavern-2"
    sent = (folder / "D4_st_sent_prompt.txt").read_text()
    assert render_prompt(folder / "D4_edda_chat_4msgs.yaml", "sillytavern") == sent
    assert render_prompt(folder / "D4_edda_chat_4msgs.yaml", "training") != sent


# --------------------------------------------------------------------------- D6 (issue item 5)

def test_d6_sheet_only_prompt_is_a_clear_400_and_a_logged_warning(shared_dir, caplog):
    """SillyTavern sends the sheet alone when it fills the budget (the story string and
    nothing else; public/script.js 4087-4116: checkPromptSize drops every chat message)."""
    body = repro(shared_dir, "D6_sheet_only_prompt_body.json")
    assert body["prompt"].endswith("still at work among the trees.\n\n")
    engine = FakeEngine(context_length=16384)
    caplog.set_level(logging.INFO, "limamono.server")
    with serve(engine) as client:
        for route in ("/v1/completions", "/api/extra/generate/stream"):
            response = client.post(route, json=body)
            assert response.status_code == 400, route
            error = response.json()["error"]
            assert error["param"] == "prompt"
            assert error["message"].startswith("the prompt is a character sheet with no turn "
                                               "and no open '### Response:' header")
            assert "raise Context (tokens)" in error["message"]
    assert engine.calls == []
    refused = [r for r in caplog.records if r.getMessage().startswith("refused: the prompt")]
    assert len(refused) == 2 and refused[0].levelname == "WARNING"


@pytest.mark.parametrize(("tail", "closed"), [
    ("Edda Varn\nScenario: A storm.\n\n", True),
    ("", False),                       # a card-generation prompt: the model writes the sheet
    ("Edda", False),                   # ... from the start of a sheet
    ("Edda Varn\nScenario: A storm.", False),
    ("Edda Varn\nScenario: A storm.\n\n### Response:\nEdda Varn:", False),
    ("Edda Varn\nScenario: A storm.\n\n### Input: (length = tiny)\nUser:", False),
])
def test_closed_sheet_without_turn(tail, closed):
    from limamono.core import format as fmt
    from limamono.core.policy import closed_sheet_without_turn

    prompt = f"{fmt.TRIGGERS['card']}\n\n### Instruction:\n{tail}"
    assert closed_sheet_without_turn(prompt) is closed
    assert closed_sheet_without_turn("Once upon a time.\n\n") is False


# --------------------------------------------------------------------------- item 6

def test_serve_says_which_adapter_it_applies():
    """`serve --model file.gguf` ran without the demo adapter and said nothing."""
    from limamono.cli.serve_cmd import adapter_summary
    from limamono.models.resolve import resolve_adapter

    demo = resolve_adapter("demo", "smollm2-135m")
    # The repository's demo adapter (since the move to models/ it resolved to src/examples/,
    # so `--adapter demo` silently meant no adapter).
    assert demo == Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo"
    assert adapter_summary("demo", "smollm2-135m") == f"{demo} (the demo adapter)"
    assert adapter_summary("demo", "/models/mistral.Q4_K_M.gguf") == (
        "none: the demo adapter was trained on smollm2-135m and applies only to it; pass "
        "--adapter FOLDER for this model")
    assert adapter_summary("none", "smollm2-135m") == "none (--adapter none)"
    assert adapter_summary("/a/b", "x.gguf") == "/a/b"


def test_serve_banner_has_the_adapter_line():
    from limamono.cli import serve_cmd

    engine = FakeEngine(context_length=4096)
    with serve_cmd.out.capture() as captured:
        serve_cmd._announce(engine, "127.0.0.1", 5001, "none (--adapter none)")
    lines = captured.get().splitlines()
    assert lines[:2] == ["Serving fake-limamono (context 4096, 1 slot(s)) at http://127.0.0.1:5001",
                         "  Adapter: none (--adapter none)"]
