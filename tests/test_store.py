"""The chat store: schema, transactions, kill safety, SillyTavern JSONL round trip."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from limamono.chat import ChatSession
from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ChatStore,
    Saved,
    StaleChatError,
    StoreError,
    export_sillytavern,
    import_sillytavern,
    parse_sillytavern,
    write_file_safely,
)

ASSETS = Path(__file__).parent / "assets"
ST_SAMPLE = ASSETS / "chat_st_sample.jsonl"
WRITER = Path(__file__).parent / "store_writer.py"
CHAR = Character("Mira Holt", "Occupation: Lighthouse keeper")


def sample_messages() -> list[Message]:
    return [
        Message("char", swipes=[Swipe("Hello."), Swipe("Hi!", "user", "stop", {"k": 1})],
                swipe_id=1, send_date="2026-11-27T09:00:00+00:00"),
        Message("user", "Hey.", "tiny", hidden=True, meta={"a": [1, 2]}),
    ]


TOM = User("Tom")


def new_chat(messages: list[Message], user: User = TOM, scenario: str = "",
             title: str = "") -> Conversation:
    return Conversation(CHAR, user, scenario, messages, title=title)


def test_create_load_list_delete(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        chat_id = store.create_chat(new_chat(sample_messages(), User("Tom", "A sailor."),
                                             "Storm.", "first"))
        chat = store.load_chat(chat_id)
        assert chat.character == CHAR and chat.scenario == "Storm."
        assert chat.user == User("Tom", "A sailor.")
        assert chat.messages == sample_messages()
        [summary] = store.list_chats()
        assert (summary.id, summary.character_name, summary.user_name, summary.messages,
                summary.title) == (chat_id, "Mira Holt", "Tom", 2, "first")
        store.delete_chat(chat_id)
        assert store.list_chats() == []
        assert store._db.execute("SELECT COUNT(*) FROM swipes").fetchone()[0] == 0
        assert store._db.execute("SELECT COUNT(*) FROM characters").fetchone()[0] == 0
        with pytest.raises(StoreError, match=f"no chat with id {chat_id} in "):
            store.load_chat(chat_id)


def test_sync_writes_only_what_changed(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        messages = sample_messages() + [Message("char", f"m{i}") for i in range(5)]
        chat_id = store.create_chat(new_chat(messages))
        assert store.sync_messages(chat_id, messages, 0) == Saved(0, 0)
        messages[3].swipes.append(Swipe("again"))
        messages[3].swipe_id = 1
        assert store.sync_messages(chat_id, messages, 0) == Saved(1, 1)
        assert store.sync_messages(chat_id, messages[:4], 1) == Saved(0, 2)
        assert store.load_chat(chat_id).messages == messages[:4]
        store.append_message(chat_id, Message("user", "new"))
        assert [m.text for m in store.load_chat(chat_id).messages][-1] == "new"


def test_two_writers_on_one_chat_never_lose_a_message(tmp_path: Path) -> None:
    """Issue 11: A saves its message and the reply, then B saves from its stale copy."""
    a, b = ChatStore(tmp_path / "c.db"), ChatStore(tmp_path / "c.db")
    chat_id = a.create_chat(new_chat([Message("char", "greeting")]))
    copy_a, version_a = a.load_chat_version(chat_id)
    copy_b, version_b = b.load_chat_version(chat_id)
    assert version_a == version_b == 0
    copy_a.messages.append(Message("user", "A's message"))
    version_a = a.sync_messages(chat_id, copy_a.messages, version_a).version
    copy_a.messages.append(Message("char", "reply to A"))
    version_a = a.sync_messages(chat_id, copy_a.messages, version_a).version
    assert version_a == 2
    copy_b.messages.append(Message("user", "B's message"))
    with pytest.raises(StaleChatError, match=(
            r"chat 1 was changed by another process since this copy was loaded \(version 2, "
            r"this copy 0\); nothing was saved")) as caught:
        b.sync_messages(chat_id, copy_b.messages, version_b)
    assert (caught.value.version, caught.value.saved_version) == (0, 2)
    texts = ["greeting", "A's message", "reply to A"]
    assert [m.text for m in a.load_chat(chat_id).messages] == texts
    # B reloads and goes on from what is saved; now A's copy is the stale one.
    copy_b, version_b = b.load_chat_version(chat_id)
    copy_b.messages.append(Message("user", "B's message"))
    assert b.sync_messages(chat_id, copy_b.messages, version_b) == Saved(1, 3)
    with pytest.raises(StaleChatError, match=r"\(version 3, this copy 2\)"):
        a.sync_messages(chat_id, copy_a.messages[:1], version_a)  # would delete 3 messages
    # An append (another process, an import tool) makes every loaded copy stale too.
    a.append_message(chat_id, Message("char", "reply to B"))
    with pytest.raises(StaleChatError):
        b.sync_messages(chat_id, copy_b.messages, 3)
    assert [m.text for m in b.load_chat(chat_id).messages] == [*texts, "B's message",
                                                                "reply to B"]
    assert b.version(chat_id) == 4


def test_a_version_1_database_is_migrated_and_keeps_its_chats(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO characters VALUES (1, 'Mira Holt', 'Keeps the lamp.', 'Storm.', "
                 "'', '2026-01-01')")
    conn.execute("INSERT INTO chats VALUES (1, 1, 'Tom', '', 'old', '2026-01-01', '2026-01-01', "
                 "'{}')")
    # The digest limamono wrote for this message before the chat model changed (schema 1).
    old_digest = "f43ec20c6c7c08ae8af4d804ae4605a3290abf3ad78843140d5c5f58617452d4"
    conn.execute("INSERT INTO messages VALUES (1, 1, 0, 'char', 0, NULL, 0, '', '{}', ?)",
                 (old_digest,))
    conn.execute("INSERT INTO swipes VALUES (1, 0, 'Hello.', NULL, NULL, '{}')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with ChatStore(db) as store:
        chat, version = store.load_chat_version(1)
        assert (chat.title, chat.scenario, [m.text for m in chat.messages]) == (
            "old", "Storm.", ["Hello."])
        assert version == 0
        chat.messages.append(Message("user", "Hi."))
        # Digests did not change with the model: the old row is not rewritten.
        assert store.sync_messages(1, chat.messages, version) == Saved(1, 1)
        assert store.load_chat(1).messages == chat.messages
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 2 \
        == SCHEMA_VERSION


def test_session_changes_are_saved_as_they_happen(tmp_path: Path) -> None:
    from test_chat import ScriptedEngine

    store = ChatStore(tmp_path / "c.db")
    chat_id = store.create_chat(new_chat([Message("char", "Hi.")]))
    saved = [0]

    def save(session: ChatSession) -> None:
        saved[0] = store.sync_messages(chat_id, session.history, saved[0]).version

    chat = ChatSession(store.load_chat(chat_id), ScriptedEngine(["One.", "Two."]),
                       on_change=save)
    "".join(chat.send("Hello."))
    "".join(chat.regenerate())
    reopened = ChatStore(tmp_path / "c.db").load_chat(chat_id)
    assert [m.text for m in reopened.messages] == ["Hi.", "Hello.", "Two."]
    assert [s.text for s in reopened.messages[-1].swipes] == ["One.", "Two."]
    chat.undo()
    assert len(ChatStore(tmp_path / "c.db").load_chat(chat_id).messages) == 3
    assert ChatStore(tmp_path / "c.db").load_chat(chat_id).messages[-1].text == "One."


def test_a_chat_that_fails_to_load_is_reported_and_left_alone(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        chat_id = store.create_chat(new_chat(sample_messages()))
        store._db.execute("UPDATE messages SET swipe_id = 7 WHERE position = 1")
        with pytest.raises(StoreError, match=r"chat 1, message 1 cannot be read \(swipe_id 7 "
                                             r"is out of range 0\.\.0\); nothing was changed"):
            store.load_chat(chat_id)
        store._db.execute("UPDATE messages SET swipe_id = 0, extra = '{oops' WHERE position = 1")
        with pytest.raises(StoreError, match="chat 1, message 1 cannot be read"):
            store.load_chat(chat_id)
        assert store._db.execute("SELECT extra FROM messages WHERE position = 1"
                                 ).fetchone()[0] == "{oops"


def test_a_failed_write_changes_nothing_and_says_so(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        chat_id = store.create_chat(new_chat(sample_messages()))
        bad = [*sample_messages()[:1], Message("narrator", "x")]  # type: ignore[arg-type]
        with pytest.raises(StoreError, match=r"the change was not saved .*CHECK constraint"):
            store.sync_messages(chat_id, bad, 0)
        assert store.load_chat(chat_id).messages == sample_messages()
        assert store.version(chat_id) == 0
        store.append_message(chat_id, Message("user", "still works"))
        assert store.load_chat(chat_id).messages[-1].text == "still works"


def test_schema_version_and_refusals_leave_files_untouched(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    ChatStore(db).close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = newer.read_bytes()
    with pytest.raises(StoreError, match="written by a newer limamono"):
        ChatStore(newer)
    assert newer.read_bytes() == before
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all, but someone's notes" * 100)
    before = junk.read_bytes()
    with pytest.raises(StoreError, match="cannot be used as the chat database"):
        ChatStore(junk)
    assert junk.read_bytes() == before


# --------------------------------------------------------------------------- SillyTavern

def test_sillytavern_round_trip_is_byte_identical(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        chat_id = import_sillytavern(store, ST_SAMPLE)
        chat = store.load_chat(chat_id)
        assert chat.user.name == "Tom" and chat.character.name == "Mira Holt"
        assert [m.role for m in chat.messages] == ["char", "user", "char", "char"]
        assert chat.messages[0].swipe_id == 1 and len(chat.messages[0].swipes) == 2
        assert chat.messages[3].hidden
        assert export_sillytavern(chat) == ST_SAMPLE.read_text(encoding="utf-8")


def test_sillytavern_export_changes_only_what_changed(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "c.db") as store:
        chat_id = import_sillytavern(store, ST_SAMPLE)
        chat = store.load_chat(chat_id)
        chat.messages[0].swipe_id = 0
        chat.messages[1].swipes[0] = Swipe("Edited.")
        chat.messages.append(Message("char", swipes=[Swipe("New.", "user", "stop")],
                                     send_date="2026-11-27T09:00:00+00:00"))
        lines = [json.loads(line) for line in export_sillytavern(chat).split("\n")]
        original = [json.loads(line) for line in ST_SAMPLE.read_text().split("\n")]
    assert lines[0] == original[0]
    assert lines[1] == {**original[1], "mes": original[1]["swipes"][0], "swipe_id": 0}
    assert lines[2] == {**original[2], "mes": "Edited.", "swipes": ["Edited."]}
    assert lines[3:5] == original[3:5]
    assert lines[5] == {"extra": {"limamono": {"cuts": ["user"], "finish_reasons": ["stop"]}},
                        "name": "Mira Holt", "is_user": False, "is_system": False,
                        "send_date": "2026-11-27T09:00:00+00:00", "mes": "New.",
                        "swipes": ["New."], "swipe_id": 0}
    back = parse_sillytavern("\n".join(json.dumps(x) for x in lines))
    assert back.messages[-1].current.cut == "user"


@pytest.mark.parametrize(("lines", "error"), [
    (["{}"], "x.jsonl:1: expected the chat header"),
    (['{"user_name":"T","character_name":"M"}', '{"mes":"a","is_user":false}', "{oops"],
     "x.jsonl:3: not valid JSON"),
    (['{"user_name":"T","character_name":"M"}', '{"name":"M"}'], "x.jsonl:2: field 'mes'"),
    (['{"user_name":"T","character_name":"M"}', '{"mes":"a","swipes":["a"],"swipe_id":3}'],
     r"x.jsonl:2: field 'swipe_id' must be an index into 'swipes' \(0..0\), got 3"),
    (['{"user_name":"T","character_name":"M"}', '{"mes":"a","is_user":"yes"}'],
     "x.jsonl:2: field 'is_user' must be true or false"),
    (['{"user_name":"T","character_name":"M"}', "[1]"], "x.jsonl:2: expected a JSON object"),
    ([""], "x.jsonl: the file is empty"),
])
def test_sillytavern_errors_name_the_line(lines: list[str], error: str) -> None:
    with pytest.raises(StoreError, match=error):
        parse_sillytavern("\n".join(lines), "x.jsonl")


def test_bom_and_trailing_newline_are_tolerated() -> None:
    text = "\ufeff" + ST_SAMPLE.read_text(encoding="utf-8") + "\n"
    assert len(parse_sillytavern(text).messages) == 4


def test_a_chat_file_that_fails_to_load_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_file_safely(target, "first")
    with pytest.raises(StoreError, match="exists; pass --force"):
        write_file_safely(target, "second")
    broken = '{"user_name":"T","character_name":"M"}\n{"mes": tru'
    target.write_text(broken)
    with pytest.raises(StoreError, match=r"does not load as a chat .*out\.jsonl:2"):
        write_file_safely(target, "second", force=True)
    assert target.read_text() == broken
    target.write_text(ST_SAMPLE.read_text())
    write_file_safely(target, "second", force=True)
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# --------------------------------------------------------------------------- kill test

def kill_writer_repeatedly(db: Path, kills: int, seed: int) -> tuple[int, int]:
    """SIGKILL the writer ``kills`` times at random moments; check the database after each.

    Returns the numbers of acknowledged appends and rewrites.
    """
    rng = random.Random(seed)
    appended: dict[int, str] = {}
    swipes: dict[int, int] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(seed * 1000 + k)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        lines = []
        for _ in range(rng.choice([0, 1, 2, 5, 10, 20, 40])):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        # Whole lines printed before the kill are acknowledged too; a cut-off one is not.
        lines += proc.stdout.read().splitlines(keepends=True)
        proc.wait()
        for line in lines:
            if line.endswith("\n"):
                record(line, appended, swipes)
        check_database(db, appended, swipes)
    return len(appended), len(swipes)


def record(line: str, appended: dict[int, str], swipes: dict[int, int]) -> None:
    kind, _, rest = line.rstrip("\n").partition(" ")
    position, _, value = rest.partition(" ")
    if kind == "A":
        appended[int(position)] = value
    elif kind == "S":
        swipes[int(position)] = max(swipes.get(int(position), 0), int(value))


def check_database(db: Path, appended: dict[int, str], swipes: dict[int, int]) -> None:
    if not db.exists():
        assert not appended
        return
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not appended:
            return
        rows = dict(conn.execute(
            "SELECT m.position, s.text FROM messages m JOIN swipes s ON s.message_id = m.id "
            "WHERE s.idx = 0").fetchall())
        counts = dict(conn.execute("SELECT m.position, COUNT(*) FROM messages m JOIN swipes s "
                                   "ON s.message_id = m.id GROUP BY m.id").fetchall())
    finally:
        conn.close()
    for position, text in appended.items():
        assert rows.get(position) == text, f"acknowledged message {position} lost"
    for position, count in swipes.items():
        assert counts.get(position, 0) >= count, f"acknowledged swipe at {position} lost"


def test_kills_never_lose_acknowledged_messages(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    appended, _ = kill_writer_repeatedly(db, kills=20, seed=1)
    assert appended > 20
    with ChatStore(db) as store:
        assert store.integrity_check() == "ok"


@pytest.mark.slow
def test_kills_never_lose_acknowledged_messages_many(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    appended, rewritten = kill_writer_repeatedly(db, kills=150, seed=2)
    assert appended > 150 and rewritten > 10
