"""Training samples: a rendered conversation as labelled pieces, token ids and loss labels.

The mask policy (SPEC §6, ``train_on_inputs: false``) lives here and only here:

- masked: BOS (when the tokenizer uses one), the trigger phrase and the Instruction block,
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

Pieces are tokenised one by one (``add_special_tokens=False``) and the ids concatenated,
exactly as Axolotl reads ``type: input_output`` segments, so the JSONL the builder writes
and the token ids it writes give the same masks by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from limamono import format as fmt
from limamono.conversation import Conversation

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
            bos: str | None = None, eos: str | None = None) -> list[Piece]:
    """The pieces of a sample holding the system block and turns ``start .. end-1``.

    Args:
        lay: the rendered conversation.
        start: first turn in the sample.
        end: one past the last turn.
        trained: turns whose character text is trained (default: all in the sample);
            the others are context only (a window's overlap).
        end_of_turn: ``header`` or ``eos`` (see the module docstring).
        train_on_inputs: train every token (the LimaRP "completion" style).
        bos: BOS text to put first (masked), when the tokenizer's convention has one.
        eos: the EOS token text (needed for ``end_of_turn="eos"``).
    """
    if end_of_turn not in END_OF_TURN:
        raise ValueError(f"end_of_turn must be one of {', '.join(END_OF_TURN)}, "
                         f"got {end_of_turn!r}")
    if end_of_turn == "eos" and not eos:
        raise ValueError("end_of_turn='eos' needs a tokenizer with an EOS token")
    chosen = set(range(start, end)) if trained is None else trained
    pieces = [Piece(bos, False)] if bos else []
    pieces.append(Piece(lay.system, False))
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
class PieceTokenizer:
    """Tokenises pieces one at a time, caching ids per text (headers repeat a lot)."""

    tokenizer: Tokenizer
    cache: dict[str, list[int]] = field(default_factory=dict)

    def ids(self, text: str) -> list[int]:
        """Token ids of one piece, without special tokens added."""
        if text not in self.cache:
            self.cache[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.cache[text]

    def count(self, pieces: Sequence[Piece]) -> int:
        """Total tokens of the pieces."""
        return sum(len(self.ids(p.text)) for p in pieces)

    def encode(self, pieces: Sequence[Piece]) -> tuple[list[int], list[int]]:
        """Input ids and labels (-100 where a piece is not trained)."""
        input_ids: list[int] = []
        labels: list[int] = []
        for piece in pieces:
            ids = self.ids(piece.text)
            input_ids += ids
            labels += ids if piece.label else [IGNORE_INDEX] * len(ids)
        return input_ids, labels


def bos_text(tokenizer: Tokenizer) -> str | None:
    """The BOS text to start samples with, if the tokenizer adds BOS when encoding.

    SmolLM2's tokenizer adds none; Llama and Mistral tokenizers add ``<s>``.
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return None
    ids = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    return tokenizer.bos_token if ids[:1] == [bos_id] else None


def truncate(pieces: Sequence[Piece], tok: PieceTokenizer, max_tokens: int) -> list[Piece]:
    """The longest prefix of ``pieces`` within ``max_tokens`` tokens.

    The piece that crosses the limit is cut to the decoded text of its first tokens,
    shortened until it tokenises back to exactly those ids, so the segments and the ids
    still agree.
    """
    out: list[Piece] = []
    used = 0
    for piece in pieces:
        ids = tok.ids(piece.text)
        if used + len(ids) <= max_tokens:
            out.append(piece)
            used += len(ids)
            continue
        keep = max_tokens - used
        while keep > 0:
            text = tok.tokenizer.decode(ids[:keep])
            if tok.ids(text) == ids[:keep]:
                out.append(Piece(text, piece.label))
                break
            keep -= 1
        break
    return out
