"""Requests a real SillyTavern 1.12.6 sent to ``limamono serve``, replayed (issue 21).

Captured by a logging TCP relay between SillyTavern's server and ``limamono serve`` while a
browser drove SillyTavern's page (``tests/fixtures/sillytavern-live/``; what was checked and
how is in docs/SILLYTAVERN.md, "Checked in a real SillyTavern 1.12.6"). The ``.http``
files are the bytes as sent, head and body.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine

FIXTURES = Path(__file__).parent / "fixtures" / "sillytavern-live"

#: The prompt's end SillyTavern's Continue sends for the mara card, with and without
#: "Continue prefill": the partial reply, labelled as the reply being generated.
CONTINUED_END = ("Traveller: Hello Mara. What are you writing?\n\n"
                 "### Response: (length = long)\n"
                 "Mara Quell: Mara looked up from her logbook and")


def captured(name: str) -> tuple[str, str, dict[str, str], bytes]:
    """Method, path, headers (as sent, without Content-Length) and body of a capture."""
    head, _, body = (FIXTURES / name).read_bytes().partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in lines)
    return method, path, {k: v for k, v in headers.items() if k.lower() != "content-length"}, body


def replay(client: TestClient, name: str) -> Any:
    method, path, headers, body = captured(name)
    return client.request(method, path, headers=headers, content=body or None)


@pytest.mark.parametrize("name", ["llamacpp_completion.http", "llamacpp_tokenize.http"])
def test_sillytavern_headers_pass_the_host_origin_guard(name: str) -> None:
    """SillyTavern calls from its own server: node-fetch for generation and status checks
    (src/endpoints/backends/text-completions.js line 2), Node's own fetch for token counts
    (src/endpoints/tokenizers.js, ``fetch(url, args)``). Both send the API URL's host as
    ``Host`` and no ``Origin``, which is what the guard lets through."""
    _, _, headers, _ = captured(name)
    assert {k.lower(): v for k, v in headers.items()}["host"] == "127.0.0.1:5260"
    assert "origin" not in {k.lower() for k in headers}
    engine = FakeEngine(context_length=2048)
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = replay(client, name)
    assert response.status_code == 200, response.text


def test_sillytavern_llamacpp_body_generates_with_its_stops() -> None:
    """The llama.cpp type's streamed /completion body (instruct mode, Limamono presets)."""
    engine = FakeEngine(context_length=2048)
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = replay(client, "llamacpp_completion.http")
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == FakeEngine.reply
    assert events[-1]["stop"] is True and events[-1]["stop_type"] in ("eos", "limit", "word")
    call = engine.calls[0]
    assert call.prompt.endswith("### Response: (length = long)\nMara Quell:")
    assert call.max_new_tokens == 120  # n_predict
    assert "\nTraveller:" in call.stop and "###" in call.stop


def test_sillytavern_in_docker_is_refused_with_the_fix_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: SillyTavern in Docker reaches the host as ``host.docker.internal``; the guard
    refuses that name, and SillyTavern's Text Completion status check shows only "No
    connection..." (it drops the body), so the fix was nowhere to be seen. The refusal is
    now logged, once per name."""
    client = TestClient(create_app(FakeEngine(), ServerConfig()))
    with caplog.at_level(logging.WARNING, logger="limamono.server"):
        first = replay(client, "docker_status_check.http")
        second = replay(client, "docker_status_check.http")
    for response in (first, second):
        assert response.status_code == 400
        assert response.json()["error"]["message"] == (
            "Host 'host.docker.internal:5260' is not a name of this server (a DNS rebinding "
            "page?); fix: call it by IP address or localhost, or start it with --allow-host "
            "'host.docker.internal'")
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert logged == ["refused: " + first.json()["error"]["message"]]
    allowed = TestClient(create_app(FakeEngine(), ServerConfig(
        allowed_hosts=("host.docker.internal",))))
    assert replay(allowed, "docker_status_check.http").status_code == 200


def test_refusal_logs_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    from limamono.server.app import LOGGED_REFUSALS

    client = TestClient(create_app(FakeEngine(), ServerConfig()))
    with caplog.at_level(logging.WARNING, logger="limamono.server"):
        for i in range(LOGGED_REFUSALS + 5):
            assert client.get("/health", headers={"Host": f"n{i}.evil.com"}).status_code == 400
        assert client.post("/api/extra/abort",
                           headers={"Origin": "http://evil.com"}).status_code == 403
    logged = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(logged) == LOGGED_REFUSALS
    assert "n0.evil.com" in logged[0].getMessage()


def _chat(engine: FakeEngine, body: dict[str, Any], **fields: Any) -> Any:
    """``body`` (a request a real SillyTavern sent), with ``fields`` replaced, posted to
    ``/v1/chat/completions`` of a new app on ``engine``; the response."""
    with TestClient(create_app(engine, ServerConfig())) as client:
        return client.post("/v1/chat/completions", json={**body, **fields})


@pytest.mark.parametrize("name", ["chat_continue_prefill.json", "chat_continue_nudge.json"])
def test_sillytavern_continue_ends_the_prompt_with_the_partial_reply(name: str) -> None:
    """Chat Completion (Custom) Continue, with "Continue prefill" (the partial reply is the
    last message) and without (then SillyTavern's continue nudge follows it)."""
    body = json.loads((FIXTURES / name).read_text())
    engine = FakeEngine(reply=" pulled the rope.", context_length=8192)
    response = _chat(engine, body, stream=False)
    assert response.status_code == 200, response.text
    assert engine.calls[0].prompt.endswith(CONTINUED_END)
    # SillyTavern's default Continue Postfix (a space) joins the texts.
    assert response.json()["choices"][0]["message"]["content"] == "pulled the rope."


@pytest.mark.parametrize("stream", [False, True])
def test_sillytavern_impersonate_is_refused_not_taken_for_continue(stream: bool) -> None:
    """Defect: Impersonate in Chat Completion (Custom) sends the chat and then SillyTavern's
    impersonation prompt; the prompt was dropped as a marker, the character's message was
    last, and the server continued the character's reply, which SillyTavern then put in
    the user's input box. The route cannot write the user's turn, so it now says so (a
    400, shown as a toast) before anything is generated."""
    body = json.loads((FIXTURES / "chat_impersonate.json").read_text())
    engine = FakeEngine(context_length=8192)
    response = _chat(engine, body, stream=stream)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[8]"
    assert error["message"].startswith("SillyTavern's Impersonate is not supported on "
                                       "/v1/chat/completions")
    assert engine.calls == []


def test_the_impersonation_prompt_elsewhere_is_still_a_dropped_marker() -> None:
    from limamono.server import stchat

    body = json.loads((FIXTURES / "chat_impersonate.json").read_text())
    prompt = body["messages"][-1]
    assert stchat.asks_impersonation(body["messages"])
    assert not stchat.asks_impersonation([*body["messages"], {"role": "user", "content": "x"}])
    assert not stchat.asks_impersonation([])
    assert stchat.is_marker(prompt["content"])


def test_sillytavern_group_chat_names_in_content_are_not_doubled() -> None:
    """Defect: a group chat in Chat Completion (Custom) sends each reply as ``Name: text``
    (names in the content); the server wrote its own ``Edda Varn:`` before it, so the
    character's earlier reply read ``Edda Varn: Edda Varn: ...``. Another member's line
    keeps its name (the format has one character)."""
    body = json.loads((FIXTURES / "chat_group.json").read_text())
    engine = FakeEngine(context_length=8192)
    response = _chat(engine, body, stream=False)
    assert response.status_code == 200, response.text
    assert engine.calls[0].prompt.endswith(
        "Scenario: Traveller and Mara are at the ferry landing at dusk.\n\n"
        "### Response: (length = tiny)\n"
        "Edda Varn: Mara Quell: Mara was already untying the rope. \"In or out, stranger? "
        "The tide won't wait.\"\n\n"
        "### Response: (length = micro)\n"
        "Edda Varn: Edda looked up from her logbook.\n\n"
        "### Input: (length = micro)\n"
        "Traveller: Edda, what do you write in that log?\n\n"
        "### Response: (length = long)\nEdda Varn:")


def test_a_speakers_own_name_prefix_is_dropped_once() -> None:
    from limamono.server.stchat import without_name_prefix

    assert without_name_prefix("Traveller: Hello.", "Traveller") == "Hello."
    assert without_name_prefix("Edda Varn: Edda Varn: x", "Edda Varn") == "Edda Varn: x"
    assert without_name_prefix("Mara Quell: x", "Edda Varn") == "Mara Quell: x"
    assert without_name_prefix("Edda Varn:x", "Edda Varn") == "Edda Varn:x"
    assert without_name_prefix("Edda: x", None) == "Edda: x"


def test_sillytavern_group_next_member_gets_a_new_reply_not_a_continue() -> None:
    """Defect: in a group chat one member's reply follows another's (natural order). The
    body ends with the other member's reply and SillyTavern's group nudge (``[Write the
    next reply only as Edda Varn.]``), and the server took it for a Continue: the prompt
    ended inside Mara's reply and Edda's "reply" continued it."""
    body = json.loads((FIXTURES / "chat_group_next_member.json").read_text())
    assert body["messages"][-1]["content"] == "[Write the next reply only as Edda Varn.]"
    engine = FakeEngine(context_length=8192)
    response = _chat(engine, body, stream=False)
    assert response.status_code == 200, response.text
    assert engine.calls[0].prompt.endswith(
        "She took the slip of paper off her knee, folded it.\n\n"
        "### Response: (length = long)\nEdda Varn:")
    # A Continue in a group chat still continues: the partial reply (prefill) or the
    # continue nudge comes after the group nudge.
    partial = {"role": "assistant", "content": "Edda Varn: Edda closed the log and"}
    response = _chat(engine, body, stream=False, messages=[*body["messages"], partial])
    assert response.status_code == 200, response.text
    assert engine.calls[1].prompt.endswith(
        "### Response: (length = long)\nEdda Varn: Edda closed the log and")
