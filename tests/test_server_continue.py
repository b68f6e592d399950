"""Chat Completion continue and assistant prefill (issue 21): a trailing assistant message
is continued (its text ends the prompt), on SillyTavern's bodies and text-generation-webui's
``continue_``; a new reply is opened only when the body asks for one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.core import format as fmt
from limamono.server import ServerConfig, create_app, stchat
from test_server_fakes import FakeEngine

FOLDER = "testdata/repros/sillytavern-2"
PARTIAL = "Mara shrugged and"


def st_body(shared_dir: Path) -> dict[str, Any]:
    """SillyTavern 1.12.6's Chat Completion body for the mara card (captured), cut after the
    user's first message, with the character's reply so far."""
    body = json.loads((shared_dir / FOLDER / "D2_chat_examples_minimal_body.json").read_text())
    return {**body, "stream": False}


def ask(body: dict[str, Any], stream: bool = False) -> tuple[str, str]:
    engine = FakeEngine(reply=" pulled the rope.", context_length=8192)
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = client.post("/v1/chat/completions", json={**body, "stream": stream})
    assert response.status_code == 200, response.text
    text = response.text if stream else response.json()["choices"][0]["message"]["content"]
    return engine.calls[0].prompt, text


def with_partial(body: dict[str, Any], *after: dict[str, Any], **extra: Any) -> dict[str, Any]:
    partial = {"role": "assistant", "name": "Mara_Quell", "content": PARTIAL}
    return {**body, **extra, "messages": [*body["messages"], partial, *after]}


def test_prefill_continues_the_last_assistant_message(shared_dir):
    """SillyTavern's "Continue prefill": the partial reply is the last message
    (public/scripts/openai.js 840-844) and no flag is sent."""
    prompt, reply = ask(with_partial(st_body(shared_dir)))
    assert prompt.endswith('User: "Do you know any songs?" I asked.\n\n'
                           "### Response: (length = long)\nMara Quell: " + PARTIAL)
    assert prompt.count(fmt.RESPONSE) == 2  # the greeting's and the continued one
    # SillyTavern's Continue Postfix (a space by default) joins the texts itself.
    assert reply == "pulled the rope."


def test_continue_nudge_continues_the_message_before_it(shared_dir):
    """Without prefill SillyTavern sends the whole chat and then its continue nudge
    (public/scripts/openai.js 797-809, 873-876); the nudge is dropped, the reply continued."""
    nudge = {"role": "system", "content": "[Continue the following message. Do not include "
             "ANY parts of the original message. Use capitalization and punctuation as if "
             f"your reply is a part of the original message: {PARTIAL}]"}
    prompt, _ = ask(with_partial(st_body(shared_dir), nudge))
    assert prompt.endswith("Mara Quell: " + PARTIAL)
    assert "Continue the following message" not in prompt


def test_continue_nudge_is_dropped_when_the_message_holds_brackets(shared_dir):
    """Regression: the nudge quotes the message (``{{lastChatMessage}}``), which may hold
    ``]`` and newlines; the marker was then missed and its text landed in the sheet."""
    partial = 'She read the sign: "[CLOSED]" and\nsighed [quietly] and'
    nudge = {"role": "system", "content": "[Continue the following message. Do not include "
             "ANY parts of the original message. Use capitalization and punctuation as if "
             f"your reply is a part of the original message: {partial}]"}
    body = with_partial(st_body(shared_dir), nudge)
    body["messages"][-2]["content"] = partial
    prompt, _ = ask(body)
    assert prompt.endswith("Mara Quell: " + partial)
    assert "Continue the following message" not in prompt
    assert prompt.count("[CLOSED]") == 1  # the continued text only, not a sheet copy


@pytest.mark.parametrize("text", [
    "[Start a new Chat]", "[Example Chat]",
    "[Start a new group chat. Group members: Edda [the navigator], Mara]",
    "[Write the next reply only as Edda [2nd].]",
    "[Write your next reply from the point of view of Ann]. Don't write as Bob.]",
    "[Continue the following message. Do not include ANY parts: a ] b\n]",
])
def test_markers_with_brackets_are_markers(text):
    assert stchat.is_marker(text)


@pytest.mark.parametrize("text", [
    "[Continue the following message. unclosed", "[Example Chat] Edda is tall.",
    "Continue the following message. x]", "[Edda's notes]",
])
def test_sheet_text_is_not_a_marker(text):
    assert not stchat.is_marker(text)


@pytest.mark.parametrize("flags", [{"continue_": True}, {"continue_final_message": True},
                                   {"add_generation_prompt": False}])
def test_textgen_and_vllm_flags_continue(shared_dir, flags):
    prompt, reply = ask(with_partial(st_body(shared_dir), **flags))
    assert prompt.endswith("Mara Quell: " + PARTIAL)
    assert reply == " pulled the rope."  # appended as it is: the space is the model's
    _, raw = ask(with_partial(st_body(shared_dir), **flags), stream=True)
    assert streamed_text(raw) == " pulled the rope."


@pytest.mark.parametrize("flags", [{"continue_": False}, {"continue_final_message": False},
                                   {"add_generation_prompt": True}])
def test_a_new_reply_when_the_body_asks_for_one(shared_dir, flags):
    prompt, _ = ask(with_partial(st_body(shared_dir), **flags))
    assert prompt.endswith(f"Mara Quell: {PARTIAL}\n\n### Response: (length = long)\n"
                           "Mara Quell:")


def test_a_trailing_user_message_is_never_continued(shared_dir):
    prompt, _ = ask({**st_body(shared_dir), "continue_": True})
    assert prompt.endswith("### Response: (length = long)\nMara Quell:")


def streamed_text(raw: str) -> str:
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_streamed_continue_sends_only_the_continuation(shared_dir):
    _, raw = ask(with_partial(st_body(shared_dir)), stream=True)
    assert streamed_text(raw) == "pulled the rope."


def test_continue_under_the_sillytavern_policy_labels_like_the_text_route(shared_dir):
    """The continued turn carries the open reply's label under both policies, as the text
    prompt SillyTavern's Text Completion continue sends (evidence/G_continue_body.json)."""
    prompt, _ = ask(with_partial(st_body(shared_dir), policy="sillytavern"))
    assert prompt.endswith("### Response: (length = long)\nMara Quell: " + PARTIAL)
    evidence = json.loads((shared_dir / FOLDER / "evidence/G_continue_body.json").read_text())
    assert "\n\n### Response: (length = long)\nMara Quell: " in evidence["body"]["prompt"][-900:]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{}, {"continue_": True}])
def test_the_embedded_model_continues_mid_sentence(shared_dir, flags):
    """On the real model (llama.cpp, greedy), the continued reply goes on from the partial
    text: it is not empty and does not start with a header (a "### " first token would hit
    the "###" stop string and give an empty reply)."""
    from limamono.engine import load_engine

    engine = load_engine(threads=1, context_length=512, backend="llamacpp")
    try:
        body = with_partial(st_body(shared_dir), **flags, max_tokens=8, temperature=0,
                            top_k=1)
        with TestClient(create_app(engine, ServerConfig())) as client:
            response = client.post("/v1/chat/completions", json=body)
    finally:
        engine.close()
    assert response.status_code == 200, response.text
    reply = response.json()["choices"][0]["message"]["content"]
    assert reply.strip() and not reply.lstrip().startswith("#"), reply
    assert not reply.startswith("\n"), reply
