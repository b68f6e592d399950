"""Split house-style prose into narration, dialogue, thoughts, sounds and titles.

The house style (SPEC §3) marks everything that is not narration with a delimiter:
``"dialogue"``, ``_thoughts_``, ``*sounds*`` and ``''titles''``. The chat display colours
these spans, the evaluation counts them, and the linter checks that they are balanced, so
the one scanner lives here.

Decisions (documented because the style leaves them open):

- A paragraph is a block of lines separated by a blank line. Delimiters pair only inside a
  paragraph, so one missing closing quote cannot swallow the rest of a message.
- A span whose paragraph ends before its closing delimiter runs to the end of the
  paragraph with ``closed=False``: streamed text is displayed sensibly while the model is
  still writing the dialogue.
- A single apostrophe never delimits anything (``don't``, ``the cats' bowls``); only two
  apostrophes in a row open or close a title.
- ``_`` and ``*`` delimit only at word edges: an opening one is not preceded by a letter or
  digit and is followed by a non-space; a closing one follows a non-space and is not followed
  by a letter or digit. So ``snake_case``, ``2*3`` and a ``* * *`` scene break stay literal,
  and so do runs of two or more (``____``, ``**bold**``).
- Inside a span only its own closing delimiter is looked for (no nesting).
- Only ASCII ``"`` delimits dialogue; curly quotes are a lint finding that ``normalize``
  fixes first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SpanKind = Literal["narration", "dialogue", "thought", "sound", "title"]

#: The delimiter that opens and closes each kind of span.
DELIMITERS: dict[str, str] = {"dialogue": '"', "thought": "_", "sound": "*", "title": "''"}

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")  # CRLF text too
_CANDIDATE = re.compile("[\"'_*]")


@dataclass(frozen=True)
class Span:
    """A run of text of one kind.

    Attributes:
        kind: ``narration``, ``dialogue`` (``"..."``), ``thought`` (``_..._``), ``sound``
            (``*...*``; actions written the chat-RP way are sounds here too, see
            ``limamono.style.convert.is_action``) or ``title`` (``''...''``).
        text: the span exactly as written, delimiters included, so that joining the texts
            of all spans gives back the input.
        start: character offset of the span in the input.
        end: offset just past the span.
        closed: False when the paragraph ended before the closing delimiter.
    """

    kind: SpanKind
    text: str
    start: int
    end: int
    closed: bool = True

    @property
    def inner(self) -> str:
        """The text without its delimiters (narration is returned as is)."""
        if self.kind == "narration":
            return self.text
        size = len(DELIMITERS[self.kind])
        return self.text[size:len(self.text) - size] if self.closed else self.text[size:]


def paragraphs(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets of the paragraphs of ``text`` (blank-line separated)."""
    out: list[tuple[int, int]] = []
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        out.append((start, match.start()))
        start = match.end()
    out.append((start, len(text)))
    return out


def split_spans(text: str) -> list[Span]:
    """Split prose into spans of narration, dialogue, thought, sound and title.

    Adjacent narration (including the blank lines between paragraphs) is merged, so the
    spans cover the text without gaps: ``"".join(s.text for s in spans) == text``.

    Args:
        text: one message (or any prose) in the house style.

    Returns:
        The spans in order; an empty list for empty text.

    Example:
        >>> [(s.kind, s.text) for s in split_spans('Mo said "Hi." _Ha!_')]
        [('narration', 'Mo said '), ('dialogue', '"Hi."'), ('narration', ' '), ('thought', '_Ha!_')]
    """
    raw: list[Span] = []
    for p_start, p_end in paragraphs(text):
        raw.extend(_scan_paragraph(text, p_start, p_end))
    return _fill_narration(text, raw)


def delimiter_kind(text: str, i: int) -> tuple[SpanKind, int] | None:
    """The span kind an opening delimiter at ``text[i]`` would start, and its length."""
    ch = text[i]
    if ch == '"':
        return "dialogue", 1
    if text.startswith("''", i):
        return "title", 2
    if ch == "_" and _can_open(text, i):
        return "thought", 1
    if ch == "*" and _can_open(text, i):
        return "sound", 1
    return None


def stray_closers(text: str, spans: list[Span] | None = None) -> list[int]:
    """Offsets of ``_`` and ``*`` shaped like a closing delimiter with nothing open.

    Example: in ``she thought_ nothing`` the underscore closes a thought that never opened.

    Args:
        text: the prose.
        spans: ``split_spans(text)``, when the caller has it already.
    """
    out = []
    for span in split_spans(text) if spans is None else spans:
        if span.kind != "narration":
            continue
        for m in re.finditer("[_*]", span.text):
            i = span.start + m.start()
            if _can_close(text, i) and not _can_open(text, i):
                out.append(i)
    return out


def _scan_paragraph(text: str, start: int, end: int) -> list[Span]:
    """The delimited spans of one paragraph (narration between them is left out)."""
    out: list[Span] = []
    i = start
    while i < end:
        # Jump to the next character that could be a delimiter (the scan is per message, on
        # every generated reply in evaluation, so it should not step through every letter).
        candidate = _CANDIDATE.search(text, i, end)
        if candidate is None:
            break
        i = candidate.start()
        found = delimiter_kind(text, i)
        if found is None:
            i += 1
            continue
        kind, size = found
        close = _find_closer(text, kind, i + size, end)
        if close is None:
            out.append(Span(kind, text[i:end], i, end, closed=False))
            break
        stop = close + size
        out.append(Span(kind, text[i:stop], i, stop))
        i = stop
    return out


def _find_closer(text: str, kind: SpanKind, start: int, end: int) -> int | None:
    """Offset of the delimiter that closes a ``kind`` span opened just before ``start``."""
    delimiter = DELIMITERS[kind]
    j = text.find(delimiter, start, end)
    while j != -1:
        if kind in ("dialogue", "title") or _can_close(text, j):
            return j
        j = text.find(delimiter, j + 1, end)
    return None


def _fill_narration(text: str, spans: list[Span]) -> list[Span]:
    """Insert narration spans into the gaps between delimited spans."""
    out: list[Span] = []
    pos = 0
    for span in spans:
        if span.start > pos:
            out.append(Span("narration", text[pos:span.start], pos, span.start))
        out.append(span)
        pos = span.end
    if pos < len(text):
        out.append(Span("narration", text[pos:], pos, len(text)))
    return out


def _in_run(text: str, i: int) -> bool:
    """True when ``text[i]`` is part of a run of two or more identical characters."""
    ch = text[i]
    return (i > 0 and text[i - 1] == ch) or (i + 1 < len(text) and text[i + 1] == ch)


def _can_open(text: str, i: int) -> bool:
    """Whether the ``_`` or ``*`` at ``i`` can open a span (it starts a word)."""
    if _in_run(text, i):
        return False
    before_ok = i == 0 or not text[i - 1].isalnum()
    return before_ok and i + 1 < len(text) and not text[i + 1].isspace()


def _can_close(text: str, i: int) -> bool:
    """Whether the ``_`` or ``*`` at ``i`` can close a span (it ends a word)."""
    if _in_run(text, i):
        return False
    after_ok = i + 1 == len(text) or not text[i + 1].isalnum()
    return after_ok and i > 0 and not text[i - 1].isspace()


#: A sentence end: ``.``, ``!`` or ``?`` (runs included), then any closing delimiters, then
#: white space or the end of the text. Evaluation finds the complete part of a cut reply
#: with it, and the soft landing (``limamono.engine.landing``) steers towards it.
SENTENCE_END = re.compile(r"[.!?][\"_*']*(?=\s|$)")


def open_span(text: str) -> SpanKind | None:
    """The kind of the span still open at the end of ``text`` (its last paragraph), or None.

    Streamed text is judged as ``split_spans`` judges it: ``'He said "Wait'`` ends inside
    dialogue, ``'_Maybe'`` inside a thought; ``'a_'`` (a lone closer) opens nothing.
    """
    spans = split_spans(text)
    last = spans[-1] if spans else None
    if last is None or last.closed or last.kind == "narration" or last.end != len(text):
        return None
    return last.kind


def ends_sentence(text: str) -> bool:
    """Whether ``text`` (trailing white space aside) ends at a sentence end with no span
    left open: ``'She nodded. "Yes."'`` does; ``'"Yes.'`` and ``'She nodded'`` do not."""
    body = text.rstrip()
    if not body:
        return False
    ends = [m.end() for m in SENTENCE_END.finditer(body)]
    return bool(ends) and ends[-1] == len(body) and open_span(body) is None
