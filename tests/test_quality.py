"""Quality checks (DQ...) on hand-written turns and datasets, with exact findings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from limamono import quality as q
from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml
from limamono.dataset import Record, lint_dir, quality_problems

MIRA = Character("Mira", "A lighthouse keeper.")
LONG_A = ("The storm had kept the ferry in harbour for three days and the lamp room smelled "
          "of paraffin and wet wool.")
LONG_B = ("The storm had kept the ferry in harbour for four days and the lamp room smelled "
          "of paraffin and wet wool.")
OTHER = ("Gulls wheeled above the breakwater while the tide went out across the flats and "
         "left the boats tilted on their keels.")


# --------------------------------------------------------------------------- phrases

def test_phrase_list_parsing_weights_wildcards_and_errors():
    phrases = q.parse_phrases("# comment\n\nshivers down * spine | 2\na mix of\n")
    assert [(p.text, p.weight) for p in phrases] == [("shivers down * spine", 2.0),
                                                     ("a mix of", 1.0)]
    text = "It sent Shivers  down her spine, a mix of fear and a mix of awe."
    hits = q.find_phrases(text, phrases)
    assert [(h.matched, h.start) for h in hits] == [("Shivers  down her spine", 8),
                                                    ("a mix of", 33), ("a mix of", 51)]
    assert q.slop_score(text, phrases) == 4.0
    # 4 weighted hits over 15 words, per 1,000 words; "a mixture" does not match "a mix of"
    assert q.slop_index([text, "a mixture"], phrases) == pytest.approx(4000 / 17)
    assert q.slop_index([""], phrases) is None
    with pytest.raises(ValueError, match=r"<phrases>:2: weight 'x' is not a number"):
        q.parse_phrases("ok\nbad | x")
    with pytest.raises(ValueError, match=r"<phrases>:1: the line has no phrase"):
        q.parse_phrases("| 2")


def test_overlapping_phrases_count_once():
    phrases = q.parse_phrases("sent shivers down | 2\nshivers down * spine | 3\nspine")
    hits = q.find_phrases("It sent shivers down her spine. Shivers down his spine.", phrases)
    assert [(h.matched, h.phrase.weight) for h in hits] == [
        ("sent shivers down", 2.0), ("spine", 1.0), ("Shivers down his spine", 3.0)]


def test_shipped_list_loads_and_words_match_on_boundaries():
    phrases = q.load_phrases()
    assert len(phrases) > 50 and all(p.weight > 0 for p in phrases)
    assert [h.matched for h in q.find_phrases("She bit her lip.")] == ["bit her lip"]
    assert q.find_phrases("The nestledness of it; unboundaried") == []


def test_phrase_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read the phrase list"):
        q.load_phrases(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- one turn

def rules(text: str, role: str = "char", length: str | None = None) -> list[tuple[str, str]]:
    return [(f.rule, f.message) for f in q.check_turn(text, role, user_name="Tom",
                                                      length=length, phrases=[])]


def test_repeated_ngrams_tiers():
    assert q.repeated_ngrams("a b c d a b c d a b c d", 4, 3) == [("a b c d", 3)]
    assert rules("one two three four, one two three four; one two three four.") == [
        ("DQ010", "'one two three four' occurs 3 times")]
    eight = "the lamp turned and the light swept the sea"
    assert rules(f"{eight}. Then {eight}.") == [
        ("DQ010", "'the lamp turned and the light swept the' occurs 2 times "
                  "(and 1 more 8-word sequences)")]
    assert rules("one two three four, one two three four.") == []  # twice is allowed


def test_assistant_speak_and_refusals():
    text = "As an AI language model, I'm sorry, but I can't help with that. I hope this helps!"
    assert rules(text) == [
        ("DQ030", "'As an AI', 'AI language model', 'I hope this helps'"),
        ("DQ031", "'I'm sorry, but I can't', 'I can't help with that'"),
    ]
    assert rules('"Certainly," Mira said, "I can help you carry that."') == []


def test_speaks_for_user_only_in_character_turns():
    text = "Mira waved.\nTom nodded and sat down.\n  Tom's coat dripped.\nTom: hi\nTommy ran."
    assert q.speaks_for_user(text, "Tom") == [12, 37]
    assert rules(text) == [("DQ040", "2 line(s) start with 'Tom': the character acts for "
                                     "the user; cut or rewrite them")]
    assert rules(text, role="user") == []
    assert q.speaks_for_user("Tom sat.", "") == []


def test_length_against_label():
    assert q.label_range("micro") == (0, 10)
    assert q.label_range("long") == (121, 240)
    assert q.label_range("huge") == (481, None)
    def text(n: int) -> str:
        return " ".join(f"w{i}" for i in range(n))

    assert rules(text(10), length="micro") == []
    assert rules(text(11), length="micro") == [
        ("DQ050", "labelled micro (0-10 words) but has 11 words (tiny)")]
    assert rules(text(95), length="long") == [
        ("DQ050", "labelled long (121-240 words) but has 95 words (medium)")]
    assert rules(text(100), length="huge") == [
        ("DQ050", "labelled huge (481+ words) but has 100 words (medium)")]


# --------------------------------------------------------------------------- dataset

def test_exact_and_near_duplicates():
    ref = q.TurnRef
    turns = [(ref("a", 0), LONG_A), (ref("a", 1), OTHER), (ref("b", 0), LONG_A.upper()),
             (ref("b", 1), LONG_B), (ref("b", 2), "Yes."), (ref("c", 0), "Yes.")]
    exact, near = q.duplicate_turns(turns)
    assert [(str(p.later), str(p.first), p.similarity) for p in exact] == [
        ("b message 0", "a message 0", 1.0)]
    shared = q.jaccard(q.shingles(LONG_A), q.shingles(LONG_B))
    assert shared == pytest.approx(16 / 22)  # 19 3-grams each, 3 differ on each side
    assert [(str(p.later), str(p.first), p.similarity) for p in near] == [
        ("b message 1", "a message 0", pytest.approx(shared))]
    assert q.duplicate_turns(turns, threshold=0.8)[1] == []
    with pytest.raises(ValueError, match="threshold"):
        q.duplicate_turns(turns, threshold=0)


def test_span_rates():
    rates = q.span_rates(["_Hm._ *thud*", "Plain.", "''Ship'' _unclosed", "*knock*"])
    assert (rates.char_turns, rates.thought, rates.sound, rates.title) == (4, 0.25, 0.5, 0.25)
    assert q.span_rates([]).thought is None


def conv(*texts: str, user: str = "Tom") -> Conversation:
    roles = ["char", "user"]
    return Conversation(MIRA, User(user), "A storm.",
                        [Message(roles[i % 2], t) for i, t in enumerate(texts)])  # type: ignore[arg-type]


def test_quality_problems_over_records():
    records = [Record(conv(LONG_A, "Tom waved.", "Tom sat down. _Late._"), "a.yaml"),
               Record(conv(LONG_B, "Hi.", "As an AI, I can't help with that."), "b.jsonl", 1)]
    found = [(p.file, p.record, p.message_index, p.rule, p.severity, p.message)
             for p in quality_problems(records, phrases=[], root="data")]
    assert found == [
        ("a.yaml", 0, 2, "DQ040", "warning", "1 line(s) start with 'Tom': the character "
                                             "acts for the user; cut or rewrite them"),
        ("b.jsonl", 1, 2, "DQ030", "warning", "'As an AI'"),
        ("b.jsonl", 1, 2, "DQ031", "warning", "'I can't help with that'"),
        ("b.jsonl", 1, 0, "DQ002", "warning", "0.73 similar to a.yaml message 0 (Jaccard of "
                                              "word 3-grams)"),
    ]  # thought rate 1 of 4 character turns = 25 %: inside the band, no DQ060
    low = [Record(conv("Plain.", "Hi.", "Plain again."), "c.yaml")]
    assert [(p.file, p.rule, p.message) for p in quality_problems(low, phrases=[],
                                                                     root="data")] == [
        ("data", "DQ060", "0% of 2 character turns have a _thought_ (target 20%-80%)")]


def test_data_lint_reports_quality_and_can_skip_it(tmp_path: Path):
    from limamono.cli import app

    (tmp_path / "a.yaml").write_text(dump_yaml(conv("_Hm._ She bit her lip.", "Hi.", "Plain.")))
    phrases = tmp_path / "mine.txt"
    phrases.write_text("hi | 3\n")
    names = {p.rule for p in lint_dir(tmp_path)}
    assert "DQ020" in names
    assert not {r for r in names if r.startswith("DQ")} - {"DQ020"}
    assert not any(p.rule.startswith("DQ") for p in lint_dir(tmp_path, quality=False))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "lint", str(tmp_path), "--phrases", str(phrases)])
    assert result.exit_code == 0, result.output
    assert "a.yaml message 1: warning DQ020 stock phrase(s): 'Hi'" in result.output
    assert "bit her lip" not in result.output
    bad = tmp_path / "bad.txt"
    bad.write_text("x | heavy\n")
    result = runner.invoke(app, ["data", "lint", str(tmp_path), "--phrases", str(bad)])
    assert result.exit_code == 2 and "bad.txt:1: weight 'heavy'" in result.output


def test_quality_rules_registry_ids_are_stable():
    assert list(q.QUALITY_RULES) == ["DQ001", "DQ002", "DQ010", "DQ020", "DQ030", "DQ031",
                                     "DQ040", "DQ050", "DQ060"]
    assert q.QUALITY_RULES["DQ040"].name == "speaks-for-user"


def test_stats_plots_and_quality_figures(tmp_path: Path):
    from limamono.dataset.plots import plot_stats

    stats = {"length_labels": {"char": {"long": 3, "huge": 1}, "user": {"tiny": 4}},
             "conversation_tokens": {"data/a.yaml": 120, "data/b.yaml": 900}}
    written = plot_stats(stats, tmp_path / "plots")
    assert [p.name for p in written] == ["length_labels.png", "conversation_tokens.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    older = plot_stats({"length_labels": stats["length_labels"]}, tmp_path / "old")
    assert [p.name for p in older] == ["length_labels.png"]
    figures = q.quality_figures([conv("_Hm._ She bit her lip.", "Hi.", "*thud* Plain.")])
    # "bit her lip" (weight 1) in 7 character words: 1000 / 7, rounded
    assert figures == {"char_turns": 2, "slop_index": 142.86, "thought_rate": 0.5,
                       "sound_rate": 0.5, "title_rate": 0.0}
