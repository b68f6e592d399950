"""`limamono chat`, `chats ...`, `demo` and `card generate` driven through the CLI.

The engine is the scripted one from test_chat (``chat_cmd.make_engine`` is replaced), so
every prompt and reply is known; stdin is piped, one line a message.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from limamono.cli import app, chat_cmd
from limamono.core import format as fmt
from limamono.engine.protocol import TextChunk
from limamono.samplers import get_preset
from limamono.store import ChatStore, Saved
from test_chat import ScriptedEngine

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parents[1]
MIRA = ASSETS / "chat_mira.yaml"
runner = CliRunner()


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> ScriptedEngine:
    scripted = ScriptedEngine(["She nodded."])
    monkeypatch.setattr(chat_cmd, "make_engine", lambda *a, **k: scripted)
    return scripted


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone (errors wrap at the console width)."""
    return " ".join(text.split())


def chat(db: Path, lines: list[str], *args: str) -> str:
    result = runner.invoke(app, ["chat", "--card", str(MIRA), "--user", "Tom", "--db", str(db),
                                 *args], input="".join(f"{line}\n" for line in lines))
    assert result.exit_code == 0, result.output
    return result.output


def test_chat_streams_replies_and_saves_them(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ["She nodded slowly.", "Sit by the stove."]
    output = chat(tmp_path / "c.db", ["Hello there.", "Is it always this wet?"])
    assert "Chat 1 with Mira Holt" in output
    assert 'Mira Holt: Mira looked up from the lamp as the door banged open.' in output
    assert "Mira Holt: She nodded slowly.\n" in output
    assert "Mira Holt: Sit by the stove.\n" in output
    assert engine.prompts[1].endswith(
        "### Input: (length = micro)\nTom: Is it always this wet?\n\n"
        "### Response: (length = long)\nMira Holt:")
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    assert [m.text for m in saved.messages][1:] == ["Hello there.", "She nodded slowly.",
                                                    "Is it always this wet?", "Sit by the stove."]


def test_every_slash_command(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ["First reply.", "Second reply.", " And more.", "Third reply."]
    export = tmp_path / "out.jsonl"
    output = chat(tmp_path / "c.db", [
        "Hello.", "/regen", "/swipe 1", "/continue", "/length short", "/input-length micro",
        "Next message.", "/edit Fixed text.", "/undo", "/chats", f"/save {export}", "/help",
        "/bogus", "/swipe x", "/input-length auto", "/quit", "never read"])
    assert "Mira Holt: Second reply.\n  (swipe 2/2)" in output
    assert "Mira Holt: First reply.\n  (swipe 1/2)" in output
    assert "(continuing) And more." in output
    assert "replies are now short" in output and "labelled micro" in output
    assert engine.prompts[3].endswith("### Input: (length = micro)\nTom: Next message.\n\n"
                                      "### Response: (length = short)\nMira Holt:")
    assert "Mira Holt: Fixed text." in output
    assert "undone; the chat now ends with:\nMira Holt: Third reply." in output
    assert "│ 1  │ Mira Holt │ Tom" in output
    assert f"saved as chat 1 in {tmp_path / 'c.db'}" in output
    assert "/input-length X" in output
    assert "your latest message is labelled by its word count" in output
    assert "unknown command '/bogus'" in output
    assert "/swipe needs a number, got 'x'" in output
    assert len(engine.prompts) == 4, "nothing after /quit was read"
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    assert [m.text for m in saved.messages][1:] == ["Hello.", "First reply. And more.",
                                                    "Next message.", "Third reply."]
    exported = [json.loads(line) for line in export.read_text().split("\n")]
    assert exported[0]["character_name"] == "Mira Holt"
    assert exported[3]["swipes"] == ["First reply. And more.", "Second reply."]


def test_errors_inside_the_chat_do_not_end_it(engine: ScriptedEngine, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from limamono.store import StoreError

    taken = tmp_path / "taken.jsonl"
    taken.write_text("someone's notes")
    real_sync = ChatStore.sync_messages
    calls = []

    def flaky_sync(self: ChatStore, chat_id: int, messages: list, version: int) -> Saved:
        calls.append(len(messages))
        if len(calls) == 1:
            raise StoreError("c.db: the change was not saved (disk I/O error)")
        return real_sync(self, chat_id, messages, version)

    monkeypatch.setattr(ChatStore, "sync_messages", flaky_sync)
    output = chat(tmp_path / "c.db", [f"/save {taken}", "/length enormous", "Hello.",
                                      "Again."])
    assert f"{taken} exists; pass --force" in flat(output)
    assert "response_length 'enormous' is not one of" in flat(output)
    assert ("warning: c.db: the change was not saved (disk I/O error); it will be saved with "
            "the next change") in flat(output)
    assert taken.read_text() == "someone's notes"
    # The next save writes everything that changed, the failed change included.
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    assert [m.text for m in saved.messages][1:] == ["Hello.", "She nodded.", "Again.",
                                                    "She nodded."]


def test_impersonation_guard_cuts_and_records(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ['She nodded. "Come in."\nTom: I step inside and take the lamp.']
    engine.apply_stops = False
    output = chat(tmp_path / "c.db", ["Hello."])
    assert 'Mira Holt: She nodded. "Come in."\n' in output
    assert "I step inside" not in output
    assert "cut where the model began writing Tom's turn" in output
    reply = ChatStore(tmp_path / "c.db").load_chat(1).messages[-1]
    assert reply.text == 'She nodded. "Come in."' and reply.current.cut == "user"


def test_header_cut_with_the_engine_stop_string(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ["She nodded.\n\n### Input:\nTom: hi"]
    output = chat(tmp_path / "c.db", ["Hello."])
    assert "cut where the model began a new ### block" in output
    assert ChatStore(tmp_path / "c.db").load_chat(1).messages[-1].current.cut == "header"


class InterruptingEngine(ScriptedEngine):
    """Sends the process a real SIGINT (Ctrl-C) after two chunks of the reply."""

    def stream_text(self, prompt, settings, max_new_tokens, stop=(), cancel=None,
                    truncation="left") -> Iterator[TextChunk]:
        for n, chunk in enumerate(super().stream_text(prompt, settings, max_new_tokens, stop,
                                                      cancel), start=1):
            yield chunk
            if n == 2:
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_the_reply_but_not_the_chat(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    engine = InterruptingEngine(["one two three four five six"])
    monkeypatch.setattr(chat_cmd, "make_engine", lambda *a, **k: engine)
    output = chat(tmp_path / "c.db", ["Hello.", "Still here?"])
    assert "Mira Holt: one two\n  (stopped)" in output
    assert len(engine.prompts) == 2
    assert ChatStore(tmp_path / "c.db").load_chat(1).messages[2].text == "one two"


def test_resume_a_saved_chat(engine: ScriptedEngine, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    chat(db, ["Hello."])
    result = runner.invoke(app, ["chat", "--chat", "1", "--db", str(db)], input="Again.\n")
    assert result.exit_code == 0, result.output
    assert "Tom: Hello.\nMira Holt: She nodded.\n" in result.output
    assert len(ChatStore(db).load_chat(1).messages) == 5
    missing = runner.invoke(app, ["chat", "--chat", "9", "--db", str(db)], input="")
    assert missing.exit_code == 2 and "no chat with id 9" in flat(missing.output)
    neither = runner.invoke(app, ["chat", "--db", str(db)], input="")
    assert neither.exit_code == 2 and "give either --card FILE" in flat(neither.output)


def test_a_chat_that_fails_to_load_is_not_saved_over(engine: ScriptedEngine,
                                                      tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    chat(db, ["Hello."])
    ChatStore(db)._db.execute("UPDATE messages SET extra = '{oops' WHERE position = 2")
    result = runner.invoke(app, ["chat", "--chat", "1", "--db", str(db)], input="Again.\n")
    assert result.exit_code == 2 and "message 2 cannot be read" in flat(result.output)
    assert len(engine.prompts) == 1
    rows = ChatStore(db)._db.execute("SELECT position, extra FROM messages").fetchall()
    assert rows == [(0, "{}"), (1, "{}"), (2, "{oops")]


def test_chats_list_show_export_import_delete(engine: ScriptedEngine, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    chat(db, ["Hello."])
    listed = runner.invoke(app, ["chats", "list", "--db", str(db)])
    assert "│ 1  │ Mira Holt │ Tom  │ 3" in listed.output
    shown = runner.invoke(app, ["chats", "show", "1", "--db", str(db)])
    assert "Chat 1: Mira Holt and Tom\n" in shown.output and "Tom: Hello." in shown.output
    jsonl, yaml_file = tmp_path / "c.jsonl", tmp_path / "c.yaml"
    for target in (jsonl, yaml_file):
        done = runner.invoke(app, ["chats", "export", "1", "-o", str(target), "--db", str(db)])
        assert done.exit_code == 0, done.output
    again = runner.invoke(app, ["chats", "export", "1", "-o", str(jsonl), "--db", str(db)])
    assert again.exit_code == 2 and "exists; pass --force" in flat(again.output)
    assert "Tom: Hello." in yaml_file.read_text() or "text: Hello." in yaml_file.read_text()
    imported = runner.invoke(app, ["chats", "import", str(jsonl), "--card", str(MIRA),
                                   "--db", str(db)])
    assert imported.exit_code == 0 and "as chat 2" in imported.output
    assert ChatStore(db).load_chat(2).character == ChatStore(db).load_chat(1).character
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_name":"T","character_name":"M"}\n{"mes": 1}\n')
    failed = runner.invoke(app, ["chats", "import", str(bad), "--db", str(db)])
    assert failed.exit_code == 2
    assert "bad.jsonl:2: field 'mes' must be text" in flat(failed.output)
    deleted = runner.invoke(app, ["chats", "delete", "2", "--yes", "--db", str(db)])
    assert deleted.exit_code == 0
    assert [c.id for c in ChatStore(db).list_chats()] == [1]


def test_demo_runs_the_scripted_roleplay(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ["She set down her pen.", "She began with the ledger."]
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 0, result.output
    output = result.output
    first = sorted((REPO / "examples" / "characters").glob("*.yaml"))[0]
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    name = saved.character.name
    assert f"Demo: Sam visits {name} ({first.name})" in output
    assert f"{name}: {saved.messages[0].text[:40]}" in output
    assert f"Sam: {chat_cmd.DEMO_TURNS[0]}" in output
    assert f"{name}: She set down her pen.\n" in output
    assert f"Sam: {chat_cmd.DEMO_TURNS[1]}" in output
    assert f"{name}: She began with the ledger.\n" in output
    assert "Saved as chat 1 in" in output
    assert [s.seed for s in engine.settings] == [7, 8]
    assert [s.tfs for s in engine.settings] == [0.85, 0.85]
    assert [m.role for m in saved.messages] == ["char", "user", "char", "user", "char"]


def test_demo_with_a_chosen_character(engine: ScriptedEngine, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--character", str(MIRA), "--user", "Tom",
                                 "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 0, result.output
    assert "Demo: Tom visits Mira Holt (chat_mira.yaml)" in result.output
    assert "Mira Holt: Mira looked up from the lamp" in result.output


@pytest.mark.parametrize("command", [["chat"], ["demo"], ["chats"], ["chats", "list"],
                                     ["chats", "show"], ["chats", "export"],
                                     ["chats", "import"], ["chats", "delete"],
                                     ["card", "generate"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output) > 200


@pytest.mark.slow
def test_demo_on_the_embedded_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "c.db"), "--max-tokens", "40"])
    assert result.exit_code == 0, result.output
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    assert [m.role for m in saved.messages] == ["char", "user", "char", "user", "char"]
    assert all(m.text for m in saved.messages)


# --------------------------------------------------------------------------- card generate

SHEET_REPLY = ("Age: 41\nNessa has piloted the Wendle ferry since she was nineteen.\n\n"
               "- Hates fog.\nScenario: Fog rolls over the river at dawn.\n\n### Response:")


def test_sheet_prompt_and_draft() -> None:
    from limamono.core.format import TRIGGERS
    from limamono.dataset.draft import draft_report, draft_sheet, sheet_prompt

    assert sheet_prompt("Nessa Crane", "Occupation: ferry pilot") == (
        TRIGGERS["card"] + "\n\n### Instruction:\nNessa Crane\nOccupation: ferry pilot\n")
    assert sheet_prompt() == TRIGGERS["card"] + "\n\n### Instruction:\n"
    engine = ScriptedEngine([SHEET_REPLY])
    draft = draft_sheet(engine, None, "Nessa Crane", "Occupation: ferry pilot")
    assert engine.prompts == [sheet_prompt("Nessa Crane", "Occupation: ferry pilot")]
    assert draft.sheet == ("Nessa Crane\nOccupation: ferry pilot\nAge: 41\nNessa has piloted "
                           "the Wendle ferry since she was nineteen.\n- Hates fog.\n"
                           "Scenario: Fog rolls over the river at dawn.")
    assert draft.parts is not None and draft.parts.missing == []
    assert draft.parts.scenario == "Fog rolls over the river at dawn."
    assert draft_report(draft) == []
    bare = draft_sheet(ScriptedEngine(["Age: 41\nShe pilots the ferry."]), None, "Nessa")
    assert bare.parts is not None and bare.parts.scenario == ""
    assert draft_report(bare) == ["missing: trivia (not invented; add it by hand)",
                                  "missing: scenario (not invented; add it by hand)"]
    empty = draft_sheet(ScriptedEngine(["\n\n"]), None)
    assert empty.parts is None and draft_report(empty)[0].startswith("the sheet could not be")


def test_card_generate_saves_the_draft(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = [SHEET_REPLY]
    target = tmp_path / "nessa.json"
    result = runner.invoke(app, ["card", "generate", "--name", "Nessa Crane", "--hint",
                                 "Occupation: ferry pilot", "--seed", "3", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "draft sheet" in result.output and "saved the draft to" in result.output
    data = json.loads(target.read_text())["data"]
    assert data["name"] == "Nessa Crane"
    assert data["scenario"] == "Fog rolls over the river at dawn."
    assert data["description"].startswith("Occupation: ferry pilot\nAge: 41\n")
    assert engine.settings[0].seed == 3
    again = runner.invoke(app, ["card", "generate", "-o", str(target)])
    assert again.exit_code == 2 and "exists; pass --force" in flat(again.output)


def test_card_generate_reports_missing_parts_and_refuses_nothing(engine: ScriptedEngine,
                                                                  tmp_path: Path) -> None:
    engine.replies = ["Age: 41\nShe pilots the ferry."]
    target = tmp_path / "nessa.yaml"
    result = runner.invoke(app, ["card", "generate", "--name", "Nessa", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "warning: missing: scenario (not invented; add it by hand)" in flat(result.output)
    assert "Scenario" not in target.read_text()
    engine.replies = [""]
    empty = runner.invoke(app, ["card", "generate", "-o", str(tmp_path / "x.png")])
    assert empty.exit_code == 1 and "nothing was saved" in flat(empty.output)
    assert not (tmp_path / "x.png").exists()


def test_display_marks_thoughts_dialogue_sounds_and_titles() -> None:
    from limamono.cli.chat_cmd.terminal import styled

    text = "She paused. \"Hi.\" _Odd._ *thud* ''Dune'' and on."
    shown = styled(text)
    assert shown.plain == text
    assert {shown.plain[s.start:s.end]: str(s.style) for s in shown.spans} == {
        '"Hi."': "bold", "_Odd._": "dim italic", "*thud*": "magenta", "''Dune''": "underline"}
    # A streamed piece inside an open quote is styled as dialogue already.
    partial = 'She said "not yet'
    tail = styled(partial, partial.index("not"))
    assert tail.plain == "not yet" and [str(s.style) for s in tail.spans] == ["bold"]


def test_a_sillytavern_png_card_with_house_style(engine: ScriptedEngine, tmp_path: Path,
                                                 shared_dir: Path) -> None:
    card = shared_dir / "testdata" / "cards" / "default_Seraphina.png"
    args = ["chat", "--card", str(card), "--user", "Tom", "--db", str(tmp_path / "c.db")]
    plain = runner.invoke(app, args, input="")
    assert "Seraphina: *You wake with a start" in plain.output
    converted = runner.invoke(app, [*args, "--house-style"], input="Hi.\n")
    assert converted.exit_code == 0, converted.output
    assert "Seraphina: You wake with a start, recalling" in converted.output
    assert "### Instruction:\nSeraphina\n" in engine.prompts[0]
    assert "*You wake" not in engine.prompts[0]


def test_alternate_greetings_are_swipes_of_the_greeting(engine: ScriptedEngine,
                                                        tmp_path: Path) -> None:
    from limamono.cards import new_card, write_card

    card = tmp_path / "card.json"
    write_card(new_card("Mira Holt", str(card), description="Keeps the light.",
                        first_mes="The lamp turned.", alternate_greetings=["{{user}}, at last."]),
               card)
    result = runner.invoke(app, ["chat", "--card", str(card), "--user", "Tom", "--db",
                                 str(tmp_path / "c.db")], input="/swipe 2\nHello.\n")
    assert result.exit_code == 0, result.output
    assert "Mira Holt: The lamp turned.\n  (swipe 1/2)\nMira Holt: Tom, at last." in result.output
    assert "\nMira Holt: Tom, at last.\n\n### Input:" in engine.prompts[0]


def test_chats_list_and_show_neutralise_terminal_escapes(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text(
        json.dumps({"user_name": "T\x1b[31m", "character_name": "M\x1b]0;title\x07"}) + "\n"
        + json.dumps({"name": "M", "is_user": False, "mes": "Hi \x1b[2J\x1b]0;x\x07 there."})
        + "\n", encoding="utf-8")
    assert runner.invoke(app, ["chats", "import", str(hostile), "--db", str(db)]).exit_code == 0
    listed = runner.invoke(app, ["chats", "list", "--db", str(db)])
    shown = runner.invoke(app, ["chats", "show", "1", "--db", str(db)])
    for result in (listed, shown):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
    assert "M␛]0;title" in listed.output and "T␛[31m" in listed.output
    assert "Hi ␛[2J␛]0;x␇ there." in shown.output  # BEL shown, not dropped (issue 24: 11)
    # Storage and exports keep the text exactly.
    assert ChatStore(db).load_chat(1).messages[0].text == "Hi \x1b[2J\x1b]0;x\x07 there."
    exported = tmp_path / "out.jsonl"
    runner.invoke(app, ["chats", "export", "1", "-o", str(exported), "--db", str(db)])
    assert "Hi \\u001b[2J\\u001b]0;x\\u0007 there." in exported.read_text(encoding="utf-8")


BIDI_REPRO = Path("/work/shared/testdata/repros/audit-3/11_bidi_name.jsonl")


def test_chats_list_and_show_show_bidi_and_invisible_characters(tmp_path: Path) -> None:
    """Issue 24, defect 11: U+202E, isolates, ZWJ, the BOM and BEL reach the terminal as
    visible stand-ins, never raw (a name must not render reversed)."""
    db = tmp_path / "c.db"
    bidi = tmp_path / "11_bidi_name.jsonl"
    bidi.write_text(  # the audit's reproduction, byte for byte
        '{"user_name": "U", "character_name": "Cabc\u202edcba.exe", "create_date": '
        '"2024-01-01", "chat_metadata": {}}\n{"name": "U", "is_user": true, "is_system": '
        'false, "send_date": "x", "mes": "text abc\u202edcba.exe"}\n', encoding="utf-8")
    if BIDI_REPRO.exists():
        assert bidi.read_bytes() == BIDI_REPRO.read_bytes()
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"user_name": "U\x07\u200d", "character_name":
                                "Mira\ufeff\u2066x\u2069", "chat_metadata": {}}) + "\n"
                    + json.dumps({"name": "U", "is_user": True,
                                  "mes": "bell\x07 cr\r bs\b \u202eabc \u2067\u2068\u200b"})
                    + "\n", encoding="utf-8")
    for path in (bidi, more):
        assert runner.invoke(app, ["chats", "import", str(path), "--db", str(db)]).exit_code == 0
    listed = runner.invoke(app, ["chats", "list", "--db", str(db)])
    shown = [runner.invoke(app, ["chats", "show", str(n), "--db", str(db)]) for n in (1, 2)]
    for result in (listed, *shown):
        assert result.exit_code == 0, result.output
        for raw in "\u202e\u2066\u2067\u2068\u2069\u200d\u200b\ufeff\x07\r\b":
            assert raw not in result.output, (raw, result.output)
    assert shown[0].output == ("Chat 1: Cabc<U+202E>dcba.exe and U\n"
                               "U: text abc<U+202E>dcba.exe\n")
    assert shown[1].output == (
        "Chat 2: Mira<U+FEFF><U+2066>x<U+2069> and U␇<U+200D>\n"
        "U␇<U+200D>: bell␇ cr␍ bs␈ <U+202E>abc <U+2067><U+2068><U+200B>\n")
    assert "Cabc<U+202E>" in listed.output and "U␇<U+200D>" in listed.output
    # Stored as imported.
    assert ChatStore(db).load_chat(1).character.name == "Cabc\u202edcba.exe"


def test_a_stale_save_is_reported_and_the_chat_reloads_and_goes_on(
        engine: ScriptedEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two terminals on chat 1 (issue 11): B's save from its stale copy loses nothing."""
    from limamono.cli.chat_cmd.session import start_session
    from limamono.cli.chat_cmd.terminal import ChatLoop

    db = tmp_path / "c.db"
    chat(db, [])
    engine_a, engine_b = ScriptedEngine(["reply to A"]), ScriptedEngine(["reply to B"])
    store_a, store_b = ChatStore(db), ChatStore(db)
    loop_a = ChatLoop(start_session(store_a, 1, engine_a, None, 50), store_a, 1)
    loop_b = ChatLoop(start_session(store_b, 1, engine_b, None, 50), store_b, 1)
    capsys.readouterr()
    assert loop_a.handle("A's message")
    assert loop_b.handle("B's message")
    output = capsys.readouterr()
    assert ("error: " + str(db) + ": chat 1 was changed by another process since this copy "
            "was loaded (version 2, this copy 0); nothing was saved") in flat(output.err)
    assert ("reloaded chat 1 as saved (your last change is not in it: make it again if you "
            "still want it); it now ends with:\nTom: A's message\nMira Holt: reply to A\n"
            ) in output.out
    assert engine_b.prompts == [], "nothing was generated for the refused message"
    texts = [m.text for m in ChatStore(db).load_chat(1).messages][1:]
    assert texts == ["A's message", "reply to A"]
    assert loop_b.handle("B's message")  # the reloaded session goes on
    assert engine_b.prompts[0].endswith("Mira Holt: reply to A\n\n### Input: (length = micro)\n"
                                        "Tom: B's message\n\n### Response: (length = long)\n"
                                        "Mira Holt:")
    texts = [m.text for m in ChatStore(db).load_chat(1).messages][1:]
    assert texts == ["A's message", "reply to A", "B's message", "reply to B"]
    # A's copy is stale now: its regenerated swipe is refused and A reloads B's turn.
    assert loop_a.handle("/regen")
    assert "was changed by another process" in flat(capsys.readouterr().err)
    assert [m.text for m in loop_a.session.history][1:] == texts
    assert [m.text for m in ChatStore(db).load_chat(1).messages][1:] == texts


class StopRecorder(ScriptedEngine):
    """The scripted engine, also keeping the stop strings and samplers of every call."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.stops: list[list[str]] = []

    def stream_text(self, prompt, settings, max_new_tokens, stop=(), **kwargs):
        self.stops.append(list(stop))
        return super().stream_text(prompt, settings, max_new_tokens, stop, **kwargs)


def test_the_adapters_card_sets_the_chats_trigger_stops_and_samplers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    engine = StopRecorder(["Aye.", "Aye."])
    monkeypatch.setattr(chat_cmd, "make_engine", lambda *a, **k: engine)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "limamono.json").write_text(json.dumps({
        "trigger": "preset", "stop_strings": ["###", "THE END"],
        "sampler_preset": {"name": "greedy", "values": None}}))
    chat(tmp_path / "c.db", ["Hello there."], "--adapter", str(adapter))
    assert engine.prompts[0].startswith(fmt.TRIGGERS["preset"] + "\n\n### Instruction:\n")
    assert engine.stops[0] == ["###", "THE END", "\nTom:"]
    assert engine.settings[0] == get_preset("greedy")
    output = chat(tmp_path / "d.db", ["Hello there."], "--adapter", str(adapter),
                  "--preset", "limamono")
    assert "note: --preset limamono overrides the adapter's greedy" in output
    assert engine.settings[-1] == get_preset("limamono")


def test_chat_ban_reaches_the_samplers(engine: ScriptedEngine, tmp_path: Path) -> None:
    chat(tmp_path / "c.db", ["Hello."], "--ban", "ozone", "--ban", "a shiver")
    assert engine.settings[0].banned_strings[-2:] == ("ozone", "a shiver")
    result = runner.invoke(app, ["chat", "--card", str(MIRA), "--db", str(tmp_path / "d.db"),
                                 "--ban", "x" * 300], input="/quit\n")
    assert result.exit_code == 2 and "--ban: banned_strings[0]" in flat(result.output)


def test_chat_shows_escapes_in_replies_as_pictures(engine: ScriptedEngine, tmp_path: Path) -> None:
    engine.replies = ["She wrote \x1b]0;pwned\x1b\\ and \x1b[2J on the slate."]
    output = chat(tmp_path / "c.db", ["Hello."])
    assert "\x1b" not in output
    assert "Mira Holt: She wrote ␛]0;pwned␛\\ and ␛[2J on the slate.\n" in output
    saved = ChatStore(tmp_path / "c.db").load_chat(1)
    assert saved.messages[-1].text == "She wrote \x1b]0;pwned\x1b\\ and \x1b[2J on the slate."
