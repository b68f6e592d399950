"""The web chat's API (``server/webchat.py``) through the HTTP app, on scripted engines.

Every reply is scripted, so prompts, swipes and saved rows are known exactly. The page
itself is driven in a real browser by ``test_webchat_browser.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from limamono.cards import new_card, write_card
from limamono.cli import app as cli_app
from limamono.cli import chat_cmd
from limamono.server import ServerConfig, WebChatConfig, create_app
from limamono.server.webchat import CSP, QUEUED_AFTER_S, STATIC
from limamono.store import ChatStore
from test_chat import ScriptedEngine
from test_server_fakes import FakeEngine, RuntimeAdapters

GREETING = 'Mira looked up from the lamp. "You made it up the stairs, then."'
ALTERNATE = "The lamp turned above them. _Another one caught by the storm._"


def mira_card(folder: Path, suffix: str = ".png") -> Path:
    """A card with a greeting and one alternate greeting."""
    card = new_card("Mira Holt", description="Mira keeps the lamp at Gull Point.",
                    scenario="A storm traps a visitor at the lighthouse.",
                    first_mes=GREETING, alternate_greetings=[ALTERNATE])
    path = folder / f"mira{suffix}"
    write_card(card, path)
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, ScriptedEngine, Path]:
    characters = tmp_path / "characters"
    characters.mkdir()
    mira_card(characters)
    engine = ScriptedEngine(["She nodded slowly."])
    web = WebChatConfig(tmp_path / "chats.db", characters)
    with TestClient(create_app(engine, ServerConfig(), web)) as client:
        yield client, engine, tmp_path / "chats.db"


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def start_chat(client: TestClient) -> dict[str, Any]:
    response = client.post("/webchat/api/chats", json={"character": "mira", "user": "Tom"})
    assert response.status_code == 200, response.text
    return response.json()


def generate(client: TestClient, chat_id: int, **body: Any) -> list[dict[str, Any]]:
    response = client.post(f"/webchat/api/chats/{chat_id}/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return events(response.text)


def texts(chat: dict[str, Any]) -> list[str]:
    return ["".join(text for _, text in m["spans"]) for m in chat["messages"]]


def test_page_and_files_are_served_with_a_strict_csp(setup) -> None:
    client, _, _ = setup
    for path in STATIC:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    page = client.get("/").text
    assert '<script src="/webchat/app.js" defer></script>' in page
    assert page.count("<script") == 1  # no inline script at all
    for path in ("/webchat/../app.py", "/webchat/webchat.py", "/webchat/index.html.bak"):
        assert client.get(path).status_code == 404


def test_the_script_never_parses_text_as_html() -> None:
    from limamono.server.webchat import WEB_DIR

    script = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "href"):
        assert sink not in script, sink


def test_without_a_web_config_the_root_stays_a_404() -> None:
    with TestClient(create_app(FakeEngine(), ServerConfig())) as client:
        assert client.get("/").status_code == 404


def test_info_lists_presets_lengths_and_bundled_characters(setup) -> None:
    client, _, _ = setup
    info = client.get("/webchat/api/info").json()
    assert info == {"model": "scripted", "context_length": 4096,
                    "adapters": [], "runtime_adapters": False,
                    "presets": ["limamono", "limamono-dry", "greedy"],
                    "default_preset": "limamono",
                    "lengths": ["micro", "tiny", "short", "medium", "long", "massive", "huge"],
                    "default_length": "long", "characters": ["mira"], "max_new_tokens": 256}


def test_a_bundled_character_opens_with_its_greetings_as_swipes(setup) -> None:
    client, _, db = setup
    chat = start_chat(client)
    assert chat["character"] == "Mira Holt" and chat["user"] == "Tom"
    first = chat["messages"][0]
    assert (first["swipes"], first["swipe_id"], first["role"]) == (2, 0, "char")
    assert first["spans"] == [["narration", "Mira looked up from the lamp. "],
                              ["dialogue", '"You made it up the stairs, then."']]
    chosen = client.post(f"/webchat/api/chats/{chat['id']}/swipe",
                         json={"position": 0, "index": 1}).json()
    assert texts(chosen) == [ALTERNATE]
    assert ChatStore(db).load_chat(chat["id"]).messages[0].swipe_id == 1
    listed = client.get("/webchat/api/chats").json()
    assert [(c["id"], c["character"], c["user"], c["messages"]) for c in listed] == [
        (chat["id"], "Mira Holt", "Tom", 1)]


class AdapterScriptedEngine(RuntimeAdapters, ScriptedEngine):
    """The scripted engine with run-time adapters ``a`` and ``b``."""


def test_a_reply_honours_the_lora_field_like_the_completion_routes(tmp_path: Path) -> None:
    """Regression: the web chat ignored ``lora``; now a reply runs under the adapters it
    chooses, as on /v1/completions, and the page lists the loaded ones."""
    characters = tmp_path / "characters"
    characters.mkdir()
    mira_card(characters)
    engine = AdapterScriptedEngine(["She nodded slowly."])
    web = WebChatConfig(tmp_path / "chats.db", characters)
    with TestClient(create_app(engine, ServerConfig(), web)) as client:
        info = client.get("/webchat/api/info").json()
        assert info["runtime_adapters"] is True
        assert info["adapters"] == [{"id": 0, "name": "a", "scale": 1.0},
                                    {"id": 1, "name": "b", "scale": 0.5}]
        chat = start_chat(client)
        generate(client, chat["id"], action="send", text="Hello.",
                 lora=[{"id": 1, "scale": 0.5}])
        generate(client, chat["id"], action="regenerate", lora=[])
        generate(client, chat["id"], action="regenerate")
        assert engine.choices == [{"a": 0.0, "b": 0.5}, {"a": 0.0, "b": 0.0}, None]
        response = client.post(f"/webchat/api/chats/{chat['id']}/generate",
                               json={"action": "regenerate", "lora": [{"id": 5}]})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(
            "lora[0].id=5: no loaded adapter has that id")
        assert len(engine.choices) == 3


def test_the_lora_field_on_an_engine_without_adapters_is_refused(setup) -> None:
    client, engine, _ = setup
    chat = start_chat(client)
    response = client.post(f"/webchat/api/chats/{chat['id']}/generate",
                           json={"action": "reply", "lora": []})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "lora: choosing adapters per request needs the llama.cpp engine")
    assert engine.prompts == []


def test_send_streams_the_reply_and_saves_it(setup) -> None:
    client, engine, db = setup
    chat = start_chat(client)
    got = generate(client, chat["id"], action="send", text="Hello there.")
    assert [e["type"] for e in got] == ["start", "text", "text", "text", "done"]
    assert got[0]["target"] == "new"
    assert texts(got[0]["chat"]) == [GREETING, "Hello there."]
    assert [e["spans"] for e in got[1:4]] == [[["narration", "She"]],
                                              [["narration", "She nodded"]],
                                              [["narration", "She nodded slowly."]]]
    done = got[-1]
    assert texts(done["chat"]) == [GREETING, "Hello there.", "She nodded slowly."]
    assert [m["length"] for m in done["chat"]["messages"]] == ["tiny", "micro", "micro"]
    stats = done["stats"]
    assert stats["completion_tokens"] == 3 and stats["context_length"] == 4096
    assert stats["context_used"] == stats["prompt_tokens"] + 3
    # The prompt is the chat session's, under the server's prompt policy.
    assert engine.prompts[-1].endswith("### Input: (length = micro)\nTom: Hello there.\n\n"
                                       "### Response: (length = long)\nMira Holt:")
    saved = ChatStore(db).load_chat(chat["id"])
    assert [m.text for m in saved.messages] == [GREETING, "Hello there.", "She nodded slowly."]


def test_length_preset_regenerate_continue_edit_delete_undo(setup) -> None:
    client, engine, db = setup
    chat_id = start_chat(client)["id"]
    engine.replies = ["First reply.", "Second reply.", " And more."]
    generate(client, chat_id, action="send", text="Hello.", length="short", preset="greedy")
    assert engine.prompts[-1].endswith("### Response: (length = short)\nMira Holt:")
    assert engine.settings[-1].temperature == 0.0
    swiped = generate(client, chat_id, action="regenerate")
    # no length sent: the default label, not the previous request's (a regression)
    assert engine.prompts[-1].endswith("### Response: (length = long)\nMira Holt:")
    assert engine.settings[-1].temperature != 0.0
    assert swiped[0]["target"] == "swipe"
    last = swiped[-1]["chat"]["messages"][-1]
    assert (last["swipes"], last["swipe_id"]) == (2, 1)
    assert texts(swiped[-1]["chat"])[-1] == "Second reply."
    continued = generate(client, chat_id, action="continue")
    assert continued[0]["target"] == "continue"
    assert continued[1]["spans"] == [["narration", "Second reply. And"]]
    assert texts(continued[-1]["chat"])[-1] == "Second reply. And more."
    edited = client.post(f"/webchat/api/chats/{chat_id}/edit",
                         json={"position": -1, "text": 'Fixed. "Yes."'}).json()
    assert edited["messages"][-1]["spans"] == [["narration", "Fixed. "],
                                               ["dialogue", '"Yes."']]
    deleted = client.post(f"/webchat/api/chats/{chat_id}/delete", json={"position": -1}).json()
    assert texts(deleted) == [GREETING, "Hello."]
    undone = client.post(f"/webchat/api/chats/{chat_id}/undo").json()
    assert texts(undone)[-1] == 'Fixed. "Yes."'
    assert ChatStore(db).load_chat(chat_id).messages[-1].text == 'Fixed. "Yes."'


def test_bad_requests_name_the_problem(setup) -> None:
    client, _, _ = setup
    chat_id = start_chat(client)["id"]
    bad = client.post(f"/webchat/api/chats/{chat_id}/generate",
                      json={"action": "send", "text": "Hi", "length": "enormous"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "length"
    bad = client.post(f"/webchat/api/chats/{chat_id}/generate",
                      json={"action": "send", "text": "Hi", "preset": "wild"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == ("unknown preset 'wild'; known: limamono, "
                                              "limamono-dry, greedy")
    empty = client.post(f"/webchat/api/chats/{chat_id}/generate",
                        json={"action": "send", "text": "  "})
    assert (empty.status_code, empty.json()["error"]["message"]) == (400, "the message is empty")
    missing = client.get("/webchat/api/chats/99")
    assert missing.status_code == 404 and "no chat with id 99" in missing.text
    swipe = client.post(f"/webchat/api/chats/{chat_id}/swipe", json={"position": 0, "index": 5})
    assert swipe.json()["error"]["message"] == "swipe 6 does not exist (the message has 2)"
    fresh = client.post(f"/webchat/api/chats/{chat_id}/undo")
    assert fresh.status_code == 400 and "nothing to undo" in fresh.text
    unknown = client.post("/webchat/api/chats", json={"character": "nobody"})
    assert unknown.status_code == 404


def test_card_upload_is_checked_like_limamono_card(setup, tmp_path: Path) -> None:
    client, _, db = setup
    data = mira_card(tmp_path, ".json").read_bytes()
    made = client.post("/webchat/api/chats/import?name=mira.json&user=Ann", content=data)
    assert made.status_code == 200, made.text
    chat = made.json()
    assert (chat["character"], chat["user"], chat["title"]) == ("Mira Holt", "Ann", "mira")
    assert ChatStore(db).load_chat(chat["id"]).messages[0].swipes[1].text == ALTERNATE
    broken = client.post("/webchat/api/chats/import?name=broken.png",
                         content=b"\x89PNG\r\n\x1a\nnot really")
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error["param"] == "card" and error["message"].startswith("broken.png: ")
    nameless = client.post("/webchat/api/chats/import?name=x.json",
                           content=json.dumps({"spec": "chara_card_v2", "spec_version": "2.0",
                                               "data": {"name": ""}}).encode())
    assert nameless.status_code == 400 and nameless.json()["error"]["message"].startswith(
        "x.json: ")


def test_prompt_too_long_is_a_clear_error_event(tmp_path: Path) -> None:
    engine = ScriptedEngine(["Hi."], context_length=300)
    characters = tmp_path / "c"
    characters.mkdir()
    mira_card(characters)
    web = WebChatConfig(tmp_path / "chats.db", characters)
    with TestClient(create_app(engine, ServerConfig(), web)) as client:
        chat_id = start_chat(client)["id"]
        got = generate(client, chat_id, action="send", text="word " * 200)
    assert got[-1]["type"] == "error" and got[-1]["status"] == 400
    assert got[-1]["message"].startswith("the prompt needs ")
    assert engine.prompts == []


def test_a_full_queue_is_a_503_with_retry_after(tmp_path: Path) -> None:
    engine = FakeEngine(slow=True, context_length=8192)
    characters = tmp_path / "c"
    characters.mkdir()
    mira_card(characters)
    web = WebChatConfig(tmp_path / "chats.db", characters)
    with TestClient(create_app(engine, ServerConfig(queue=0), web)) as client:
        first = start_chat(client)["id"]
        second = start_chat(client)["id"]
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(client.post(
            f"/webchat/api/chats/{first}/generate", json={"action": "regenerate"})))
        thread.start()
        assert engine.started.wait(5)
        busy = client.post(f"/webchat/api/chats/{second}/generate",
                           json={"action": "regenerate"})
        conflict = client.post(f"/webchat/api/chats/{first}/edit",
                               json={"position": 0, "text": "No."})
        assert client.post(f"/webchat/api/chats/{first}/stop").json() == {"stopped": True}
        thread.join(10)
    got = events(busy.text)
    assert got[-1]["type"] == "error" and got[-1]["status"] == 503
    assert got[-1]["message"].startswith("the server is busy")
    assert conflict.status_code == 409
    stopped = events(done[0].text)[-1]
    assert stopped["type"] == "done" and stopped["stats"]["finish_reason"] == "cancelled"


def test_api_key_guards_the_api_but_not_the_page(tmp_path: Path) -> None:
    web = WebChatConfig(tmp_path / "chats.db", None)
    with TestClient(create_app(FakeEngine(), ServerConfig(api_key="sesame"), web)) as client:
        assert client.get("/").status_code == 200
        assert client.get("/webchat/app.js").status_code == 200
        assert client.get("/webchat/api/chats").status_code == 401
        ok = client.get("/webchat/api/chats", headers={"Authorization": "Bearer sesame"})
        assert (ok.status_code, ok.json()) == (200, [])


def test_a_chat_goes_on_between_the_terminal_and_the_page(setup, monkeypatch) -> None:
    client, engine, db = setup
    chat_id = start_chat(client)["id"]
    generate(client, chat_id, action="send", text="Hello.")
    terminal = ScriptedEngine(["From the terminal."])
    monkeypatch.setattr(chat_cmd, "make_engine", lambda *a, **k: terminal)
    result = CliRunner().invoke(cli_app, ["chat", "--chat", str(chat_id), "--db", str(db)],
                                input="Still there?\n")
    assert result.exit_code == 0, result.output
    assert terminal.prompts[-1].startswith(engine.prompts[-1].split("### Input:")[0])
    page = client.get(f"/webchat/api/chats/{chat_id}").json()
    assert texts(page)[-2:] == ["Still there?", "From the terminal."]
    engine.replies = ["Back in the page."]
    got = generate(client, chat_id, action="send", text="Yes.")
    assert texts(got[-1]["chat"])[-3:] == ["From the terminal.", "Yes.", "Back in the page."]
    assert "Tom: Still there?" in engine.prompts[-1]
    # the page's session was reloaded: its undo steps start after the terminal's turn
    client.post(f"/webchat/api/chats/{chat_id}/undo")
    assert texts(client.get(f"/webchat/api/chats/{chat_id}").json())[-1] == "From the terminal."


def test_deleting_a_chat(setup) -> None:
    client, _, db = setup
    chat_id = start_chat(client)["id"]
    assert client.delete(f"/webchat/api/chats/{chat_id}").json() == {"deleted": chat_id}
    assert client.get("/webchat/api/chats").json() == []
    assert ChatStore(db).list_chats() == []


def test_serve_open_opens_the_page_and_db_chooses_the_store(monkeypatch, tmp_path) -> None:
    import webbrowser

    import limamono.engine
    from limamono.cli import serve_cmd

    ran: dict[str, Any] = {}
    opened: list[str] = []
    monkeypatch.setattr(limamono.engine, "load_engine", lambda *a, **k: FakeEngine())
    monkeypatch.setattr(webbrowser, "open", opened.append)

    def serve_app(app: Any, host: str, port: int, log_level: str, on_ready: Any) -> None:
        ran["app"] = app
        on_ready(port)

    monkeypatch.setattr(serve_cmd, "serve_app", serve_app)
    db = tmp_path / "web.db"
    result = CliRunner().invoke(cli_app, ["serve", "--port", "5999", "--db", str(db), "--open"])
    assert result.exit_code == 0, result.output
    assert "Web chat: http://127.0.0.1:5999/" in result.output
    assert opened == ["http://127.0.0.1:5999/"]
    assert not db.exists()  # created by the first chat, not by starting the server
    with TestClient(ran["app"]) as client:
        assert client.get("/").headers["content-security-policy"] == CSP
        assert client.get("/webchat/api/chats").json() == []
    assert db.is_file()
    assert serve_cmd.page_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert serve_cmd.page_url("::1", 80) == "http://[::1]:80/"


def test_serve_refuses_a_db_that_is_not_a_chat_database(tmp_path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not a database, just notes\n" * 100)
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(bad)])
    assert result.exit_code == 2
    assert "cannot be used as the chat database" in " ".join(result.output.split())


def test_a_reply_that_waits_says_its_place_in_the_queue(tmp_path: Path) -> None:
    engine = FakeEngine(slow=True, context_length=8192)
    characters = tmp_path / "c"
    characters.mkdir()
    mira_card(characters)
    web = WebChatConfig(tmp_path / "chats.db", characters)
    with TestClient(create_app(engine, ServerConfig(queue=4), web)) as client:
        first = start_chat(client)["id"]
        second = start_chat(client)["id"]
        # Keyed, not appended: once the engine is released the waiting reply can finish
        # before the first one's response returns (the first still saves its chat), so
        # the order of completion is not the order of the requests.
        done: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: done.setdefault("first", client.post(
            f"/webchat/api/chats/{first}/generate", json={"action": "regenerate"})))
        thread.start()
        assert engine.started.wait(5)
        waiting = threading.Thread(target=lambda: done.setdefault("second", client.post(
            f"/webchat/api/chats/{second}/generate", json={"action": "regenerate"})))
        waiting.start()
        deadline = time.monotonic() + 5
        while client.get("/health").json()["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(QUEUED_AFTER_S * 2)  # long enough for the waiting reply to say so
        engine.release.set()
        thread.join(10)
        waiting.join(10)
    assert [e["type"] for e in events(done["first"].text)][:2] == ["start", "text"]
    got = events(done["second"].text)
    assert [e["type"] for e in got][:2] == ["start", "queued"]
    assert got[1] == {"type": "queued", "position": 1}
    assert got[-1]["type"] == "done"
