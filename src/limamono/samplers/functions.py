"""The samplers as small pure functions on 1-D logits, and the kernels they share.

Two layers:

- Kernels (``keep_*``) take candidate logits already sorted in descending order and say
  which survive: an ``int`` (a prefix of that many) or a bool mask (typical-p, the one
  sampler that may drop the most likely token, and the one that accepts any order). They
  do not check their arguments; the chain (``limamono.samplers.chain``) calls them after
  ``SamplerSettings`` validated everything, so one sort serves every truncation sampler
  of a token.
- Public functions (``top_k``, ``tail_free``, ``repetition_penalty``, ...) check their own
  arguments, take logits in vocabulary order and return new logits with removed tokens set
  to ``-inf``. They never modify their input and always keep at least one token.

Semantics follow ``shared/reference/sampling_perf.md`` §1-2 and the source comments below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from limamono.samplers.settings import (
    MIN_TEMPERATURE,
    REP_PEN_RANGE,
    SamplerError,
    check_float,
    check_int,
)

Keep = int | torch.Tensor  # a prefix length, or a bool mask over the sorted candidates
TfsVariant = Literal["textgen", "koboldcpp"]

#: llama.cpp/KoboldCpp: below this sum of |second differences| the tail is treated as
#: linear and TFS uses uniform weights instead of dividing by (almost) zero.
TFS_FLAT_SUM = 1e-6


# ----------------------------------------------------------------------------- kernels


def keep_top_k(sorted_logits: torch.Tensor, k: int) -> int:
    """Top-k: the first ``k`` candidates (all when ``k <= 0``)."""
    n = sorted_logits.numel()
    return n if k <= 0 else min(k, n)


def keep_top_p(sorted_logits: torch.Tensor, p: float) -> int:
    """Top-p (nucleus): the smallest prefix whose probability mass reaches ``p``.

    A token is kept when the mass of the tokens before it is still below ``p``; this is
    HF's ``TopPLogitsWarper`` and llama.cpp's rule, stated from the top.
    """
    n = sorted_logits.numel()
    if p >= 1.0:
        return n
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = torch.cumsum(probs, dim=-1)
    # the first index where the mass reaches p is the last one kept
    return min(n, int((cum < p).sum()) + 1)


def keep_min_p(sorted_logits: torch.Tensor, p: float) -> int:
    """Min-p: the candidates with probability >= ``p`` times the top probability.

    Compared in logit space (``l >= l_max + ln p``), which needs no softmax.
    """
    n = sorted_logits.numel()
    if p <= 0.0:
        return n
    threshold = sorted_logits[0] + math.log(p)
    return max(1, int((sorted_logits >= threshold).sum()))


def keep_top_a(sorted_logits: torch.Tensor, a: float) -> int:
    """Top-a: the candidates with probability >= ``a * p_max**2`` (KoboldCpp, TGW)."""
    n = sorted_logits.numel()
    if a <= 0.0:
        return n
    probs = torch.softmax(sorted_logits, dim=-1)
    return max(1, int((probs >= a * probs[0] * probs[0]).sum()))


def keep_typical(sorted_logits: torch.Tensor, p: float, min_keep: int = 1) -> Keep:
    """Typical-p: the tokens whose surprise is closest to the entropy, up to mass ``p``.

    As HF's ``TypicalLogitsWarper``: order by ``|-log p - H|``, take the first index where
    the cumulative mass reaches ``p`` and keep every token at most that far from ``H``
    (ties included). Returns a mask, since the most likely token may be dropped. The input
    may be in any order (the mask follows it); ties need no order since all are kept.
    """
    n = sorted_logits.numel()
    if p >= 1.0 or n == 1:
        return n
    logp = torch.log_softmax(sorted_logits, dim=-1)
    probs = logp.exp()
    entropy = -(logp * probs).nansum()  # nansum: -inf * 0 for removed tokens
    distance = (-logp - entropy).abs()
    order = argsort_ascending(distance)  # ties need no order: all tied tokens are kept
    by_distance = distance[order]
    mass = torch.cumsum(probs[order], dim=-1)
    last = min(max(int((mass < p).sum()), min_keep - 1), n - 1)
    return distance <= by_distance[last]


def argsort_ascending(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort a 1-D tensor ascending (unstable); numpy's is ~3x faster on CPU."""
    if values.device.type == "cpu" and values.dtype == torch.float32:
        return torch.from_numpy(np.argsort(values.detach().numpy()))
    return torch.argsort(values)


def keep_tail_free(sorted_logits: torch.Tensor, z: float, variant: TfsVariant,
                   removed: int = 0) -> int:
    """Tail-free sampling: cut where the curvature of the sorted probabilities flattens.

    Both variants take ``w = |d2| / sum|d2|`` (second differences of the sorted
    probabilities) and its running sum ``cdf``; ``i*`` is the first index where ``cdf > z``.
    KoboldCpp uses uniform weights when the sum is <= 1e-6; text-generation-webui has no
    such guard: a sum of exactly 0 makes every ``cdf`` NaN there, which removes only the
    last token, and that is what the textgen variant does (without computing a NaN).

    - ``"koboldcpp"`` (llama.cpp before Oct 2024, KoboldCpp ``sample_tail_free`` with
      ``min_keep=1``): keeps ``i*`` tokens, where ``i*`` must be >= 1; all if none. It sees
      only the candidates that earlier samplers left.
    - ``"textgen"`` (text-generation-webui/KoboldAI ``TailFreeLogitsWarper``): keeps
      ``i* + 1`` tokens, and never the last one of the vocabulary. It runs on the whole
      vocabulary, where tokens removed earlier are ``-inf`` (probability 0); ``removed`` says
      how many such tokens follow the candidates, since they add curvature at the cut.

    ``z >= 1`` or fewer than 3 tokens: no-op.
    """
    n = sorted_logits.numel()
    total_n = n + removed if variant == "textgen" else n
    if z >= 1.0 or total_n <= 2:
        return n
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    if variant == "textgen" and removed:
        # zeros past the first two add nothing to |d2|, so two stand for all of them
        probs = torch.cat([probs, probs.new_zeros(min(removed, 2))])
    d1 = probs[:-1] - probs[1:]
    d2 = (d1[:-1] - d1[1:]).abs()
    total = float(d2.sum())
    if variant == "textgen" and total == 0.0:
        # text-generation-webui divides 0 by 0: every cdf is NaN, "NaN > z" is False, so
        # only its always-removed last token goes (on 10 equal logits it keeps 9).
        return min(total_n - 1, n)
    if total > TFS_FLAT_SUM or (variant == "textgen" and total > 0.0):
        # cdf = cumsum(d2) / total > z, without dividing every element
        cum, threshold = torch.cumsum(d2, dim=-1), z * total
    else:
        cum = torch.arange(1, total_n - 1, dtype=torch.float32, device=probs.device)
        threshold = z * (total_n - 2)
    first = _first_above(cum, threshold)
    if variant == "koboldcpp":
        if first == 0:  # the cut may only fall at index >= min_keep = 1
            first = _first_above(cum[1:], threshold) + 1
        return first if first < cum.numel() else n
    keep = first + 1 if first < cum.numel() else total_n - 1
    return min(keep, n)


def _first_above(ascending: torch.Tensor, threshold: float) -> int:
    """Index of the first value > ``threshold`` in a non-decreasing tensor (len if none)."""
    value = torch.tensor([threshold], dtype=ascending.dtype, device=ascending.device)
    return int(torch.searchsorted(ascending, value, right=True))


# ------------------------------------------------------------------ public pure samplers


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1 \
            or not logits.is_floating_point() or logits.numel() == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise SamplerError("logits", shape, "must be a non-empty 1-D float tensor [vocab]")


def filter_sorted(logits: torch.Tensor, keep: Callable[[torch.Tensor], Keep]) -> torch.Tensor:
    """Apply a kernel to ``logits`` in vocabulary order: sort, keep, mask the rest ``-inf``.

    Args:
        logits: 1-D logits [vocab].
        keep: A kernel on descending-sorted logits (see ``keep_*``).

    Returns:
        New logits, removed tokens ``-inf``.
    """
    _check_logits(logits)
    sorted_logits, order = torch.sort(logits, descending=True, stable=True)
    kept = keep(sorted_logits)
    if isinstance(kept, int):
        mask = torch.zeros_like(order, dtype=torch.bool)
        mask[:kept] = True
    else:
        mask = kept
    removed = torch.ones_like(mask).scatter(0, order, ~mask)
    return logits.masked_fill(removed, -math.inf)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature``; 0 keeps only the most likely token (greedy)."""
    _check_logits(logits)
    t = check_float("temperature", temperature, 0.0)
    if 0.0 < t < MIN_TEMPERATURE:
        raise SamplerError("temperature", temperature, f"must be 0 (greedy) or at least "
                           f"{MIN_TEMPERATURE:g}")
    if t == 0.0:
        return filter_sorted(logits, lambda s: 1)
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` most likely tokens; ``k = 0`` is off."""
    k = check_int("top_k", k, 0)
    return filter_sorted(logits, lambda s: keep_top_k(s, k))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens with mass >= ``p``; ``p = 1`` is off."""
    p = check_float("top_p", p, 0.0, 1.0)
    return filter_sorted(logits, lambda s: keep_top_p(s, p))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens with probability >= ``p * p_max``; ``p = 0`` is off."""
    p = check_float("min_p", p, 0.0, 1.0)
    return filter_sorted(logits, lambda s: keep_min_p(s, p))


def top_a(logits: torch.Tensor, a: float) -> torch.Tensor:
    """Keep tokens with probability >= ``a * p_max**2``; ``a = 0`` is off."""
    a = check_float("top_a", a, 0.0, 1.0)
    return filter_sorted(logits, lambda s: keep_top_a(s, a))


def typical_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Locally typical sampling with mass ``p``; ``p = 1`` is off."""
    p = check_float("typical", p, 0.0, 1.0)
    return filter_sorted(logits, lambda s: keep_typical(s, p))


def tail_free(logits: torch.Tensor, z: float, variant: TfsVariant = "textgen") -> torch.Tensor:
    """Tail-free sampling with parameter ``z`` (``tfs``); ``z = 1`` is off.

    Args:
        logits: 1-D logits [vocab].
        z: The ``tfs`` value, in [0, 1].
        variant: ``"textgen"`` keeps ``i*+1`` tokens, ``"koboldcpp"`` keeps ``i*`` (see
            ``keep_tail_free``).
    """
    z = check_float("tfs", z, 0.0, 1.0)
    if variant not in ("textgen", "koboldcpp"):
        raise SamplerError("variant", variant, "must be 'textgen' or 'koboldcpp'")
    if variant == "koboldcpp":  # KoboldCpp's candidate list no longer holds removed tokens
        finite = int(torch.isfinite(logits).sum())
        return filter_sorted(logits, lambda s: keep_tail_free(s[:finite], z, variant))
    return filter_sorted(logits, lambda s: keep_tail_free(s, z, variant))


# ------------------------------------------------------------------------------ penalties


def _check_context(context_ids: torch.Tensor, vocab: int) -> None:
    if not isinstance(context_ids, torch.Tensor) or context_ids.dim() != 1 \
            or context_ids.is_floating_point():
        shape = tuple(context_ids.shape) if isinstance(context_ids, torch.Tensor) \
            else type(context_ids)
        raise SamplerError("context_ids", shape, "must be a 1-D integer tensor of token ids")
    if context_ids.numel() and (int(context_ids.max()) >= vocab or int(context_ids.min()) < 0):
        raise SamplerError("context_ids", (int(context_ids.min()), int(context_ids.max())),
                           f"token ids must lie in [0, {vocab}) (the logits' size)")


def textgen_window(context_ids: torch.Tensor, rep_pen_range: int) -> torch.Tensor:
    """The last ``rep_pen_range`` context tokens; 0 is the whole context (TGW's ``[-0:]``)."""
    return context_ids[-rep_pen_range:] if rep_pen_range > 0 else context_ids


def penalise_(logits: torch.Tensor, ids: torch.Tensor, penalty: float | torch.Tensor) -> None:
    """In place: divide the positive logits of ``ids`` by ``penalty``, multiply the others.

    ``ids`` must be distinct, so each token is penalised once however often it occurs.
    """
    values = logits[ids]
    logits[ids] = torch.where(values <= 0, values * penalty, values / penalty)


def repetition_penalty(context_ids: torch.Tensor, logits: torch.Tensor, rep_pen: float,
                       rep_pen_range: int = 0) -> torch.Tensor:
    """text-generation-webui/HF repetition penalty over the last ``rep_pen_range`` tokens.

    Each distinct token in the window is penalised once: a positive logit is divided by
    ``rep_pen``, a negative one multiplied (0 stays 0).

    Args:
        context_ids: 1-D token ids, prompt and output so far.
        logits: 1-D logits [vocab].
        rep_pen: The penalty, > 0; 1 is off.
        rep_pen_range: Window size; 0 is the whole context.
    """
    _check_logits(logits)
    _check_context(context_ids, logits.numel())
    rep_pen = check_float("rep_pen", rep_pen, *REP_PEN_RANGE)
    window = textgen_window(context_ids, check_int("rep_pen_range", rep_pen_range, 0))
    out = logits.clone()
    if rep_pen != 1.0 and window.numel():
        penalise_(out, torch.unique(window), rep_pen)
    return out


def presence_frequency_penalty(context_ids: torch.Tensor, logits: torch.Tensor,
                               presence_penalty: float, frequency_penalty: float,
                               rep_pen_range: int = 0) -> torch.Tensor:
    """OpenAI-style penalties: ``l -= count * frequency + (count > 0) * presence``.

    Counts are taken over the same window as the repetition penalty (text-generation-webui).
    """
    _check_logits(logits)
    _check_context(context_ids, logits.numel())
    presence = check_float("presence_penalty", presence_penalty, -2.0, 2.0)
    frequency = check_float("frequency_penalty", frequency_penalty, -2.0, 2.0)
    window = textgen_window(context_ids, check_int("rep_pen_range", rep_pen_range, 0))
    out = logits.clone()
    if window.numel() and (presence or frequency):
        ids, counts = torch.unique(window, return_counts=True)
        out[ids] -= presence + frequency * counts.to(out.dtype)
    return out


def koboldcpp_rep_pen_(logits: torch.Tensor, context_ids: torch.Tensor, rep_pen: float,
                       rep_pen_range: int, rep_pen_slope: float, presence_penalty: float,
                       frequency_penalty: float = 0.0) -> None:
    """In place: KoboldCpp's ``sample_rep_pen`` (arguments already validated).

    The window is the last ``n = max(rep_pen_range, 1)`` tokens of KoboldCpp's
    ``last_n_tokens``: a buffer of ``n`` slots filled with token 0 at the start of each
    generation, through which the context is pushed, so while the context is shorter than
    ``n`` the window still holds 0s (and token 0 is penalised). Slot ``i`` (oldest first) is
    in the newer half when ``2 * i >= n``, so that half holds ``floor(n / 2)`` slots. Tokens
    in the newer half get ``rep_pen``; tokens only in the older half get
    ``1 + (rep_pen - 1) * slope`` (when ``rep_pen > 1``; a slope outside (0, 1] counts as 1,
    i.e. flat). Then ``presence_penalty`` is subtracted from every window token.
    ``frequency_penalty`` (not in KoboldCpp, 0 by default) subtracts ``count * frequency``
    per occurrence in the context part of the window, as in OpenAI's rule.

    KoboldCpp also caps ``n`` at its context size (``n_ctx``): the chain passes
    ``min(rep_pen_range, context)`` when it knows the engine's context.
    """
    if rep_pen == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0:
        return
    n = max(rep_pen_range, 1)
    real = context_ids[-n:]
    window = real
    if real.numel() < n:  # the rest of the buffer still holds its initial 0s
        window = torch.cat([real.new_zeros(n - real.numel()), real])
    slope = rep_pen_slope if 0.0 < rep_pen_slope <= 1.0 else 1.0
    reduced = 1.0 + (rep_pen - 1.0) * slope if rep_pen > 1.0 else rep_pen
    ids = torch.unique(window)
    if reduced == rep_pen:
        penalise_(logits, ids, rep_pen)
    else:
        near = torch.zeros_like(logits, dtype=torch.bool)
        near[window[(n + 1) // 2:]] = True  # slots i with 2*i >= n: floor(n/2) of them
        penalise_(logits, ids, torch.where(near[ids], rep_pen, reduced).to(logits.dtype))
    if presence_penalty:
        logits[ids] -= presence_penalty
    if frequency_penalty and real.numel():
        real_ids, counts = torch.unique(real, return_counts=True)
        logits[real_ids] -= frequency_penalty * counts.to(logits.dtype)


def koboldcpp_repetition_penalty(context_ids: torch.Tensor, logits: torch.Tensor,
                                 rep_pen: float, rep_pen_range: int, rep_pen_slope: float = 1.0,
                                 presence_penalty: float = 0.0) -> torch.Tensor:
    """KoboldCpp's repetition penalty with its range and slope rules (see ``koboldcpp_rep_pen_``).

    Differs from ``repetition_penalty``: range 0 means 1 token (KoboldCpp clamps it), the
    older half of the window can get a smaller penalty, and presence applies per token.
    """
    _check_logits(logits)
    _check_context(context_ids, logits.numel())
    out = logits.clone()
    koboldcpp_rep_pen_(out, context_ids,
                       check_float("rep_pen", rep_pen, *REP_PEN_RANGE),
                       check_int("rep_pen_range", rep_pen_range, 0),
                       check_float("rep_pen_slope", rep_pen_slope, 0.0),
                       check_float("presence_penalty", presence_penalty, -2.0, 2.0))
    return out
