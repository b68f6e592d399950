"""Tests for limamono.style: spans, the asterisk converter, lint rules, normalize, the CLI."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path

import pytest
import typer
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from limamono.cli import style_cmd
from limamono.cli.style_files import iter_files, lint_file
from limamono.core import conversation as _conv_io
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.style import (
    RULES,
    SEVERITIES,
    TYPOGRAPHY_RULES,
    Issue,
    Rule,
    Span,
    StyleConfig,
    apply_fixes,
    from_asterisk_style,
    is_action,
    lint,
    lint_card_data,
    lint_conversation,
    normalize,
    normalize_conversation,
    select_rules,
    split_spans,
)

# --------------------------------------------------------------------------- spans


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in split_spans(text)]


def test_split_spans_all_kinds_with_offsets() -> None:
    text = "Mia read ''The Jungle Book''. \"Nice.\" _Odd._ *thud*"
    spans = split_spans(text)
    assert [(s.kind, s.start, s.end) for s in spans] == [
        ("narration", 0, 9), ("title", 9, 28), ("narration", 28, 30), ("dialogue", 30, 37),
        ("narration", 37, 38), ("thought", 38, 44), ("narration", 44, 45), ("sound", 45, 51),
    ]
    assert "".join(s.text for s in spans) == text
    assert spans[1].inner == "The Jungle Book"
    assert spans[5].inner == "Odd."


def test_split_spans_apostrophes_and_intraword_underscores_are_literal() -> None:
    assert _kinds("Don't touch my_var, it's Tom's.") == [
        ("narration", "Don't touch my_var, it's Tom's.")]


def test_split_spans_unclosed_runs_to_paragraph_end_only() -> None:
    spans = split_spans('"Wait, she said.\n\nThen silence.')
    assert spans[0] == Span("dialogue", '"Wait, she said.', 0, 16, closed=False)
    assert spans[0].inner == "Wait, she said."
    assert spans[1] == Span("narration", "\n\nThen silence.", 16, 31)


def test_split_spans_empty_and_scene_break() -> None:
    assert split_spans("") == []
    assert _kinds("* * *") == [("narration", "* * *")]
    assert _kinds("**bold**") == [("narration", "**bold**")]


# --------------------------------------------------------------------------- converter


@pytest.mark.parametrize(("source", "expected"), [
    ('*She smiled.* "Hi."', 'She smiled. "Hi."'),
    ("*thud*", "*thud*"),
    ("*knock knock* Who is it?", "*knock knock* Who is it?"),
    ('*She waved* "Hi."', 'She waved. "Hi."'),
    ('"Hi," *she waved* "how are you?"', '"Hi," she waved "how are you?"'),
    ('"Hi."*She left.*"Bye."', '"Hi." She left. "Bye."'),
    ("*sighs* Fine.", "*sighs* Fine."),  # flagged by LM030, but it needs a subject
    ("*She left", "*She left"),
])
def test_from_asterisk_style(source: str, expected: str) -> None:
    assert from_asterisk_style(source) == expected


def test_is_action_thresholds() -> None:
    assert is_action("smiles") and is_action("Sighs.")
    assert not is_action("thud") and not is_action("gasp")
    assert not is_action("knock knock knock knock")
    assert is_action("tap drip ding bang")
    assert not is_action("tap drip ding")
    assert is_action("tap drip ding bang", max_sound_words=3)
    assert not is_action("tap drip ding bang", max_sound_words=4)
    assert is_action("looks at you")
    with pytest.raises(ValueError, match="max_sound_words must be at least 1"):
        is_action("x", max_sound_words=0)


# --------------------------------------------------------------------------- rules


def _found(text: str, rule: str, **names: str) -> list[tuple[int, int]]:
    return [(i.start, i.end) for i in lint(text, rules=[rule], **names)]


def test_registry_ids_are_stable_and_complete() -> None:
    assert list(RULES) == ["LM001", "LM002", "LM003", "LM004", "LM005", "LM010", "LM011",
                           "LM012", "LM013", "LM020", "LM021", "LM022", "LM030", "LM040",
                           "LM041", "LM042"]
    assert [r for r in RULES if RULES[r].fixable] == list(TYPOGRAPHY_RULES)
    assert RULES["LM021"] == Rule("LM021", "impersonation", "error", RULES["LM021"].description)
    assert all(r.severity in SEVERITIES and r.description for r in RULES.values())


@pytest.mark.parametrize(("rule", "text", "spans"), [
    ("LM001", "\u201cHi,\u201d she said.", [(0, 1), (4, 5)]),
    ("LM002", "It\u2019s \u2018fine\u2019.", [(2, 3), (5, 6), (10, 11)]),
    ("LM003", "Well\u2026 no\u2026", [(4, 5), (8, 9)]),
    ("LM004", "Wait ! Then ... nothing , ok ;", [(4, 5), (11, 12), (23, 24), (28, 29)]),
    ("LM004", "Then ...later. Use .NET :D ok", []),
    ("LM005", "She  left.   Then  ,", [(3, 5), (10, 13)]),
    ("LM010", 'He said "go. "Now," she said.', [(18, 19)]),
    ("LM010", '"Wait.\n\n"Go."', [(0, 1)]),
    ("LM010", '"Wait.\r\n\r\n"Go."', [(0, 1)]),
    ("LM011", "_Is he lying? she thought. my_var is fine", [(0, 1)]),
    ("LM011", "she thought_ nothing", [(11, 12)]),
    ("LM012", "*thud* and *crash", [(11, 12)]),
    ("LM012", "3 * 4 and 2*3 and * * *", []),
    ("LM013", "He read ''Dune. Don't.", [(8, 10)]),
    ("LM013", "He read ''Dune''. Don't.", []),
    ("LM020", "Fine.\n### Input:\nmore", [(6, 16)]),
    ("LM020", "Not a ### header", []),
    ("LM030", "*She smiled and walked to the door.* *thud* *knock knock*", [(0, 36)]),
    ("LM030", "*smiles* *gasp* *thuds*", [(0, 8)]),
    ("LM040", 'I walked in. "I am here," she said. _I hope._ We left.', [(0, 1), (46, 48)]),
    ("LM041", 'You wake up. "You too." Your hands shake.', [(0, 3), (24, 28)]),
    ("LM042", 'She walks in. He slowly turns. It was late. "She is." They are here. '
              "She was, it seems.", [(0, 9), (14, 29), (54, 62), (78, 86)]),
])
def test_rule_offsets(rule: str, text: str, spans: list[tuple[int, int]]) -> None:
    assert _found(text, rule) == spans


def test_impersonation_depends_on_the_speaker() -> None:
    text = "Ann: hello\nShe waited.\nBob: hi"
    names = {"char_name": "Ann", "user_name": "Bob"}
    assert [(i.rule, i.start, i.end) for i in lint(text, rules=["LM021", "LM022"], **names)] \
        == [("LM022", 0, 4), ("LM021", 23, 27)]
    as_user = lint(text, rules=["LM021", "LM022"], role="user", **names)
    assert [(i.rule, i.start) for i in as_user] == [("LM021", 0), ("LM022", 23)]
    assert lint(text, rules=["LM021", "LM022"]) == []  # no names, nothing to compare


def test_present_tense_uses_the_speaker_names() -> None:
    text = "Edda Varn walks to the door. Corin waits."
    found = lint(text, rules=["present-tense-narration"], char_name="Edda Varn",
                 user_name="Corin")
    assert [(i.start, i.end) for i in found] == [(0, 15), (29, 40)]


def test_issue_fields_and_rule_selection() -> None:
    [item] = lint("Hi\u2026", rules=["ellipsis-character"])
    assert item == Issue("LM003", "warning", "ellipsis character: write '...'", 2, 3, None, "...")
    assert item.to_dict()["name"] == "ellipsis-character"
    assert select_rules(["lm004", "repeated-spaces"]) == ["LM004", "LM005"]
    with pytest.raises(ValueError, match="unknown style rule 'LM999'; known rules: LM001"):
        select_rules(["LM999"])
    with pytest.raises(ValueError, match="role must be 'char' or 'user', got 'bot'"):
        lint("x", role="bot")  # type: ignore[arg-type]


def test_max_sound_words_is_configurable() -> None:
    text = "*drip tap ding bang*"
    assert [i.rule for i in lint(text, rules=["LM030"])] == ["LM030"]
    assert lint(text, rules=["LM030"], config=StyleConfig(max_sound_words=4)) == []
    with pytest.raises(ValueError, match="max_sound_words must be at least 1, got 0"):
        StyleConfig(max_sound_words=0)


def test_clean_house_style_has_no_issues() -> None:
    text = ('Edda looked up from her logbook. "Who\'s there?" _Not again._\n\n'
            "*knock knock* The door rattled. She had read ''The Jungle Book'' twice...")
    assert lint(text, char_name="Edda", user_name="Corin") == []


# --------------------------------------------------------------------------- normalize

_PROSE = st.text(alphabet="ab Z9 \t\n.,!?;:\"'_*-\u201c\u201d\u2018\u2019\u2026\u201e",
                 max_size=60)


def _skeleton(text: str) -> str:
    """The text with the normalized characters mapped to ASCII and spaces dropped."""
    table = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
                           "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                           "\u2026": "...", " ": None, "\t": None})
    return text.translate(table)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PROSE, st.text(max_size=40)))
def test_normalize_is_idempotent_and_only_touches_quotes_ellipses_spaces(text: str) -> None:
    once, issues = normalize(text)
    assert normalize(once) == (once, [])
    assert apply_fixes(text, issues) == once  # the issues explain every change
    assert _skeleton(once) == _skeleton(text)
    assert lint(once, rules=list(TYPOGRAPHY_RULES)) == []


def test_normalize_exact_result_and_issues_in_original_offsets() -> None:
    text = "\u201cWait \u2026\u201d  she said , then left\u2026"
    fixed, issues = normalize(text)
    assert fixed == '"Wait..." she said, then left...'
    assert [(i.rule, i.start, i.end) for i in issues] == [
        ("LM001", 0, 1), ("LM004", 5, 6), ("LM003", 6, 7), ("LM001", 7, 8),
        ("LM005", 8, 10), ("LM004", 18, 19), ("LM003", 30, 31)]
    assert normalize("Don\u2019t.", rules=["LM003"]) == ("Don\u2019t.", [])


def _conversation(*texts: tuple[str, str]) -> Conversation:
    return Conversation(Character("Edda", "Keeper."), User("Corin"), "A storm.",
                        [Message(role, text) for role, text in texts])  # type: ignore[arg-type]


def test_lint_and_normalize_conversation_carry_message_index() -> None:
    conv = _conversation(("char", 'She nodded. "Yes\u2026"'), ("user", "Edda: stop it."),
                         ("char", "Corin: hi"))
    found = [(i.message_index, i.rule, i.start) for i in lint_conversation(conv)]
    assert found == [(0, "LM003", 16), (1, "LM021", 0), (2, "LM021", 0)]
    fixed, issues = normalize_conversation(conv)
    assert fixed.messages[0] == Message("char", 'She nodded. "Yes..."')
    assert fixed.messages[1:] == conv.messages[1:]
    assert [(i.message_index, i.rule) for i in issues] == [(0, "LM003")]
    assert conv.messages[0].text.endswith('\u2026"')  # the input is not modified


def test_lint_card_data_greetings_get_all_rules_sheet_fields_typography() -> None:
    data = {"name": "Sera", "description": "Sera walks\u2026 *She smiles at you*",
            "first_mes": "*She smiles at you* Hello.", "alternate_greetings": ["", "{{user}}: x"],
            "mes_example": 123}
    found = [(key, i.rule, i.start) for key, i in lint_card_data(data)]
    assert found == [("first_mes", "LM030", 0), ("alternate_greetings[1]", "LM021", 0),
                     ("description", "LM003", 10)]


# --------------------------------------------------------------------------- files and CLI

_YAML = """\
# A comment the fix must keep.
character:
  name: Edda
  description: Keeper of the light.
user: Corin
scenario: A storm.
messages:
  - role: char
    text: |
      Edda looked up \u2026 "Who\u2019s there ?"
  - role: user
    text: Corin knocked again.
"""


@pytest.fixture
def lint_app() -> typer.Typer:
    """A Typer app with only `lint`, so these tests do not depend on other command modules."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    style_cmd.register(app)
    return app


def _run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, ["lint", *args])


def test_cli_exit_codes_and_lines(lint_app: typer.Typer, tmp_path: Path) -> None:
    clean = tmp_path / "clean.txt"
    clean.write_text('She nodded. "Yes."\n', encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_text("Fine.\nShe left , slowly.\n", encoding="utf-8")
    assert _run(lint_app, str(clean)).exit_code == 0
    result = _run(lint_app, str(clean), str(bad))
    assert result.exit_code == 1
    assert result.stdout == f"{bad}:2:9 LM004 warning space before ',': remove it\n"
    assert "1 issue(s) (0 error(s), 1 warning(s)) in 2 file(s)" in result.stderr
    result = _run(lint_app, str(tmp_path / "missing.yaml"), str(bad))
    assert result.exit_code == 2
    assert f"{bad}:2:9 LM004" in result.stdout  # the readable file is still reported
    assert "missing.yaml: no such file" in result.stderr
    assert _run(lint_app, str(bad), "--fail-on", "error").exit_code == 0
    assert _run(lint_app, str(bad), "--ignore", "LM004").exit_code == 0
    assert _run(lint_app, str(bad), "--rules", "LM999").exit_code == 2
    assert _run(lint_app).exit_code == 2


def test_cli_conversation_json_and_unparsable(lint_app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "edda.yaml"
    path.write_text(_YAML, encoding="utf-8")
    result = _run(lint_app, str(path), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["summary"] == {"files": 1, "issues": 4, "errors": 0, "warnings": 4, "fixed": 0,
                               "unusable": 0, "skipped": 0}
    issues = data["files"][0]["issues"]
    assert [(i["rule"], i["message_index"], i["start"], i["location"]) for i in issues] == [
        ("LM004", 0, 14, "message 0:14"), ("LM003", 0, 15, "message 0:15"),
        ("LM002", 0, 21, "message 0:21"), ("LM004", 0, 29, "message 0:29")]
    broken = tmp_path / "broken.yaml"
    broken.write_text("character: [unclosed\n", encoding="utf-8")
    result = _run(lint_app, str(broken), "--fix")
    assert result.exit_code == 2
    assert broken.read_text(encoding="utf-8") == "character: [unclosed\n"  # never written


def test_cli_fix_txt_exact(lint_app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "prose.txt"
    path.write_text("\u201cWait \u2026\u201d  she said , softly.\n*She smiled at him.*\n",
                    encoding="utf-8")
    result = _run(lint_app, str(path), "--fix")
    assert path.read_text(encoding="utf-8") == \
        '"Wait..." she said, softly.\n*She smiled at him.*\n'
    assert result.exit_code == 1  # the asterisk action has no safe fix and is still reported
    assert result.stdout == (f"{path}:2:1 LM030 warning action in asterisks: asterisks are "
                             "for sounds (*thud*); write the action as plain narration\n")
    assert f"{path}: fixed 6 issue(s)" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["prose.txt"]  # no temp file left


def test_fix_keeps_crlf_line_endings_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(b'"Hi ," she said.\r\n\r\n"Bye."\r\n')
    path.chmod(0o640)
    report = lint_file(path, fix=True)
    assert (report.fixed, report.findings) == (1, [])
    assert path.read_bytes() == b'"Hi," she said.\r\n\r\n"Bye."\r\n'
    assert path.stat().st_mode & 0o777 == 0o640  # permissions kept


def test_fix_yaml_patches_in_place_keeping_comments(tmp_path: Path) -> None:
    path = tmp_path / "edda.yaml"
    path.write_text(_YAML, encoding="utf-8")
    report = lint_file(path, fix=True)
    assert (report.error, report.fixed, report.note, report.findings) == (None, 4, None, [])
    assert path.read_text(encoding="utf-8") == _YAML.replace(
        "up \u2026 \"Who\u2019s there ?\"", "up... \"Who's there?\"")


_HEAD = "# kept\ncharacter: {name: Edda}\nuser: Corin\nmessages:\n"


@pytest.mark.parametrize(("message", "fixed"), [
    ("- {role: char, text: 'It\u2019s late .'}", "- {role: char, text: 'It''s late.'}"),
    ('- {role: char, text: "\u201cNo\u201d"}', '- {role: char, text: "\\"No\\""}'),
    ("- role: char\n  text: \u201cNo,\u201d she said.",
     '- role: char\n  text: "\\"No,\\" she said."'),
])
def test_fix_yaml_escapes_or_requotes_scalars(tmp_path: Path, message: str, fixed: str) -> None:
    path = tmp_path / "quoted.yaml"
    path.write_text(_HEAD + message + "\n", encoding="utf-8")
    report = lint_file(path, fix=True)
    assert (report.error, report.note, report.findings) == (None, None, [])
    assert path.read_text(encoding="utf-8") == _HEAD + fixed + "\n"


def test_fix_yaml_falls_back_to_dump_when_patching_cannot_work(tmp_path: Path) -> None:
    path = tmp_path / "escaped.yaml"
    path.write_text(_HEAD + '  - {role: char, text: "It\\u2019s late."}\n', encoding="utf-8")
    report = lint_file(path, fix=True)
    assert report.note == "rewritten from the data (YAML comments and layout not kept)"
    expected = _conv_io.load_yaml(path)
    assert expected.messages[0].text == "It's late."
    assert path.read_text(encoding="utf-8") == _conv_io.dump_yaml(expected)


def test_fix_jsonl_reports_conversation_index(tmp_path: Path) -> None:
    record = {"character": {"name": "Edda"}, "user": "Corin",
              "messages": [{"role": "char", "text": "Hi ."}]}
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    report = lint_file(path)
    assert [f.location() for f in report.findings] == ["conversation 0:message 0:2",
                                                      "conversation 1:message 0:2"]
    assert lint_file(path, fix=True).fixed == 2
    assert path.read_text(encoding="utf-8").count('"Hi."') == 2


def test_fix_is_atomic_when_the_write_fails(lint_app: typer.Typer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "edda.yaml"
    path.write_text(_YAML, encoding="utf-8")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    result = _run(lint_app, str(path), "--fix")
    assert result.exit_code == 2
    assert "cannot write" in result.stderr and "the file is unchanged" in result.stderr
    assert path.read_text(encoding="utf-8") == _YAML
    assert [p.name for p in tmp_path.iterdir()] == ["edda.yaml"]


def test_folder_walk_sheets_and_cards(lint_app: typer.Typer, tmp_path: Path,
                                      shared_dir: Path) -> None:
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("bad , text", encoding="utf-8")
    (tmp_path / "notes.md").write_text("bad , text", encoding="utf-8")
    (tmp_path / "sheet.txt").write_text("Edda\nShe walks the cliffs\u2026\nScenario: Night.",
                                        encoding="utf-8")
    assert [p.name for p in iter_files([tmp_path])] == ["sheet.txt"]
    [report] = [lint_file(p) for p in iter_files([tmp_path])]
    assert [f.issue.rule for f in report.findings] == ["LM003"]  # no present-tense warning
    card = shared_dir / "testdata" / "cards" / "default_Seraphina.png"
    card_report = lint_file(card)
    assert card_report.kind == "card"
    assert [f.location() for f in card_report.findings] == [
        "first_mes:0", "first_mes:280", "first_mes:580"]


def test_cli_list_rules(lint_app: typer.Typer) -> None:
    result = _run(lint_app, "--list-rules")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == ("LM001 curly-double-quote warning (fixable): "
                                             "Typographic double quotes; dialogue uses ASCII '\"'.")
    assert len(result.stdout.splitlines()) == len(RULES)


# --------------------------------------------------------------------------- properties

_MARKUP = st.text(alphabet="aB 1.\"'_*\n", max_size=50)


@settings(max_examples=300, deadline=None)
@given(_MARKUP)
def test_split_spans_cover_the_text_contiguously(text: str) -> None:
    spans = split_spans(text)
    assert "".join(s.text for s in spans) == text
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))
    assert all(s.text == text[s.start:s.end] and s.text for s in spans)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aB sheat.\"*\n", max_size=50))
def test_from_asterisk_style_keeps_words_and_leaves_no_action(text: str) -> None:
    converted = from_asterisk_style(text)
    assert [c for c in converted if c.isalnum()] == [c for c in text if c.isalnum()]
    assert [i for i in lint(converted, rules=["LM030"])
            if " " in converted[i.start:i.end].strip("*")] == []  # one-word actions stay
    assert from_asterisk_style(converted) == converted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab \n.,!?:\"'#-\u201c\u201d\u2019\u2026", min_size=1,
                        max_size=30).filter(lambda t: t.strip("\n")), min_size=1, max_size=3),
       st.sampled_from([".yaml", ".jsonl"]))
def test_fix_result_always_equals_normalize_conversation(texts: list[str], suffix: str) -> None:
    conv = _conversation(*(("char", t.strip("\n")) for t in texts))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"c{suffix}"
        body = (_conv_io.dump_yaml(conv) if suffix == ".yaml"
                else _conv_io.dumps_jsonl([conv, conv]))
        path.write_text(body, encoding="utf-8")
        report = lint_file(path, fix=True, rules=list(TYPOGRAPHY_RULES))
        assert report.error is None
        expected = normalize_conversation(conv)[0]
        assert _conv_io.load(path) == ([expected] if suffix == ".yaml" else [expected] * 2)


def test_lint_skips_files_that_are_neither_conversations_nor_cards(tmp_path):
    from typer.testing import CliRunner

    from limamono.cards import png
    from limamono.cli import app

    (tmp_path / "demo.yaml").write_text("data: conversations\nlora_r: 8\n")
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    (tmp_path / "loss.png").write_bytes(png.placeholder_png())
    (tmp_path / "c.yaml").write_text("character: {name: Mira}\nuser: Tom\nmessages:\n"
                                     "  - {role: char, text: Mira nodded.}\n")
    result = CliRunner().invoke(app, ["lint", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{tmp_path / 'demo.yaml'}: not a conversation, so it is skipped (it has none of "
        "character, user, messages)",
        f"{tmp_path / 'loss.png'}: no character card in this PNG (no 'chara' or 'ccv3' text "
        "chunk), so it is skipped",
        f"{tmp_path / 'tokenizer_config.json'}: not a character card: no 'spec' and no 'name' "
        "field, so it is skipped",
        "0 issue(s) (0 error(s), 0 warning(s)) in 4 file(s); 3 skipped"]
