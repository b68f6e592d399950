"""DRY ("don't repeat yourself"): penalise the token that would extend an earlier repeat.

For each earlier occurrence of the context's last token, the repeat ending there is the
longest run of tokens that also ends the context; the token that followed it would extend
the repeat. A repeat of length ``L >= allowed_length`` costs that token
``multiplier * base ** (L - allowed_length)`` off its logit (the longest repeat counts).

Two dialects, from the reference sources:

- ``textgen`` (text-generation-webui ``DRYLogitsProcessor``, ``modules/sampler_hijack.py``):
  a breaker is one token; nothing is penalised when the last token is a breaker; a repeat
  stops at a breaker and at 50 tokens; a token that is itself a breaker is never penalised.
  The window is ``repetition_penalty_range`` (0: everything).
- ``koboldcpp`` (KoboldCpp ``sample_dry``, ``gpttype_adapter.cpp``): breakers may span
  several tokens (head token + tails, see ``Vocabulary.koboldcpp_breakers``); the last
  breaker in the window limits every repeat to the tokens after it; nothing happens when
  that limit or the window is not longer than ``allowed_length``; the exponent is clamped
  so that ``base ** exponent`` stays finite in float32. The window is ``dry_penalty_last_n``
  (0: everything).

Cost: linear in the window. Only positions holding the last token can start a repeat
(found in one vectorised comparison); their repeats are extended backwards together, one
vectorised step per token of length, and the length is capped where the penalty stops
changing (50 for textgen, ``allowed_length + max exponent`` for KoboldCpp), so a window of
n tokens costs O(n * cap) elementwise work and at most ``cap`` Python steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from limamono.samplers.vocab import BreakerTable

#: text-generation-webui stops extending a repeat at this length.
TEXTGEN_MAX_REPEAT = 50
#: KoboldCpp: log of float32's largest value; bounds the exponent of the base.
FLOAT_MAX_LOG = 88.7228391


def dry_penalties(window: np.ndarray, breakers: BreakerTable, multiplier: float, base: float,
                  allowed_length: int, dialect: str) -> tuple[np.ndarray, np.ndarray]:
    """The DRY penalty of each token it touches: (token ids, amounts to subtract).

    Args:
        window: 1-D int64, the context tokens DRY looks at (oldest first).
        breakers: Head token -> tails (see ``limamono.samplers.vocab``).
        multiplier: > 0 (0 is off and returns nothing).
        base: The growth per extra repeated token.
        allowed_length: Repeats shorter than this are free.
        dialect: ``textgen`` or ``koboldcpp`` (see the module docstring).
    """
    empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    n = window.size
    if multiplier <= 0.0 or n < 2:
        return empty
    max_exponent = 0
    if dialect == "koboldcpp":
        if base <= 0.0 or n <= allowed_length:
            return empty
        limit = _koboldcpp_limit(window, breakers)
        if limit <= allowed_length:
            return empty
        if base > 1.000001:
            max_exponent = int(FLOAT_MAX_LOG / math.log(base))
            limit = min(limit, allowed_length + max_exponent)  # longer repeats cost the same
    else:
        limit = min(_textgen_limit(window, breakers), TEXTGEN_MAX_REPEAT)
    if limit < 1:
        return empty
    starts = np.flatnonzero(window[:-1] == window[-1])  # each is a repeat of length >= 1
    lengths = _repeat_lengths(window, starts, limit)
    following = window[starts + 1]
    keep = lengths >= allowed_length
    if dialect == "textgen" and breakers:
        keep &= ~np.isin(following, np.fromiter(breakers, dtype=np.int64))
    tokens, inverse = np.unique(following[keep], return_inverse=True)
    longest = np.zeros(tokens.size, dtype=np.int64)
    np.maximum.at(longest, inverse, lengths[keep])
    exponent = longest - allowed_length
    if max_exponent > 0:
        exponent = np.minimum(exponent, max_exponent)
    with np.errstate(over="ignore"):
        amounts = multiplier * np.power(float(base), exponent.astype(np.float64))
    return tokens, amounts


def _repeat_lengths(window: np.ndarray, starts: np.ndarray, limit: int) -> np.ndarray:
    """For each start ``i`` (``window[i] == window[-1]``): the longest ``L <= limit`` with
    ``window[i-L+1 : i+1] == window[-L:]``, all starts extended together."""
    n = window.size
    lengths = np.ones(starts.size, dtype=np.int64)
    active = np.arange(starts.size)
    length = 1
    while active.size and length < limit:
        back = starts[active] - length
        inside = back >= 0
        active, back = active[inside], back[inside]
        active = active[window[back] == window[n - 1 - length]]
        lengths[active] += 1
        length += 1
    return lengths


def _textgen_limit(window: np.ndarray, breakers: BreakerTable) -> int:
    """Tokens after the last breaker (all of them when there is none)."""
    if not breakers:
        return window.size
    found = np.flatnonzero(np.isin(window, np.fromiter(breakers, dtype=np.int64)))
    return window.size if found.size == 0 else window.size - 1 - int(found[-1])


def _koboldcpp_limit(window: np.ndarray, breakers: BreakerTable) -> int:
    """Tokens after the end of the last complete breaker sequence (KoboldCpp's
    ``rep_limit``): the scan goes backwards from the newest head; the longest tail that
    fits and matches wins."""
    n = window.size
    if not breakers:
        return n
    heads = np.flatnonzero(np.isin(window, np.fromiter(breakers, dtype=np.int64)))
    for ix in heads[::-1].tolist():
        after = n - 1 - ix  # tokens after the head
        longest = -1
        for tail in breakers[int(window[ix])]:
            size = len(tail)
            if longest < size <= after and tuple(window[ix + 1:ix + 1 + size].tolist()) == tail:
                longest = size
        if longest >= 0:
            return after - longest
    return n


def dry_window(context_ids: torch.Tensor, last_n: int) -> np.ndarray:
    """The last ``last_n`` context tokens (0: all) as int64 numpy."""
    window = context_ids[-last_n:] if last_n > 0 else context_ids
    return window.detach().cpu().numpy().astype(np.int64, copy=False)


def apply_dry_(logits: torch.Tensor, context_ids: torch.Tensor, breakers: BreakerTable,
               multiplier: float, base: float, allowed_length: int, last_n: int,
               dialect: str) -> None:
    """In place: subtract the DRY penalties from ``logits`` [vocab]."""
    tokens, amounts = dry_penalties(dry_window(context_ids, last_n), breakers, multiplier,
                                    base, allowed_length, dialect)
    if tokens.size:
        ids = torch.from_numpy(tokens).to(logits.device)
        logits[ids] -= torch.from_numpy(amounts).to(logits.device, logits.dtype)


def dry(context_ids: torch.Tensor, logits: torch.Tensor, multiplier: float, base: float = 1.75,
        allowed_length: int = 2, last_n: int = 0, breakers: BreakerTable | None = None,
        dialect: str = "textgen") -> torch.Tensor:
    """DRY as a pure function: new logits with the penalties subtracted.

    Args:
        context_ids: 1-D int64, prompt and output so far.
        logits: 1-D logits [vocab].
        multiplier: ``dry_multiplier``; 0 is off.
        base: ``dry_base``.
        allowed_length: ``dry_allowed_length`` (>= 1).
        last_n: The window (0: the whole context).
        breakers: Token-level breakers (``Vocabulary.textgen_breakers`` or
            ``koboldcpp_breakers``); None: none.
        dialect: ``textgen`` or ``koboldcpp``.
    """
    from limamono.samplers import functions as F
    from limamono.samplers.settings import SamplerError, check_float, check_int

    F._check_logits(logits)
    F._check_context(context_ids, logits.numel())
    if dialect not in ("textgen", "koboldcpp"):
        raise SamplerError("dialect", dialect, "must be 'textgen' or 'koboldcpp'")
    out = logits.clone()
    apply_dry_(out, context_ids, breakers or {},
               check_float("dry_multiplier", multiplier, 0.0, 100.0),
               check_float("dry_base", base, 0.0, 100.0),
               check_int("dry_allowed_length", allowed_length, 1),
               check_int("dry_penalty_last_n", last_n, 0), dialect)
    return out
