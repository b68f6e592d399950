"""Dataset builder: exact loss masks, windows, overflow policies, LimaRP, lint, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from limamono import dataset as ds
from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml

MIRA = Character("Mira", "Age: 30\nA lighthouse keeper.")


def four_turns() -> Conversation:
    """char, user, char, user: the hand-written conversation of the mask tests."""
    return Conversation(MIRA, User("Tom"), "A stormy night at the lighthouse.", [
        Message("char", '"Morning," Mira said.', "micro"),
        Message("user", "Tom waved back.", "micro"),
        Message("char", "She smiled. _Finally._", "micro"),
        Message("user", '"Tea?" Tom asked.', "micro"),
    ])


def encode(conv: Conversation, tokenizer, **kwargs) -> tuple[list[int], list[int]]:
    pieces = ds.compose(ds.layout(conv), 0, len(conv.messages), **kwargs)
    return ds.SampleTokenizer(tokenizer).encode(pieces)


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels, strict=True):
        trained = label != ds.IGNORE_INDEX
        if trained:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run) for run in runs]


def axolotl_input_output(tokenizer, row: dict, train_on_inputs: bool = False):
    """Axolotl's `type: input_output` reading, as its docs describe it: each segment is
    tokenised without special tokens; label false -> -100 unless train_on_inputs."""
    ids: list[int] = []
    labels: list[int] = []
    for segment in row["segments"]:
        seg_ids = tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
        ids += seg_ids
        labels += seg_ids if (segment["label"] or train_on_inputs) else [-100] * len(seg_ids)
    return ids, labels


# --------------------------------------------------------------------------- masks

def test_header_policy_trains_char_text_and_next_header_start(tokenizer):
    ids, labels = encode(four_turns(), tokenizer)
    assert trained_runs(tokenizer, ids, labels) == [
        ' "Morning," Mira said.\n\n###',
        " She smiled. _Finally._\n\n###",
    ]
    # The ids are the prompt the renderer writes, token for token.
    assert tokenizer.decode(ids) == fmt.render(four_turns())
    assert ids == tokenizer(fmt.render(four_turns()), add_special_tokens=False)["input_ids"]


def test_header_policy_masked_tokens_are_exactly_the_rest(tokenizer):
    ids, labels = encode(four_turns(), tokenizer)
    masked = [t for t, label in zip(ids, labels, strict=True) if label == ds.IGNORE_INDEX]
    text = fmt.render(four_turns())
    for trained in (' "Morning," Mira said.\n\n###', " She smiled. _Finally._\n\n###"):
        text = text.replace(trained, "", 1)
    assert tokenizer.decode(masked) == text
    assert [tokenizer.decode([t]) for t, label in zip(ids, labels, strict=True)
            if label != ds.IGNORE_INDEX] == [
        ' "', "Mor", "ning", ',"', " Mira", " said", ".", "\n", "\n", "###",
        " She", " smiled", ".", " _", "Finally", "._", "\n", "\n", "###"]


def test_last_char_turn_gets_its_end_signal(tokenizer):
    conv = four_turns()
    conv.messages.pop()
    ids, labels = encode(conv, tokenizer)
    assert tokenizer.decode(ids) == fmt.render(conv) + "\n\n###"
    assert trained_runs(tokenizer, ids, labels)[-1] == " She smiled. _Finally._\n\n###"
    assert ids[-3:] == [198, 198, 3757] and labels[-3:] == [198, 198, 3757]


def test_eos_policy_trains_eos_after_each_char_turn(tokenizer):
    ids, labels = encode(four_turns(), tokenizer, end_of_turn="eos", eos=tokenizer.eos_token)
    assert trained_runs(tokenizer, ids, labels) == [
        ' "Morning," Mira said.<|im_end|>',
        " She smiled. _Finally._<|im_end|>",
    ]
    assert ids.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(ids).replace("<|im_end|>", "") == fmt.render(four_turns())


def test_train_on_inputs_trains_everything(tokenizer):
    ids, labels = encode(four_turns(), tokenizer, train_on_inputs=True)
    assert labels == ids


def test_mistral_sample_is_the_whole_text_with_bos_first(mistral_tokenizer):
    tok = mistral_tokenizer
    for kwargs in ({}, {"end_of_turn": "eos", "eos": tok.eos_token}):
        pieces = ds.compose(ds.layout(four_turns()), 0, 4, **kwargs)
        ids, labels = ds.SampleTokenizer(tok).encode(pieces)
        assert ids == tok(ds.join(pieces))["input_ids"]  # one call, BOS as it adds it
        assert ids[0] == 1 and labels[0] == ds.IGNORE_INDEX
    ids, labels = encode(four_turns(), tok)
    assert trained_runs(tok, ids, labels) == [
        '"Morning," Mira said.\n\n###', "She smiled. _Finally._\n\n###"]
    # No `▁` where a piece starts: `.` `\n` `\n` `###`, as the whole text tokenises.
    pieces = tok.convert_ids_to_tokens(ids)
    said = pieces.index("▁said")
    assert pieces[said:said + 6] == ["▁said", ".", "<0x0A>", "<0x0A>", "###", "▁Input"]
    assert not any(pieces[i:i + 2] == ["▁", "<0x0A>"] for i in range(len(pieces)))
    # Pieces tokenised alone (Axolotl's input_output reading) would differ on Mistral.
    row = {"segments": [{"text": p.text, "label": p.label} for p in
                        ds.compose(ds.layout(four_turns()), 0, 4)]}
    assert axolotl_input_output(tok, row)[0] != ids


def test_smollm2_samples_have_no_bos(tokenizer):
    assert ds.SampleTokenizer(tokenizer).start_ids() == []
    pieces = ds.compose(ds.layout(four_turns()), 0, 4)
    assert pieces[0] == ds.Piece(ds.layout(four_turns()).system, False)


def test_axolotl_rows_carry_the_same_ids_and_labels():
    rows = ds.axolotl_rows([{"source": "a", "window": 0, "input_ids": [1, 5, 6],
                             "labels": [-100, 5, 6]}])
    assert rows == [{"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1],
                     "labels": [-100, 5, 6]}]
    with pytest.raises(ValueError, match="a: labels do not match input_ids"):
        ds.axolotl_rows([{"source": "a", "input_ids": [1, 5], "labels": [-100, 7]}])


# --------------------------------------------------------------------------- windows

def long_conversation(turns: int = 7) -> Conversation:
    """char/user turns of 70 and 20 tokens (with their headers), ending on a char turn."""
    messages = []
    for i in range(turns):
        if i % 2 == 0:
            messages.append(Message("char", f"Mira spoke, turn {i}. " + "The lamp burned. " * 12,
                                    "short"))
        else:
            messages.append(Message("user", f"Tom answered, turn {i}.", "micro"))
    return Conversation(MIRA, User("Tom"), "Night.", messages)


def test_window_splitting_keeps_instruction_and_trains_each_turn_once(tokenizer):
    conv = long_conversation()
    lay = ds.layout(conv)
    tok = ds.SampleTokenizer(tokenizer)
    assert tok.count(ds.compose(lay, 0, 0)) == 51  # BOS-less trigger + Instruction block
    config = ds.BuildConfig(seq_len=260, window_overlap=2)
    windows, action = ds.plan_samples(lay, tok, config)
    assert action == "window"
    assert len(windows) == 3
    trained_texts = []
    for pieces in windows:
        assert pieces[0].text == lay.system and not pieces[0].label
        assert tok.count(pieces) <= config.seq_len
        assert pieces[1].text == "\n\n###"  # every window starts at a turn boundary
        trained_texts += [p.text for p in pieces if p.label and p.text != "\n\n###"]
        assert pieces[-1] == ds.Piece("\n\n###", True)  # each ends on a trained char turn
    assert trained_texts == [t.text for t in lay.turns if t.role == "char"]
    # Window 1: turns 0-2 (turn 3 fits, turn 4 does not; a continued window ends on a char
    # turn). Window 2 repeats turns 1-2 as masked context, then trains turns 3-4; window 3
    # repeats 3-4 and trains 5-6.
    assert windows == [ds.compose(lay, 0, 3), ds.compose(lay, 1, 5, {3, 4}),
                       ds.compose(lay, 3, 7, {5, 6})]
    # Whole-text counts: "burned. " + "\n\n###" tokenises " \n\n" as one token.
    assert [tok.count(w) for w in windows] == [212, 232, 232]
    assert [len(tokenizer(ds.join(w))["input_ids"]) for w in windows] == [212, 232, 232]


def test_overflow_policies_are_reported(tokenizer, tmp_path):
    conv = long_conversation()
    (tmp_path / "c.yaml").write_text(dump_yaml(conv))
    tok = ds.SampleTokenizer(tokenizer)
    whole = tok.count(ds.compose(ds.layout(conv), 0, 7))
    for policy, action, count in (("truncate", "truncated", 1), ("drop", "dropped", 0),
                                  ("window", "window", 3)):
        result = ds.build(str(tmp_path), tokenizer,
                          ds.BuildConfig(seq_len=260, val=0, overflow=policy))
        assert result.overflow == [ds.OverflowEvent(str(tmp_path / "c.yaml"), whole, action,
                                                    count)]
        assert len(result.samples) == count
        assert all(len(s.input_ids) <= 260 for s in result.samples)
    with pytest.raises(ds.DatasetError, match=f"{whole} tokens > seq_len 260"):
        ds.build(str(tmp_path), tokenizer, ds.BuildConfig(seq_len=260, overflow="error"))


@pytest.mark.parametrize(("which", "tokens"), [("tokenizer", 299), ("mistral_tokenizer", 300)])
def test_truncate_cuts_after_the_last_token_that_fits(which, tokens, request):
    tokenizer = request.getfixturevalue(which)
    tok = ds.SampleTokenizer(tokenizer)
    whole = ds.compose(ds.layout(long_conversation()), 0, 7)
    _, spans = tok.text(ds.join(whole))
    pieces = ds.truncate(whole, tok, 300)
    # The text up to the end of token 300; SmolLM2 tokenises the cut " \n" + "\n" as one
    # token " \n\n", so that text is 299 tokens.
    assert ds.join(pieces) == ds.join(whole)[:spans[299][1]]
    ids, _ = tok.encode(pieces)
    assert len(ids) == tokens
    assert ids == tokenizer(ds.join(pieces))["input_ids"]
    assert ds.truncate(whole, tok, 10_000) == whole


# --------------------------------------------------------------------------- inputs

LIMARP = {
    "persona": {"<FIRST>": "<FIRST> is a ferry pilot who hums.", "<SECOND>": "A tourist."},
    "names": {"<FIRST>": "Ines", "<SECOND>": "Paul"},
    "scenario": "<SECOND> boards <FIRST>'s ferry at dawn.",
    "conversation": [
        {"name": "<FIRST>", "text": "Ines nodded at <SECOND>. \"Mind the step.\""},
        {"name": "<SECOND>", "text": "Paul stepped aboard."},
    ],
}


def test_limarp_import(tmp_path):
    path = tmp_path / "thread-1.yaml"
    path.write_text(yaml.safe_dump(LIMARP))
    [conv] = ds.load_file(path)
    assert conv.character == Character("Ines", "Ines is a ferry pilot who hums.")
    assert conv.user == User("Paul", "A tourist.")
    assert conv.scenario == "Paul boards Ines's ferry at dawn."
    assert conv.messages == [Message("char", 'Ines nodded at Paul. "Mind the step."'),
                             Message("user", "Paul stepped aboard.")]


def write_dataset(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.yaml").write_text(dump_yaml(four_turns()))
    (root / "sub" / "copy.yaml").write_text(dump_yaml(four_turns()))
    (root / "limarp.yaml").write_text(yaml.safe_dump(LIMARP))
    bad = Conversation(MIRA, User("Tom"), "", [Message("char", "Hi."), Message("char", "")])
    (root / "bad.jsonl").write_text(
        json.dumps(four_turns().to_dict()) + "\n" + json.dumps(bad.to_dict()) + "\n")
    (root / "broken.yaml").write_text("character: {name: Mira}\nmessages: []\n")


def test_lint_collects_every_problem_of_every_file(tmp_path):
    write_dataset(tmp_path)
    found = {(Path(p.file).name, p.record, p.rule, p.message_index)
             for p in ds.lint_dir(tmp_path) if p.rule != "LM041"}
    assert found >= {
        ("bad.jsonl", 0, "duplicate", None),
        ("bad.jsonl", 1, "missing-scenario", None),
        ("bad.jsonl", 1, "alternation", 1),
        ("bad.jsonl", 1, "empty-turn", 1),
        ("broken.yaml", 0, "schema", None),
        ("copy.yaml", 0, "duplicate", None),
    }
    broken = next(p for p in ds.lint_dir(tmp_path) if p.rule == "schema")
    assert "'user'" in broken.message and broken.line is not None


def test_build_drops_duplicates_and_splits_by_conversation(tokenizer, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(10):
        conv = four_turns()
        conv.messages[0] = Message("char", f'"Morning number {i}," Mira said.')
        if i == 3:
            conv.meta["split"] = "eval"
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    (root / "dup.yaml").write_text((root / "c0.yaml").read_text())
    result = ds.build(str(root), tokenizer, ds.BuildConfig(val=0.2, seed=7))
    assert result.duplicates == [str(root / "dup.yaml")]
    evals = sorted(k for k, v in result.splits.items() if v == "eval")
    assert len(evals) == 3 and str(root / "c3.yaml") in evals  # 1 forced + ceil(0.2 * 9)
    again = ds.build(str(root), tokenizer, ds.BuildConfig(val=0.2, seed=7))
    assert again.splits == result.splits
    assert {s.split for s in result.samples if s.source in evals} == {"eval"}


def test_build_refuses_blocking_problems_listing_all(tokenizer, tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(ds.DatasetError) as info:
        ds.build(str(tmp_path), tokenizer)
    assert [p.rule for p in info.value.problems] == ["schema"]
    (tmp_path / "broken.yaml").unlink()
    with pytest.raises(ds.DatasetError) as info:
        ds.build(str(tmp_path), tokenizer)
    assert [(p.rule, p.message_index) for p in info.value.problems] == [("empty-turn", 1)]


def test_build_normalises_and_labels_lengths(tokenizer, tmp_path):
    conv = four_turns()
    conv.messages[0] = Message("char", "“Morning…” Mira said.")
    conv.messages[2] = Message("char", " ".join(["word"] * 61))
    (tmp_path / "c.yaml").write_text(dump_yaml(conv))
    result = ds.build(str(tmp_path), tokenizer, ds.BuildConfig(val=0))
    messages = result.records[0].conversation.messages
    assert messages[0].text == '"Morning..." Mira said.'
    assert messages[0].length is None or messages[0].length == "micro"
    assert [m.length for m in messages] == ["micro", "micro", "medium", "micro"]
    assert result.fixes[0]["message_index"] == 0


# --------------------------------------------------------------------------- files and CLI

def test_written_files_agree_with_the_samples(tokenizer, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "long.yaml").write_text(dump_yaml(long_conversation()))
    (root / "short.yaml").write_text(dump_yaml(four_turns()))
    result = ds.build(str(root), tokenizer, ds.BuildConfig(seq_len=250, val=0.5, seed=1))
    stats = ds.write_build(result, tmp_path / "out", tokenizer)
    for split in ("train", "eval"):
        rows = [json.loads(x) for x in (tmp_path / "out" / "segments" / f"{split}.jsonl")
                .read_text().splitlines()]
        tokenized = ds.read_tokenized(tmp_path / "out", split)
        assert len(rows) == len(tokenized) == stats["splits"][split]["samples"] > 0
        for row, tok_row in zip(rows, tokenized, strict=True):
            assert (row["source"], row["window"]) == (tok_row["source"], tok_row["window"])
            pieces = [ds.Piece(p["text"], p["label"]) for p in row["segments"]]
            assert ds.SampleTokenizer(tokenizer).encode(pieces) == (tok_row["input_ids"],
                                                                    tok_row["labels"])
    assert ds.is_built(tmp_path / "out")
    assert stats["supervised_tokens"] == sum(s.supervised for s in result.samples)
    assert stats["conversations"] == 2 and stats["messages"] == 11
    assert stats["length_labels"]["char"] == {"micro": 2, "short": 4}
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_cli_data_lint_build_stats(tokenizer_dir, tmp_path):
    from limamono.cli import app

    runner = CliRunner()
    write_dataset(tmp_path / "bad")
    result = runner.invoke(app, ["data", "lint", str(tmp_path / "bad")])
    assert result.exit_code == 1, result.output
    assert "schema" in result.output and "duplicate" in result.output
    assert runner.invoke(app, ["data", "lint", str(tmp_path / "nope")]).exit_code == 2
    good = tmp_path / "good"
    good.mkdir()
    (good / "c.yaml").write_text(dump_yaml(four_turns()))
    assert runner.invoke(app, ["data", "lint", str(good)]).exit_code == 0
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "build", str(good), "-o", str(out), "--model",
                                 str(tokenizer_dir), "--val", "0"])
    assert result.exit_code == 0, result.output
    assert (out / "segments" / "train.jsonl").is_file()
    assert (out / "tokenized" / "eval.jsonl").is_file()
    result = runner.invoke(app, ["data", "stats", str(out), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["supervised_tokens"] == 19
    bad_build = runner.invoke(app, ["data", "build", str(tmp_path / "bad"), "-o", str(out),
                                    "--model", str(tokenizer_dir)])
    assert bad_build.exit_code == 2
    for cmd in (["data", "--help"], ["data", "build", "--help"], ["data", "stats", "--help"]):
        assert runner.invoke(app, cmd).exit_code == 0


def test_data_build_refuses_unusable_outputs_before_any_work(tokenizer_dir, tmp_path):
    from limamono.cli import app

    runner = CliRunner()
    good = tmp_path / "good"
    good.mkdir()
    (good / "c.yaml").write_text(dump_yaml(four_turns()))
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = {
        a_file: f"{a_file}: is a file; the build needs a folder",
        a_file / "out": f"{a_file / 'out'}: is under {a_file}, a file; the build needs a folder",
        good / "built": f"{good / 'built'}: is inside the dataset folder {good}; the next build "
                        "would read the samples as conversations (write it elsewhere)",
        busy: f"{busy}: holds other files and is not an earlier build; choose a new or empty "
              "folder",
        Path("/proc/self/nope/out"): "/proc/self/nope/out: cannot write the build (",
    }
    for output, message in cases.items():
        result = runner.invoke(app, ["data", "build", str(good), "-o", str(output), "--model",
                                     str(tokenizer_dir), "--val", "0"])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {message}"), result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert a_file.read_text() == "keep me" and sorted(os.listdir(busy)) == ["notes.txt"]
    assert sorted(os.listdir(good)) == ["c.yaml"]
    assert not list(tmp_path.glob(".*"))
    # Library callers get the same one-line refusal (the CLI refuses a NUL byte itself).
    with pytest.raises(ds.OutputError, match=r"^'bad\\x00name': the output path holds a NUL "):
        ds.check_output("bad\0name", good)


def test_a_failed_rebuild_leaves_the_previous_build_whole(tokenizer, tmp_path, monkeypatch):
    from limamono.dataset import output

    root = tmp_path / "data"
    root.mkdir()
    (root / "short.yaml").write_text(dump_yaml(four_turns()))
    (root / "config.yaml").write_text("data: .\nlora_r: 8\n")  # a training config: skipped
    out = tmp_path / "out"
    first = ds.build(str(root), tokenizer, ds.BuildConfig(val=0))
    ds.write_build(first, out, tokenizer)
    (out / "notes.txt").write_text("mine")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = ds.build(str(root), tokenizer, ds.BuildConfig(val=0, seed=7))
    calls = []
    real_write = output.atomic_write

    def failing(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(output, "atomic_write", failing)
    with pytest.raises(ds.OutputError, match=r"cannot write the build \(No space left on "
                                             r"device\); nothing was changed"):
        ds.write_build(second, out, tokenizer)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    monkeypatch.undo()
    stats = ds.write_build(second, out, tokenizer)  # a rebuild keeps the user's other files
    assert stats["build"]["config"]["seed"] == 7 and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "stats.json").read_text())["build"]["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_data_lint_notes_files_that_are_not_conversations(tmp_path):
    from limamono.cli import app

    (tmp_path / "c.yaml").write_text(dump_yaml(four_turns()))
    (tmp_path / "demo.yaml").write_text("data: conversations\nlora_r: 8\n")
    result = CliRunner().invoke(app, ["data", "lint", str(tmp_path), "--strict"])
    assert result.exit_code == 0, result.output
    assert (f"{tmp_path / 'demo.yaml'}: note skipped not a conversation, so it is skipped (it "
            "has none of character, user, messages)") in result.output
    assert "0 error(s), 0 warning(s), 1 file(s) skipped" in result.output


def test_a_build_left_inside_the_dataset_is_skipped_with_a_note(tokenizer, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "short.yaml").write_text(dump_yaml(four_turns()))
    inside = root / "built"  # made before -o inside the dataset was refused
    ds.write_build(ds.build(str(root), tokenizer, ds.BuildConfig(val=0)), inside, tokenizer)
    result = ds.build(str(root), tokenizer, ds.BuildConfig(val=0))
    assert [r.file for r in result.records] == [str(root / "short.yaml")]
    notes = [p for p in ds.lint_dir(root, quality=False) if p.severity == "note"]
    assert [(p.file, p.message) for p in notes] == [
        (str(inside), "a built dataset (limamono data build output), so it is skipped")]


def test_links_out_of_the_dataset_loops_fifos_and_devices_are_skipped_with_a_note(tmp_path):
    """Issue 24, defect 20: a link out of the dataset is not read unless --follow-links;
    every file skipped says why; nothing hangs on a FIFO or reads /dev/zero forever."""
    import os

    from typer.testing import CliRunner

    from limamono.cli import app

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text(
        "character: {name: Mira}\nuser: {name: Tom}\nscenario: A cafe.\nmessages:\n"
        "  - {role: char, text: 'Mira smiled. \"Out here.\"'}\n", encoding="utf-8")
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    (ds / "out.yaml").symlink_to(outside / "secret.yaml")
    (ds / "outdir").symlink_to(outside)
    (ds / "zero.yaml").symlink_to("/dev/zero")
    (ds / "self.yaml").symlink_to("self.yaml")
    (ds / "broken.jsonl").symlink_to("missing.jsonl")
    (ds / "sub" / "loop").symlink_to("..")
    os.mkfifo(ds / "fifo.yaml")
    (ds / "notes.txt").symlink_to("/dev/zero")  # not a dataset file: passed over quietly
    runner = CliRunner()
    result = runner.invoke(app, ["data", "lint", str(ds)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{ds}/broken.jsonl: note skipped a broken symbolic link (to missing.jsonl), so it is "
        "skipped",
        f"{ds}/fifo.yaml: note skipped not a regular file (a FIFO), so it is skipped",
        f"{ds}/out.yaml: note skipped a link to {outside}/secret.yaml, outside the dataset "
        "(--follow-links reads it), so it is skipped",
        f"{ds}/outdir: note skipped a link to {outside}, outside the dataset (--follow-links "
        "reads it), so it is skipped",
        f"{ds}/self.yaml: note skipped a symbolic link loop, so it is skipped",
        f"{ds}/sub/loop: note skipped a link to a folder inside the dataset ({ds}); its files "
        "are read where they are, so it is skipped",
        f"{ds}/zero.yaml: note skipped a link to /dev/zero, outside the dataset "
        "(--follow-links reads it), so it is skipped",
        "0 error(s), 0 warning(s), 7 file(s) skipped"]
    followed = runner.invoke(app, ["data", "lint", str(ds), "--follow-links", "--no-quality"])
    lines = followed.output.splitlines()
    assert f"{ds}/zero.yaml: note skipped not a regular file (a character device), so it is " \
           "skipped" in lines
    # Both links to the one outside file are read: the second is its duplicate.
    assert any(line.startswith(f"{ds}/outdir/secret.yaml: error duplicate same content as "
                               f"{ds}/out.yaml") for line in lines), lines
    assert not any("out.yaml: note" in line or "outdir: note" in line for line in lines)


def test_data_build_notes_skipped_links_and_leaves_them_out(tmp_path, tokenizer_dir):
    from typer.testing import CliRunner

    from limamono.cli import app

    conversation = ("character: {name: Mira}\nuser: {name: Tom}\nscenario: A cafe.\n"
                    "messages:\n  - {role: char, text: 'Mira smiled. \"%s\"'}\n")
    outside = tmp_path / "outside.yaml"
    outside.write_text(conversation % "Out here.", encoding="utf-8")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "in.yaml").write_text(conversation % "In here.", encoding="utf-8")
    (ds / "out.yaml").symlink_to(outside)
    args = ["data", "build", str(ds), "--model", str(tokenizer_dir), "--val", "0"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b1")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"skipped: {ds}/out.yaml: a link to {outside}, outside "
                                    "the dataset (--follow-links reads it), so it is skipped\n")
    stats = json.loads((tmp_path / "b1" / "stats.json").read_text())
    assert stats["conversations"] == 1
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b2"), "--follow-links"])
    assert result.exit_code == 0, result.output
    assert "skipped:" not in result.output
    assert json.loads((tmp_path / "b2" / "stats.json").read_text())["conversations"] == 2
