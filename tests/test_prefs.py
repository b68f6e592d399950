"""Preference pairs from SillyTavern swipes (`limamono data prefs`), on both tokenizers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from limamono import dataset as ds
from limamono.cli import app
from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.core.policy import get_policy
from limamono.dataset.prefs import (
    PrefsConfig,
    PrefsError,
    build_prefs,
    read_prefs,
    reply_failures,
    write_prefs,
)
from limamono.store import parse_sillytavern

#: A hand-made SillyTavern chat: a greeting with two swipes, a reply with four (kept: 1;
#: 2 repeats the kept text, 3 is empty), and a last reply with one swipe.
ST_CHAT = "\n".join(json.dumps(line) for line in (
    {"user_name": "Tom", "character_name": "Edda Varn", "create_date": "2026-01-01@10h00m00s",
     "chat_metadata": {}},
    {"name": "Edda Varn", "is_user": False, "mes": "The forge is cold.",
     "swipes": ["The forge is cold.", "Edda waves."], "swipe_id": 0},
    {"name": "Tom", "is_user": True, "mes": "Fix my sword?"},
    {"name": "Edda Varn", "is_user": False, "mes": "\"Leave it there,\" she said.",
     "swipes": ["Tom smiles and leaves.", "\"Leave it there,\" she said.",
                "\"Leave it there,\" she said.", ""], "swipe_id": 1},
    {"name": "Tom", "is_user": True, "mes": "Thanks."},
    {"name": "Edda Varn", "is_user": False, "mes": "She nods."},
))

HEAD = ("Below is an instruction that describes background information for a story-rich chat. "
        "Write an appropriate response for both the instruction and user input.\n\n"
        "### Instruction:\nEdda Varn\n\n")
PROMPT_1 = HEAD + "### Response: (length = micro)\nEdda Varn:"
PROMPT_3 = (HEAD + "### Response: (length = micro)\nEdda Varn: The forge is cold.\n\n"
            "### Input: (length = micro)\nTom: Fix my sword?\n\n"
            "### Response: (length = micro)\nEdda Varn:")


@pytest.fixture(scope="module", params=["smollm2", "mistral"])
def tok(request):
    return request.getfixturevalue({"smollm2": "tokenizer",
                                    "mistral": "mistral_tokenizer"}[request.param])


def chat() -> Conversation:
    return parse_sillytavern(ST_CHAT, "chat.jsonl")


def test_pairs_are_the_kept_swipe_against_each_other_one(tok):
    result = build_prefs([("chat", chat())], tok)
    assert [(p.message_index, p.chosen_swipe, p.rejected_swipe) for p in result.pairs] == [
        (0, 0, 1), (2, 1, 0)]
    first, second = result.pairs
    assert (first.prompt, first.chosen, first.rejected) == (
        PROMPT_1, " The forge is cold.\n\n###", " Edda waves.\n\n###")
    assert (second.prompt, second.chosen, second.rejected) == (
        PROMPT_3, ' "Leave it there," she said.\n\n###', " Tom smiles and leaves.\n\n###")
    assert [p.label for p in result.pairs] == ["micro", "micro"]
    assert [p.reasons for p in result.pairs] == [["not kept"], ["not kept"]]
    for pair in result.pairs:
        # Each side is its text tokenised whole (BOS where the tokenizer adds one).
        for reply, ids in ((pair.chosen, pair.chosen_ids), (pair.rejected, pair.rejected_ids)):
            assert pair.prompt_ids + ids == tok(pair.prompt + reply)["input_ids"]
        assert tok.decode(pair.prompt_ids + pair.chosen_ids, skip_special_tokens=True) \
            == pair.prompt + pair.chosen
    bos = [1] if tok.bos_token_id == 1 and tok("a")["input_ids"][0] == 1 else []
    assert second.prompt_ids[:len(bos)] == bos
    stats = result.stats()
    assert {k: stats[k] for k in ("chats", "char_turns", "turns_with_swipes", "turns_used",
                                  "pairs", "skipped")} == {
        "chats": 1, "char_turns": 3, "turns_with_swipes": 2, "turns_used": 2, "pairs": 2,
        "skipped": 2}
    assert stats["skipped_turns"] == [
        {"source": "chat", "message_index": 2, "reason": "same text as the kept swipe",
         "swipe": 2},
        {"source": "chat", "message_index": 2, "reason": "empty swipe", "swipe": 3}]


def test_smollm2_ids_are_exact(tokenizer):
    first = build_prefs([("chat", chat())], tokenizer).pairs[0]
    assert first.chosen_ids == [378, 37051, 314, 4011, 30, 198, 198, 3757]
    assert first.rejected_ids == [28614, 81, 6147, 30, 198, 198, 3757]


def test_pair_prompt_is_the_policys_and_the_samples_are_the_builders(tok):
    """The prompt is PromptPolicy.render's, byte for byte; the chosen side is the builder's
    sample of the same turns: same ids, and the reply's tokens are the trained ones."""
    conv = chat()
    pair = build_prefs([("chat", conv)], tok).pairs[1]
    history = replace(conv, messages=conv.messages[:2])
    assert pair.prompt == get_policy("training").render(history, response_length="micro")
    turns = replace(conv, messages=[*conv.messages[:2], Message("char", conv.messages[2].text)])
    built = ds.build_samples([ds.Record(turns, "c.yaml")], tok,
                             ds.BuildConfig(seq_len=4096, val=0)).samples
    assert len(built) == 1
    assert built[0].input_ids == pair.prompt_ids + pair.chosen_ids
    assert built[0].labels[len(pair.prompt_ids):] == pair.chosen_ids
    assert pair.labels("chosen") == [-100] * len(pair.prompt_ids) + pair.chosen_ids
    # The builder also trains the greeting; the pair's prompt masks it.
    assert sum(label != -100 for label in built[0].labels[:len(pair.prompt_ids)]) > 0


def test_eos_end_of_turn_trains_the_eos(tok):
    pair = build_prefs([("chat", chat())], tok, PrefsConfig(end_of_turn="eos")).pairs[0]
    assert pair.chosen == " The forge is cold." + tok.eos_token
    assert pair.chosen_ids[-1] == tok.eos_token_id


def test_lint_rejects_skip_a_kept_swipe_that_fails_and_name_the_rule(tokenizer):
    conv = chat()
    conv.messages[0].swipe_id = 1  # keep "Edda waves." ...
    conv.messages[0].swipes[1] = Swipe("Edda waves. _Cold")  # ... with an open thought
    result = build_prefs([("chat", conv)], tokenizer, PrefsConfig(lint_rejects=True))
    assert [(p.message_index, p.reasons) for p in result.pairs] == [
        (2, ["not kept", "DQ040 speaks-for-user"])]
    assert result.skipped[0].reason == (
        "the kept swipe fails lints: LM011 unbalanced-underscore")
    assert result.stats()["skipped_because"] == {
        "empty swipe": 1, "same text as the kept swipe": 1, "the kept swipe fails lints": 1}
    # Without --lint-rejects the same chat gives both turns.
    assert len(build_prefs([("chat", conv)], tokenizer).pairs) == 2


def test_reply_failures_cover_each_lint():
    kw = {"char_name": "Edda", "user_name": "Tom", "label": "micro"}
    assert reply_failures("She nods.", **kw) == []
    assert reply_failures("Tom: hello there.", **kw) == ["LM021 impersonation"]
    assert reply_failures("She waits *sighs* here.", **kw) == ["LM030 asterisk-action"]
    assert reply_failures("A shiver ran down her spine.", **kw) == ["DQ020 stock-phrase"]
    long = " ".join(["word"] * 11) + "."
    assert reply_failures(long, **kw) == ["over-length (11 words, micro allows 10)"]
    assert reply_failures(long, **{**kw, "label": "tiny"}) == []
    assert reply_failures(long, **{**kw, "label": "huge"}) == []


def test_a_message_label_is_shared_and_marks_longer_replies(tokenizer):
    conv = Conversation(Character("Edda"), User("Tom"), messages=[
        Message("user", "Hi."),
        Message("char", None, "micro", swipes=[Swipe("She nods."),
                                               Swipe(" ".join(["word"] * 12) + ".")])])
    (pair,) = build_prefs([("c", conv)], tokenizer, PrefsConfig(lint_rejects=True)).pairs
    assert pair.label == "micro"
    assert pair.prompt.endswith("### Response: (length = micro)\nEdda:")
    assert pair.reasons == ["not kept", "over-length (12 words, micro allows 10)"]


def test_sillytavern_policy_labels_as_the_presets_send(tokenizer):
    pair = build_prefs([("chat", chat())], tokenizer,
                       PrefsConfig(policy="sillytavern")).pairs[1]
    assert pair.prompt == (HEAD + "### Response:\nEdda Varn: The forge is cold.\n\n"
                           "### Input: (length = tiny)\nTom: Fix my sword?\n\n"
                           "### Response: (length = long)\nEdda Varn:")


def test_long_chats_lose_their_oldest_turns_as_the_policy_fits(tok):
    conv = chat()
    filler = [Message("user", "Tell me more about the old mines. " * 8),
              Message("char", "The mines closed long ago and nobody goes there now. " * 6)]
    conv.messages[:0] = filler * 3
    whole = build_prefs([("chat", conv)], tok, PrefsConfig(seq_len=1 << 14)).pairs[-1]
    assert whole.dropped_turns == 0
    limit = len(whole.prompt_ids) + len(whole.chosen_ids) - 60
    cut = build_prefs([("chat", conv)], tok, PrefsConfig(seq_len=limit)).pairs[-1]
    assert cut.dropped_turns > 0
    assert len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) <= limit
    # The prompt is the policy's render of the history labelled whole, oldest turns left out.
    policy = get_policy("training")
    labelled = policy.label(replace(conv, messages=conv.messages[:-3]))
    assert cut.prompt == policy.render(
        replace(labelled, messages=labelled.messages[cut.dropped_turns:]),
        response_length="micro")
    assert cut.prompt.startswith(HEAD) and cut.prompt.endswith(PROMPT_3[len(HEAD):])
    tiny = build_prefs([("chat", conv)], tok, PrefsConfig(seq_len=40))
    assert all(s.reason.startswith("too long") for s in tiny.skipped
               if s.swipe is None)


def test_written_pairs_read_back_and_damage_names_the_line(tmp_path, tokenizer):
    result = build_prefs([("chat", chat())], tokenizer)
    meta = write_prefs(result, tmp_path / "p", tokenizer, "smollm2-135m")
    assert meta["pairs"] == 2
    back_meta, rows = read_prefs(tmp_path / "p")
    assert back_meta["prefs"]["config"]["lint_rejects"] is False
    assert rows == [p.row() for p in result.pairs]
    assert ds.load_dir(tmp_path)[0] == []  # a prefs folder is never read as conversations
    (tmp_path / "p" / "pairs.jsonl").write_text(json.dumps(rows[0]) + "\n"
                                                + json.dumps({**rows[1], "chosen_ids": []}))
    with pytest.raises(PrefsError, match=r"pairs.jsonl:2: an empty reply"):
        read_prefs(tmp_path / "p")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(PrefsError, match="not a prefs folder"):
        write_prefs(result, tmp_path / "other", tokenizer)
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


def test_cli_reports_counts_and_skips(tmp_path, tokenizer_dir):
    (tmp_path / "chat.jsonl").write_text(ST_CHAT)
    result = CliRunner().invoke(app, ["data", "prefs", str(tmp_path / "chat.jsonl"), "-o",
                                      str(tmp_path / "out"), "--model", str(tokenizer_dir),
                                      "--lint-rejects"])
    assert result.exit_code == 0, result.output
    assert "2 pair(s) from 2 of 2 turn(s) with swipes (3 character turn(s), 1 chat(s))" \
        in result.output
    assert "skipped: chat.jsonl message 2 swipe 3: empty swipe" in result.output
    assert "rejected because DQ040 speaks-for-user: 1" in result.output
    _, rows = read_prefs(tmp_path / "out")
    assert [r["source"] for r in rows] == ["chat.jsonl", "chat.jsonl"]


def test_cli_reads_chats_from_the_store(tmp_path, tokenizer_dir):
    from limamono.store import ChatStore

    with ChatStore(tmp_path / "chats.db") as store:
        chat_id = store.create_chat(chat())
    result = CliRunner().invoke(app, ["data", "prefs", "--db", str(tmp_path / "chats.db"),
                                      "--chat", str(chat_id), "-o", str(tmp_path / "out"),
                                      "--model", str(tokenizer_dir)])
    assert result.exit_code == 0, result.output
    _, rows = read_prefs(tmp_path / "out")
    assert [r["source"] for r in rows] == [f"chat {chat_id}", f"chat {chat_id}"]


def test_cli_names_a_bad_file_and_writes_nothing(tmp_path, tokenizer_dir):
    (tmp_path / "bad.jsonl").write_text('{"user_name": "Tom"}\n{"mes": 3}\n')
    result = CliRunner().invoke(app, ["data", "prefs", str(tmp_path / "bad.jsonl"), "-o",
                                      str(tmp_path / "out"), "--model", str(tokenizer_dir)])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output
    assert not (tmp_path / "out").exists()


def test_names_must_be_unique(tokenizer):
    with pytest.raises(PrefsError, match="unique: a"):
        build_prefs([("a", chat()), ("a", chat())], tokenizer)


def test_config_names_bad_values():
    with pytest.raises(ValueError, match="policy must be one of training, sillytavern"):
        PrefsConfig(policy="st")



def test_cli_reads_conversation_yaml_with_swipes_and_its_sheet(tmp_path, tokenizer_dir):
    from limamono.core.conversation import dump_yaml

    conv = chat()
    conv.character = Character("Edda Varn", "A smith.")
    conv.meta = {}
    for message in conv.messages:
        message.meta = {}
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "edda.yaml").write_text(dump_yaml(conv))
    (tmp_path / "chats" / "st.jsonl").write_text(ST_CHAT)
    result = CliRunner().invoke(app, ["data", "prefs", str(tmp_path / "chats"), "-o",
                                      str(tmp_path / "out"), "--model", str(tokenizer_dir)])
    assert result.exit_code == 0, result.output
    _, rows = read_prefs(tmp_path / "out")
    assert [(r["source"], r["message_index"]) for r in rows] == [
        ("edda.yaml", 0), ("edda.yaml", 2), ("st.jsonl", 0), ("st.jsonl", 2)]
    assert rows[0]["prompt"] == PROMPT_1.replace("Edda Varn\n\n###", "Edda Varn\nA smith.\n\n###")
