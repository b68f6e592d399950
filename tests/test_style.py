"""Tests for limamono.style: spans, the asterisk converter, lint rules, normalize, the CLI."""

from __future__ import annotations

import pytest

from limamono.style import Span, from_asterisk_style, is_action, split_spans

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
    ("*sighs* Fine.", "*sighs* Fine."),
    ("*She left", "*She left"),
])
def test_from_asterisk_style(source: str, expected: str) -> None:
    assert from_asterisk_style(source) == expected


def test_is_action_thresholds() -> None:
    assert not is_action("knock knock knock knock")
    assert is_action("tap drip ding bang")
    assert not is_action("tap drip ding")
    assert is_action("tap drip ding bang", max_sound_words=3)
    assert not is_action("tap drip ding bang", max_sound_words=4)
    assert is_action("looks at you")
    with pytest.raises(ValueError, match="max_sound_words must be at least 1"):
        is_action("x", max_sound_words=0)
