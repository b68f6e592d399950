"""Chain stages of the roleplay samplers: logit bias and bans, DRY, XTC, top-nσ, quadratic
smoothing, dynamic temperature and mirostat (the kernels live in ``dry`` and ``shaping``).

Each factory returns a stage ``(candidates, context_ids) -> None`` for
``limamono.samplers.chain``, or None when its sampler is off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from limamono.samplers import shaping
from limamono.samplers.candidates import Candidates, Stage
from limamono.samplers.dry import apply_dry_
from limamono.samplers.settings import MIN_TEMPERATURE, SamplerError, SamplerSettings
from limamono.samplers.vocab import BreakerTable, Vocabulary


def bias_stage(s: SamplerSettings, vocab: Vocabulary | None) -> Stage | None:
    """``logit_bias`` added and ``custom_token_bans`` (and EOS with ``ban_eos_token``) set to
    ``-inf``, before anything else (KoboldCpp ``SampleLogits``; text-generation-webui sorts
    its bias processor first)."""
    eos = sorted(vocab.eos_ids) if s.ban_eos_token and vocab is not None else []
    if s.ban_eos_token and vocab is None:
        raise SamplerError("ban_eos_token", True, "needs the model's vocabulary (its EOS "
                           "ids): make_sampler(settings, vocab=...)")
    if not s.logit_bias and not s.custom_token_bans and not eos:
        return None
    if vocab is not None:
        shaping.check_in_vocab("logit_bias", [t for t, _ in s.logit_bias], vocab.size)
        shaping.check_in_vocab("custom_token_bans", s.custom_token_bans, vocab.size)
    bias_ids = torch.tensor([t for t, _ in s.logit_bias], dtype=torch.long)
    amounts = torch.tensor([b for _, b in s.logit_bias], dtype=torch.float32)
    bans = torch.tensor(sorted({*s.custom_token_bans, *eos}), dtype=torch.long)

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        shaping.check_in_vocab("logit_bias", bias_ids.tolist(), cands.vocab)
        shaping.check_in_vocab("custom_token_bans", bans.tolist(), cands.vocab)
        cands.changed_logits()
        cands.logits[bias_ids] += amounts
        cands.logits[bans] = -math.inf
        if cands.ids is not None and bans.numel():
            cands.keep_ids(cands.ids[~torch.isin(cands.ids, bans)])
    return stage


def dry_breakers(s: SamplerSettings, vocab: Vocabulary | None) -> BreakerTable:
    """The dialect's token-level breakers of ``s.dry_sequence_breakers``.

    Raises:
        SamplerError: Breakers are set but no vocabulary was given to resolve them.
    """
    if not s.dry_sequence_breakers:
        return {}
    if vocab is None:
        raise SamplerError("dry_sequence_breakers", list(s.dry_sequence_breakers),
                           "DRY breakers are text; build the sampler with the model's "
                           "vocabulary (make_sampler(settings, vocab=...))")
    if s.dialect == "koboldcpp":
        return vocab.koboldcpp_breakers(s.dry_sequence_breakers)
    return vocab.textgen_breakers(s.dry_sequence_breakers)


def dry_stage(s: SamplerSettings, vocab: Vocabulary | None) -> Stage | None:
    """DRY; its window is ``dry_penalty_last_n`` (KoboldCpp) or ``rep_pen_range`` (textgen)."""
    if s.dry_multiplier <= 0.0:
        return None
    breakers = dry_breakers(s, vocab)
    last_n = s.dry_penalty_last_n if s.dialect == "koboldcpp" else s.rep_pen_range

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        cands.changed_logits()
        apply_dry_(cands.logits, context_ids, breakers, s.dry_multiplier, s.dry_base,
                   s.dry_allowed_length, last_n, s.dialect)
    return stage


def xtc_stage(s: SamplerSettings, vocab: Vocabulary | None) -> Stage | None:
    """XTC: roll the dice, then remove the top choices but the least likely.

    textgen leaves the candidates alone when a newline or EOS would go; KoboldCpp does
    nothing above a threshold of 0.5. ``min_keep``: XTC never leaves fewer (llama.cpp).
    """
    if s.xtc_probability <= 0.0:
        return None
    if s.dialect == "koboldcpp" and s.xtc_threshold > shaping.KOBOLDCPP_XTC_MAX_THRESHOLD:
        return None
    protected: list[int] = []
    if s.dialect == "textgen" and vocab is not None:
        newline = vocab.newline_id()
        protected = sorted({*vocab.eos_ids, *([newline] if newline is not None else [])})

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        if float(torch.rand(1, generator=cands.generator)) >= s.xtc_probability:
            return
        ids = cands.survivor_ids()
        removed = shaping.xtc_removed(cands.logits[ids], ids, s.xtc_threshold, protected)
        if removed is not None and ids.numel() - int(removed.sum()) >= cands.min_keep:
            cands.keep_ids(ids[~removed])
    return stage


def top_n_sigma_stage(s: SamplerSettings) -> Stage | None:
    """Top-nσ: a prefix of the sorted candidates (at least ``min_keep``)."""
    if s.top_n_sigma <= 0.0:
        return None

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        vals = cands.sorted_survivor_vals()
        threshold = shaping.top_n_sigma_threshold(vals, s.top_n_sigma, s.dialect, cands.vocab)
        cands.keep_prefix(int((vals >= threshold).sum()))
    return stage


def _transform_survivors(cands: Candidates,
                         transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace the survivors' logits by ``transform(values)`` (order may change)."""
    ids = cands.survivor_ids()
    cands.changed_logits()
    cands.logits[ids] = transform(cands.logits[ids])


def quadratic_stage(s: SamplerSettings) -> Stage | None:
    """Quadratic smoothing (textgen's ``quadratic_sampling`` stage)."""
    if s.smoothing_factor <= 0.0:
        return None

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        _transform_survivors(cands, lambda v: shaping.quadratic(v, s.smoothing_factor,
                                                                s.smoothing_curve))
    return stage


def _divide_or_greedy(cands: Candidates, temperature: float) -> None:
    if temperature < MIN_TEMPERATURE:  # a (near-)zero dynamic temperature: the top token
        cands.keep_prefix(1, floor=False)
    else:
        _transform_survivors(cands, lambda v: v / temperature)


def dynatemp_stage(s: SamplerSettings) -> Stage | None:
    """textgen's ``dynamic_temperature`` stage (``dynatemp_low``..``dynatemp_high``)."""
    if not s.dynamic_temperature:
        return None

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        vals = cands.logits[cands.survivor_ids()]
        _divide_or_greedy(cands, shaping.entropy_temperature(
            vals, s.dynatemp_low, s.dynatemp_high, s.dynatemp_exponent, "textgen"))
    return stage


def koboldcpp_temperature_stage(s: SamplerSettings, mirostat: bool = False) -> Stage | None:
    """KoboldCpp's temperature id 5: dynamic temperature (``temperature +- dynatemp_range``)
    or plain temperature, then quadratic smoothing, then top-nσ. Under mirostat only the
    plain temperature and smoothing run (``SampleLogits``)."""
    dynamic = s.dynatemp_range > 0.0 and not mirostat
    plain = s.temperature not in (0.0, 1.0)
    nsigma = None if mirostat else top_n_sigma_stage(s)
    if not (dynamic or plain or s.smoothing_factor > 0.0 or nsigma):
        return None
    low = max(0.0, s.temperature - s.dynatemp_range)
    high = s.temperature + s.dynatemp_range

    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        ids = cands.survivor_ids()
        if dynamic and ids.numel() > 1:
            _divide_or_greedy(cands, shaping.entropy_temperature(
                cands.logits[ids], low, high, s.dynatemp_exponent, "koboldcpp"))
        elif plain and not dynamic:
            _divide_or_greedy(cands, s.temperature)
        if s.smoothing_factor > 0.0 and cands.survivor_ids().numel() > 1:
            _transform_survivors(cands, lambda v: shaping.quadratic(v, s.smoothing_factor,
                                                                    s.smoothing_curve))
        if nsigma is not None and cands.survivor_ids().numel() > 1:
            nsigma(cands, context_ids)
    return stage


def mirostat_stage(s: SamplerSettings, state: shaping.Mirostat) -> Stage:
    """Mirostat: draw one token with the generation's state; it is the only survivor."""
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        ids = cands.survivor_ids()
        order = torch.sort(cands.logits[ids], descending=True, stable=True).indices
        ids = ids[order]
        index = state.choose(cands.logits[ids], cands.generator)
        cands.keep_ids(ids[index:index + 1], in_order=True)
    return stage
