"""`limamono data draft`: conversations drafted turn by turn on a scripted engine."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml, loads_yaml
from limamono.core.policy import get_policy
from limamono.dataset.draft import (
    DraftPlan,
    draft_conversation,
    is_draft,
    mark_draft,
    turn_budget,
    turn_prompt,
)
from limamono.samplers import get_preset
from test_chat import ScriptedEngine

REPO = Path(__file__).resolve().parents[1]
MIRA = Character("Mira", "Occupation: lighthouse keeper")
START = Conversation(MIRA, User("Tom"), "A storm.", [])
PLAN = DraftPlan(turns=4, user_lengths=("tiny",), char_lengths=("long",))
SETTINGS = get_preset("limamono")

GREETING = 'Mira lit the lamp. "Another storm," she said.'
REPLIES = [
    f" {GREETING}\n\n### Input: (length = tiny)\nTom: Hello?",      # stops at the header
    ' "Can I come in?" Tom asked.\n\n### Response: (length = long)\nMira: Yes.',
    " Mira opened the door. _Finally._\nTom: Thanks!",              # stops at "\nTom:"
    " Tom stepped inside.\n\n###",
]
HEAD = ("Below is an instruction that describes background information for a story-rich "
        "chat. Write an appropriate response for both the instruction and user input.\n\n"
        "### Instruction:\nMira\nOccupation: lighthouse keeper\nScenario: A storm.")


def test_turn_prompt_is_the_policy_prompt_with_an_open_header():
    policy = get_policy()
    conv = Conversation(MIRA, User("Tom"), "A storm.", [Message("char", "Hi.", "micro")])
    assert turn_prompt(policy, START, "char", "huge") == (
        HEAD + "\n\n### Response: (length = huge)\nMira:")
    assert turn_prompt(policy, conv, "user", "tiny") == (
        HEAD + "\n\n### Response: (length = micro)\nMira: Hi.\n\n### Input: (length = tiny)\n"
        "Tom:")
    assert turn_prompt(policy, conv, "char", "long") == policy.render(
        conv, open_response=True, response_length="long")


def test_turn_budget():
    assert turn_budget("long", 1024) == 384      # 240 words * 1.6
    assert turn_budget("huge", 1024) == 1024     # 960 words * 1.6, capped
    assert turn_budget("tiny", 1024) == 48


def test_turns_alternate_with_the_requested_labels_each_stopping_at_the_next_header():
    engine = ScriptedEngine(REPLIES)
    seen = []
    draft = draft_conversation(engine, SETTINGS, START, PLAN, seed=40,
                               on_turn=lambda done, total, m: seen.append((done, total, m.role)))
    conv = draft.conversation
    assert [(m.role, m.length, m.text) for m in conv.messages] == [
        ("char", "huge", GREETING),
        ("user", "tiny", '"Can I come in?" Tom asked.'),
        ("char", "long", "Mira opened the door. _Finally._"),
        ("user", "tiny", "Tom stepped inside."),
    ]
    assert seen == [(1, 4, "char"), (2, 4, "user"), (3, 4, "char"), (4, 4, "user")]
    assert (draft.new_turns, draft.finish) == (4, "done")
    assert draft.notes == ["turn 2: the model began Tom's turn without a header; cut there"]
    # Each prompt is the conversation so far with the next open header, through the policy.
    assert engine.prompts == draft.prompts
    assert engine.prompts[0] == HEAD + "\n\n### Response: (length = huge)\nMira:"
    assert engine.prompts[1] == (HEAD + f"\n\n### Response: (length = huge)\nMira: {GREETING}"
                                 "\n\n### Input: (length = tiny)\nTom:")
    assert engine.prompts[3].endswith("_Finally._\n\n### Input: (length = tiny)\nTom:")
    assert [s.seed for s in engine.settings] == [40, 41, 42, 43]


def test_labels_are_picked_from_the_requested_sets_repeatably():
    plan = DraftPlan(turns=9, user_lengths=("tiny", "short"), char_lengths=("long", "massive"))
    first = draft_conversation(ScriptedEngine(["Text."]), SETTINGS, START, plan, seed=3)
    again = draft_conversation(ScriptedEngine(["Text."]), SETTINGS, START, plan, seed=3)
    labels = [m.length for m in first.conversation.messages]
    assert labels == [m.length for m in again.conversation.messages]
    assert labels[0] == "huge"
    assert set(labels[1::2]) <= {"tiny", "short"} and set(labels[2::2]) <= {"long", "massive"}


def test_the_draft_yaml_round_trips_through_render():
    draft = draft_conversation(ScriptedEngine(REPLIES), SETTINGS, START, PLAN, seed=40)
    marked = mark_draft(draft, "smollm2-135m", None, 40, SETTINGS.replace(seed=40))
    text = dump_yaml(marked)
    loaded = loads_yaml(text, "draft.yaml")
    assert loaded.messages == marked.messages and is_draft(loaded)
    meta = yaml.safe_load(text)["meta"]
    assert (meta["draft"], meta["model"], meta["adapter"], meta["seed"]) == (
        True, "smollm2-135m", "none", 40)
    assert meta["sampler"]["tfs"] == 0.85 and meta["sampler"]["seed"] == 40
    assert meta["finish"] == "done"
    # "Tom stepped inside." in a user turn is fine; the greeting is 8 words, not huge.
    assert {"message_index": 0, "rule": "DQ050",
            "message": "labelled huge (481+ words) but has 8 words (micro)"} in meta["lint"]
    rendered = fmt.render(loaded)
    assert fmt.parse(rendered).conversation.messages == loaded.messages


def test_ctrl_c_keeps_the_finished_turns():
    # Turns 1 and 2 have two words each; the cancel fires on the third word of turn 3.
    engine = ScriptedEngine([" Mira waved.", " Tom waved.",
                             " Mira talked about the lamp for a very long while."],
                            cancel_after=3)
    cancel = threading.Event()
    draft = draft_conversation(engine, SETTINGS, START, PLAN, seed=1, cancel=cancel)
    assert draft.finish == "cancelled" and draft.new_turns == 2
    assert [m.text for m in draft.conversation.messages] == ["Mira waved.", "Tom waved."]


def test_continue_extends_without_changing_earlier_turns():
    earlier = [Message("char", "Mira  waved from the \u201cdoor\u201d."),  # left as written
               Message("user", "Tom ran over.", "short")]
    start = Conversation(MIRA, User("Tom"), "A storm.", earlier, {"split": "eval"})
    engine = ScriptedEngine([" Mira smiled.", " Tom smiled."])
    plan = DraftPlan(turns=2, user_lengths=("tiny",), char_lengths=("medium",))
    draft = draft_conversation(engine, SETTINGS, start, plan, seed=9)
    assert draft.conversation.messages[:2] == earlier
    assert [(m.role, m.length) for m in draft.conversation.messages[2:]] == [
        ("char", "medium"), ("user", "tiny")]
    # The unlabelled greeting is labelled by the policy in the prompt only.
    assert engine.prompts[0].startswith(HEAD + "\n\n### Response: (length = micro)\n")
    assert draft.conversation.meta == {"split": "eval"}


def test_an_empty_turn_is_retried_with_new_seeds_then_given_up():
    engine = ScriptedEngine(["\n\n### Input:", " Mira nodded."])
    draft = draft_conversation(engine, SETTINGS, START, DraftPlan(turns=1), seed=5)
    assert [m.text for m in draft.conversation.messages] == ["Mira nodded."]
    assert [s.seed for s in engine.settings] == [5, 1005]
    empty = draft_conversation(ScriptedEngine(["###"]), SETTINGS, START, DraftPlan(turns=2),
                               seed=5)
    assert (empty.finish, empty.new_turns) == ("empty", 0)
    assert empty.notes == ["turn 0: the model wrote nothing (3 seeds); drafting stopped there"]


def test_the_style_fixer_normalises_each_turn():
    draft = draft_conversation(ScriptedEngine([" \u201cHi\u2026\u201d  Mira said.  "]),
                               SETTINGS, START, DraftPlan(turns=1), seed=0)
    assert draft.conversation.messages[0].text == '"Hi..." Mira said.'


def test_bad_plans_are_refused_with_every_reason():
    with pytest.raises(ValueError) as info:
        DraftPlan(turns=0, user_lengths=("tiny", "vast"), greeting_length="giant", retries=-1)
    message = str(info.value)
    assert "turns must be at least 1" in message and "vast" in message and "giant" in message
    assert "retries must be at least 0" in message


# --------------------------------------------------------------------------- CLI

@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedEngine:
    from limamono.cli import chat_cmd

    engine = ScriptedEngine(REPLIES)
    monkeypatch.setattr(chat_cmd, "make_engine",
                        lambda model, adapter, threads=None, backend="auto", llama=None: engine)
    return engine


def test_cli_writes_a_linted_draft_that_build_refuses(scripted, tmp_path, tokenizer_dir):
    from limamono.cli import app

    runner = CliRunner()
    out = tmp_path / "drafts"
    card = REPO / "examples" / "characters" / "orrin.png"
    result = runner.invoke(app, ["data", "draft", "--card", str(card), "--turns", "4",
                                 "--user", "Tom", "--seed", "7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    path = out / "orrin-draft-7.yaml"
    assert f"wrote {path}: 4 new turn(s)" in result.output
    conv = loads_yaml(path.read_text(), str(path))
    assert conv.character.name == "Orrin" and conv.user.name == "Tom"
    assert [m.role for m in conv.messages] == ["char", "user", "char", "user"]
    assert conv.meta["draft"] is True and conv.meta["seed"] == 7
    assert scripted.prompts[0].endswith("\n\n### Response: (length = huge)\nOrrin:")
    again = runner.invoke(app, ["data", "draft", "--card", str(card), "--seed", "7", "-o",
                                str(out)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    build = runner.invoke(app, ["data", "build", str(out), "-o", str(tmp_path / "b"),
                                "--model", str(tokenizer_dir), "--val", "0"])
    assert build.exit_code == 2 and "[draft]" in build.output
    build = runner.invoke(app, ["data", "build", str(out), "-o", str(tmp_path / "b"),
                                "--model", str(tokenizer_dir), "--val", "0",
                                "--include-drafts"])
    assert build.exit_code == 0, build.output
    lint = runner.invoke(app, ["data", "lint", str(out)])
    assert "warning draft" in lint.output


def test_cli_card_greeting_starts_from_the_cards_first_message(scripted, tmp_path):
    from limamono.cards import card_to_conversation, read_card
    from limamono.cli import app

    card = REPO / "examples" / "characters" / "orrin.png"
    greeting = card_to_conversation(read_card(card), "Tom").messages[0]
    result = CliRunner().invoke(app, ["data", "draft", "--card", str(card), "--card-greeting",
                                      "--turns", "1", "--user", "Tom", "--user-lengths", "tiny",
                                      "--seed", "2", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    conv = loads_yaml((tmp_path / "orrin-draft-2.yaml").read_text())
    assert conv.messages == [greeting, Message("user", GREETING, "tiny")]
    assert scripted.prompts[0].endswith(greeting.text + "\n\n### Input: (length = tiny)\nTom:")


def test_cli_continue_and_argument_errors(scripted, tmp_path):
    from limamono.cli import app

    runner = CliRunner()
    first = tmp_path / "first.yaml"
    first.write_text(dump_yaml(Conversation(MIRA, User("Tom"), "A storm.",
                                            [Message("char", "Hi.", "micro")])))
    result = runner.invoke(app, ["data", "draft", "--continue", str(first), "--turns", "1",
                                 "--user-lengths", "short", "--seed", "3", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    extended = loads_yaml((tmp_path / "first-draft-3.yaml").read_text())
    # The scripted engine's first reply, cut at its header, becomes Tom's turn.
    assert extended.messages == [Message("char", "Hi.", "micro"),
                                 Message("user", GREETING, "short")]
    assert scripted.prompts[0].endswith("Mira: Hi.\n\n### Input: (length = short)\nTom:")
    both = runner.invoke(app, ["data", "draft", "-o", str(tmp_path)])
    assert both.exit_code == 2 and "give --card" in both.output
    bad = runner.invoke(app, ["data", "draft", "--continue", str(first), "--user-lengths",
                              "tiny,vast", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and "--user-lengths 'tiny,vast'" in bad.output


@pytest.mark.slow
def test_draft_on_the_embedded_model(tmp_path):
    from limamono.cli import app

    card = REPO / "examples" / "characters" / "orrin.png"
    result = CliRunner().invoke(app, ["data", "draft", "--card", str(card), "--turns", "3",
                                      "--max-tokens", "48", "--seed", "1", "--threads", "1",
                                      "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    conv = loads_yaml((tmp_path / "orrin-draft-1.yaml").read_text())
    assert [m.role for m in conv.messages] == ["char", "user", "char"]
    assert all(m.text and "###" not in m.text for m in conv.messages)
    assert conv.meta["draft"] is True and isinstance(conv.meta["lint"], list)


REPROS = Path("/work/shared/testdata/repros/audit-3")


def long_name_card(folder: Path, name: str) -> Path:
    card = folder / f"card-{len(name)}.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": name, "description": "d", "personality": "", "scenario": "s",
        "first_mes": "hello", "mes_example": "", "creator_notes": "", "system_prompt": "",
        "post_history_instructions": "", "alternate_greetings": [], "tags": [], "creator": "",
        "character_version": "", "extensions": {}}}), encoding="utf-8")
    return card


@pytest.mark.parametrize("length", [240, 300, 100_000])
def test_cli_bounds_file_names_from_long_card_names(scripted, tmp_path, length):
    """Issue 24, defect 12: a card's name of any length gives a draft file that can be
    written (it was 'File name too long', or a draft generated and then lost)."""
    from limamono.cli import app

    card = long_name_card(tmp_path, "N" * length)
    repro = REPROS / f"12_card_name_{length}.json"
    if repro.exists():  # the audit's cards are these, byte for byte
        assert json.loads(repro.read_text()) == json.loads(card.read_text())
    result = CliRunner().invoke(app, ["data", "draft", "--card", str(card), "--turns", "1",
                                      "--seed", "5", "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    [written] = (tmp_path / "d").iterdir()
    digest = hashlib.sha256(("n" * length).encode()).hexdigest()[:8]
    assert written.name == "n" * 71 + f"-{digest}-draft-5.yaml"
    assert loads_yaml(written.read_text(), str(written)).character.name == "N" * length


def test_bounded_stem_and_check_name(tmp_path):
    from limamono.util import atomic

    assert atomic.bounded_stem("mira") == "mira"
    assert atomic.bounded_stem("x" * 80) == "x" * 80
    long_a, long_b = atomic.bounded_stem("é" * 100 + "a"), atomic.bounded_stem("é" * 100 + "b")
    assert long_a != long_b and len(long_a.encode()) <= 80 and long_a.startswith("é" * 35)
    atomic.check_name(tmp_path / ("y" * 255))
    with pytest.raises(OSError) as info:
        atomic.check_name(tmp_path / "missing" / ("y" * 256))
    assert info.value.strerror == "the file name is 256 bytes, over the 255 its folder allows"
    # A name near the limit is written: the temp file beside it has a bounded name.
    atomic.write_text(tmp_path / ("z" * 250 + ".yaml"), "ok")
    assert (tmp_path / ("z" * 250 + ".yaml")).read_text() == "ok"
