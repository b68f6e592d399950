"""Training samples: a rendered conversation as labelled pieces, token ids and loss labels.

The mask policy (SPEC §6, ``train_on_inputs: false``) lives here and only here:

- masked: BOS (when the tokenizer adds one), the trigger phrase and the Instruction block,
  every Input turn (header, ``Name:``, text), every Response header and ``{char}:`` prefix;
- trained: the text of each character turn (it starts with its space), then the
  end-of-turn signal:

  - ``header`` (default): the first tokens of the next turn's header, ``\\n\\n###``. The
    next header segment is split into ``\\n\\n###`` (trained) and the rest, e.g.
    `` Response: (length = long)\\n`` (masked). After the last character turn of a sample,
    a lone ``\\n\\n###`` is appended and trained, so the model always learns to close its
    turn by starting a header, which the ``###`` stop string then catches.
  - ``eos``: the tokenizer's EOS token follows each character text and is trained; the
    EOS then also sits in the input ids in front of the next header.

Token identity (``limamono.models.tokens``): a sample's pieces are joined and tokenised whole, in
one call, with BOS first where the tokenizer's convention puts one, exactly as the engine
tokenises a prompt; a token's label comes from the pieces its characters belong to (the
tokenizer's offsets). Tokenising piece by piece would not do: SentencePiece tokenizers
(Mistral, Llama) put a ``▁`` at the start of every separate call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal, Protocol

from limamono.core import format as fmt
from limamono.core.conversation import Conversation
from limamono.models import tokens

#: Label of tokens that do not count in the loss (PyTorch's cross-entropy ignore index).
IGNORE_INDEX = -100

EndOfTurn = Literal["header", "eos"]
END_OF_TURN: tuple[str, ...] = ("header", "eos")

#: The start of every header: what the model writes to end its turn (policy ``header``).
END_SIGNAL = fmt.BLOCK_SEP + fmt.HEADER_STOP


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the builder uses."""

    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...


@dataclass(frozen=True)
class Piece:
    """A span of a sample's text and whether its tokens are trained."""

    text: str
    label: bool


@dataclass(frozen=True)
class Turn:
    """The rendered pieces of one message: header (split for the end signal), name, text."""

    role: str
    header: str
    name: str
    text: str


@dataclass(frozen=True)
class Layout:
    """A conversation rendered once: the system block and one ``Turn`` per message."""

    system: str
    turns: tuple[Turn, ...]


def layout(conversation: Conversation, trigger: str = fmt.DEFAULT_TRIGGER) -> Layout:
    """Render a conversation (through ``format.render_segments``) into per-turn pieces.

    Raises:
        FormatError: a turn cannot be rendered (e.g. it contains a header line).
    """
    segments = fmt.render_segments(conversation, trigger=trigger)
    system = "".join(s.text for s in segments if s.kind == "system")
    parts: dict[int, dict[str, str]] = {}
    roles: dict[int, str] = {}
    for seg in segments:
        if seg.index is not None:
            parts.setdefault(seg.index, {})[seg.kind] = seg.text
            roles[seg.index] = str(seg.role)
    turns = tuple(Turn(roles[i], p["header"], p["name"], p["text"])
                  for i, p in sorted(parts.items()))
    return Layout(system, turns)


def compose(lay: Layout, start: int, end: int, trained: set[int] | None = None,
            end_of_turn: EndOfTurn = "header", train_on_inputs: bool = False,
            eos: str | None = None) -> list[Piece]:
    """The pieces of a sample holding the system block and turns ``start .. end-1``.

    Args:
        lay: the rendered conversation.
        start: first turn in the sample.
        end: one past the last turn.
        trained: turns whose character text is trained (default: all in the sample);
            the others are context only (a window's overlap).
        end_of_turn: ``header`` or ``eos`` (see the module docstring).
        train_on_inputs: train every token (the LimaRP "completion" style).
        eos: the EOS token text (needed for ``end_of_turn="eos"``).
    """
    if end_of_turn not in END_OF_TURN:
        raise ValueError(f"end_of_turn must be one of {', '.join(END_OF_TURN)}, "
                         f"got {end_of_turn!r}")
    if end_of_turn == "eos" and not eos:
        raise ValueError("end_of_turn='eos' needs a tokenizer with an EOS token")
    chosen = set(range(start, end)) if trained is None else trained
    pieces = [Piece(lay.system, False)]
    previous_trained = False  # was the turn before this one a trained character turn?
    for i in range(start, end):
        turn = lay.turns[i]
        if end_of_turn == "header":
            # The header starts with the end signal of the turn before it.
            head, rest = turn.header[:len(END_SIGNAL)], turn.header[len(END_SIGNAL):]
            pieces += [Piece(head, previous_trained), Piece(rest, False)]
        else:
            pieces.append(Piece(turn.header, False))
        is_trained = turn.role == "char" and i in chosen
        pieces += [Piece(turn.name, False), Piece(turn.text, is_trained)]
        if end_of_turn == "eos" and turn.role == "char":
            pieces.append(Piece(str(eos), is_trained))
        previous_trained = is_trained
    if end_of_turn == "header" and end > start and lay.turns[end - 1].role == "char":
        pieces.append(Piece(END_SIGNAL, previous_trained))
    if train_on_inputs:
        pieces = [Piece(p.text, True) for p in pieces]
    return pieces


@dataclass
class SampleTokenizer:
    """Tokenises a sample's pieces as one text (see the module docstring).

    The newest encodings are kept (windowing measures the same sample text again when it
    builds it), at most ``cache_size`` of them.
    """

    tokenizer: Tokenizer
    cache_size: int = 64
    _cache: OrderedDict[str, tuple[list[int], list[tokens.Span]]] = field(
        default_factory=OrderedDict, repr=False)
    _start: list[int] | None = field(default=None, repr=False)

    def start_ids(self) -> list[int]:
        """The ids the tokenizer puts before any text (its BOS, or none)."""
        if self._start is None:
            self._start = tokens.start_ids(self.tokenizer)
        return self._start

    def text(self, text: str) -> tuple[list[int], list[tokens.Span]]:
        """Ids of a whole text (BOS first when the tokenizer adds one) and their spans."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        found = tokens.encode_spans(self.tokenizer, text, self.start_ids())
        self._cache[text] = found
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def count(self, pieces: Sequence[Piece]) -> int:
        """Tokens of the sample the pieces make."""
        return len(self.text(join(pieces))[0])

    def encode(self, pieces: Sequence[Piece]) -> tuple[list[int], list[int]]:
        """Input ids and labels (-100 where no character of a token is trained).

        A token is trained when any of its characters is in a trained piece; the ids
        before the text (BOS) are never trained.
        """
        ids, spans = self.text(join(pieces))
        # trained_before[i]: trained characters in text[:i]
        trained_before = [0, *accumulate(int(p.label) for p in pieces for _ in p.text)]
        last = len(trained_before) - 1
        n_start = len(self.start_ids())
        labels = [IGNORE_INDEX] * n_start
        for token, (a, b) in zip(ids[n_start:], spans[n_start:], strict=True):
            b = min(max(b, a + 1), last)  # a zero-width token: the character at it
            labels.append(token if trained_before[b] > trained_before[a] else IGNORE_INDEX)
        return ids, labels


def join(pieces: Sequence[Piece]) -> str:
    """The text of a sample: its pieces' texts, in order."""
    return "".join(p.text for p in pieces)


def cut(pieces: Sequence[Piece], chars: int) -> list[Piece]:
    """The pieces of the first ``chars`` characters of a sample (the last one shortened)."""
    out: list[Piece] = []
    for piece in pieces:
        if chars <= 0:
            break
        out.append(piece if len(piece.text) <= chars else Piece(piece.text[:chars], piece.label))
        chars -= len(piece.text)
    return out


def truncate(pieces: Sequence[Piece], tok: SampleTokenizer, max_tokens: int) -> list[Piece]:
    """The longest prefix of the sample (cut after a whole token) within ``max_tokens``.

    The text is cut after the last token that fits; the cut text is tokenised again (its
    last token may tokenise differently alone) and cut one token earlier while it is still
    too long, so the segments and the ids still agree.
    """
    ids, spans = tok.text(join(pieces))
    n_start = len(tok.start_ids())
    keep = min(max_tokens, len(ids))
    if keep == len(ids):
        return list(pieces)
    while keep > n_start:
        shorter = cut(pieces, spans[keep - 1][1])
        if tok.count(shorter) <= max_tokens:
            return shorter
        keep -= 1
    return []
