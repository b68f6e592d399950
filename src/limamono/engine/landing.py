"""Soft landing: a reply nearing its token budget is steered to end at a sentence end with
its dialogue or thought closed, instead of being cut mid-sentence with a ``"`` still open.

The stage runs inside the sampler chain (``limamono.samplers.chain``, right after logit
bias and bans) on both engines, because both use the one decode loop (``engine.loop``). It
lives here, not in ``samplers/``, because it reads the reply's text with the house style's
span scanner (``limamono.style.spans``: what is open, where a sentence ends), and the
layers keep ``samplers/`` and ``style/`` apart.

With ``r`` tokens left in the budget (the one about to be sampled included) and a window of
``w = window(budget)`` tokens:

- ``r > w``: nothing; the candidates are not touched (exactly zero effect), so a reply that
  ends on its own before the window is the same token for token.
- At a landing point (the text ends a sentence, nothing open): end-of-reply tokens (EOS and
  newline-only pieces, the start of the next header) get ``+bias``; with ``r <= FORCE_EOS``
  left, EOS is the only candidate.
- Inside a sentence: tokens that end a sentence (``.``, ``!``, ``?``, possibly with a
  closing delimiter: ``spans.SENTENCE_END``'s marks) get ``+bias``; after the sentence's
  punctuation inside an open span, the span's closing delimiter gets it instead.
- Forcing, in the last tokens: when ``r`` is at most one more than what the closing still
  needs (a full stop if the sentence has none, then the open span's delimiter), only those
  tokens remain. (Forcing only at exactly that count let a free token add a word after the
  full stop, ``"Four. Fif.``, which then could not be closed.)

``bias`` grows linearly from ``MAX_BIAS / w`` at the window's start to ``MAX_BIAS`` at its
last token. A forced or favoured token that a ban removed stays removed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from limamono.samplers.candidates import Candidates, Stage
from limamono.samplers.vocab import Vocabulary
from limamono.style.spans import DELIMITERS, ends_sentence, open_span

#: The window is an eighth of the budget, at least ``MIN_WINDOW`` and at most ``MAX_WINDOW``
#: tokens (a ``long`` reply's 384-token budget: 48).
MIN_WINDOW, MAX_WINDOW, WINDOW_SHARE = 8, 48, 1 / 8
#: The largest logit bias, at the window's last token (e^6: about 400 times the odds).
MAX_BIAS = 6.0
#: At a landing point with this many tokens left, the reply ends (EOS is forced).
FORCE_EOS = 4
#: The full stop forced when a sentence must end now.
FULL_STOP = "."

_SENTENCE_PIECE = re.compile(r"^\s*\S*[.!?][\"_*']*$")
_NEWLINES = re.compile(r"^\n+$")


def window(budget: int) -> int:
    """Tokens before the budget's end in which the stage acts."""
    return max(MIN_WINDOW, min(MAX_WINDOW, math.ceil(budget * WINDOW_SHARE)))


@dataclass(frozen=True)
class LandingTokens:
    """The token classes of one vocabulary that the stage favours or forces."""

    sentence_end: torch.Tensor  # pieces that end a sentence (``.``, ``!"``, `` ?``...)
    end_of_reply: torch.Tensor  # EOS and newline-only pieces
    eos: torch.Tensor
    full_stop: torch.Tensor  # pieces exactly ``.``
    closers: dict[str, torch.Tensor]  # delimiter -> pieces exactly it

    @staticmethod
    def of(vocab: Vocabulary) -> LandingTokens:
        """The classes of ``vocab`` (built once per vocabulary and cached on it)."""
        def build() -> LandingTokens:
            pieces = vocab.pieces
            def ids(keep: Callable[[str], bool]) -> torch.Tensor:
                return torch.tensor([i for i, p in enumerate(pieces) if keep(p)],
                                    dtype=torch.long)
            eos = torch.tensor(sorted(vocab.eos_ids), dtype=torch.long)
            newlines = ids(lambda p: bool(_NEWLINES.match(p)))
            return LandingTokens(
                sentence_end=ids(lambda p: bool(_SENTENCE_PIECE.match(p))),
                end_of_reply=torch.unique(torch.cat([eos, newlines])), eos=eos,
                full_stop=ids(lambda p: p == FULL_STOP),
                closers={d: ids(d.__eq__) for d in set(DELIMITERS.values())})
        built: LandingTokens = vocab.cached("soft_landing", build)
        return built


def _punctuated(text: str) -> bool:
    """Whether ``text`` ends with a sentence's punctuation (delimiters after it aside)."""
    return bool(re.search(r"[.!?]$", text.rstrip().rstrip("\"_*'")))


def soft_landing_stage(vocab: Vocabulary, prompt_length: int, budget: int,
                       reply_text: Callable[[Sequence[int]], str]) -> Stage:
    """The stage for one generation of at most ``budget`` tokens after ``prompt_length``
    prompt tokens; ``reply_text`` turns reply ids into text (the engine's)."""
    span = window(budget)
    tokens = LandingTokens.of(vocab)

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        left = budget - (context_ids.numel() - prompt_length)
        if left > span or left < 1:
            return
        reply = context_ids[prompt_length:].tolist()
        text = reply_text(reply)
        bias = MAX_BIAS * (span - left + 1) / span
        if ends_sentence(text):
            if left <= FORCE_EOS and _force(cands, tokens.eos):
                return
            _favour(cands, tokens.end_of_reply, bias)
            return
        kind = open_span(text)
        closing = tokens.closers.get(DELIMITERS[kind]) if kind is not None else None
        punctuated = _punctuated(text)
        needed = (0 if punctuated else 1) + (1 if kind is not None else 0)
        # One token of slack: at ``needed + 1`` left, a free token could add a word after
        # the full stop (``"Four. Fif``), needing one more than remains; forcing from
        # there closes every capped reply (the spare token then ends it at the landing).
        if needed and left <= needed + 1:
            forced, wanted = (closing, DELIMITERS[kind]) if punctuated and kind is not None \
                else (tokens.full_stop, FULL_STOP)
            # Only pieces that add exactly that character here (a SentencePiece ``▁"`` adds
            # a space too, and a thought's ``_`` does not close after a space).
            exact = [int(i) for i in (forced if forced is not None else [])
                     if reply_text([*reply, int(i)]) == text + wanted]
            if exact and _force(cands, torch.tensor(exact, dtype=torch.long)):
                return
        if closing is not None and punctuated:
            _favour(cands, closing, bias)
        else:
            _favour(cands, tokens.sentence_end, bias)
    return stage


def _alive(cands: Candidates, ids: torch.Tensor) -> torch.Tensor:
    """The ``ids`` still candidates (in range, not removed, finite)."""
    ids = ids[ids < cands.vocab]
    if cands.ids is not None or cands.m < cands.vocab:
        ids = ids[torch.isin(ids, cands.survivor_ids())]
    return ids[torch.isfinite(cands.logits[ids])]


def _force(cands: Candidates, ids: torch.Tensor) -> bool:
    """Keep only ``ids`` (those still candidates); False, changing nothing, if none is."""
    alive = _alive(cands, ids)
    if not alive.numel():
        return False
    cands.changed_logits()
    cands.keep_ids(alive)
    return True


def _favour(cands: Candidates, ids: torch.Tensor, bias: float) -> None:
    alive = _alive(cands, ids)
    if alive.numel():
        cands.changed_logits()
        cands.logits[alive] += bias
