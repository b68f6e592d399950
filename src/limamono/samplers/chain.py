"""The sampler chain: ``make_sampler(settings)`` builds the ordered stages once per request.

Speed (the engine allows ~4 ms of sampling per token): disabled samplers are left out of
the chain at build time; penalties touch only the window's distinct ids; the candidates
are sorted once and every truncation sampler then cuts a prefix (or, for typical-p, masks)
of the already sorted, ever shorter candidate list; a leading top-k uses ``torch.topk``
instead of a full sort. The ``limamono`` preset costs one sort of the vocabulary per token.

Where each sampler runs is decided here and nowhere else, per dialect:

- koboldcpp (``SampleLogits``): logit bias and bans, DRY, the top-3000 cut, then either
  mirostat (rep-pen, temperature with smoothing, the mirostat draw) or the ``sampler_order``
  ids (id 5 is temperature or dynamic temperature, then smoothing, then top-nσ), then XTC.
- textgen (``sampler_hijack.py``): logit bias and bans, the three classic penalties, then
  every other implemented ``sampler_priority`` name in order (unlisted names first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from limamono.samplers import functions as F
from limamono.samplers import stages as S
from limamono.samplers.candidates import Candidates, Stage, top_is_finite
from limamono.samplers.settings import (
    KOBOLDCPP_SAMPLERS,
    TEXTGEN_DEFAULT_PRIORITY,
    TEXTGEN_IMPLEMENTED,
    TEXTGEN_TEMPERATURE_LAST,
    SamplerError,
    SamplerSettings,
)
from limamono.samplers.shaping import Mirostat
from limamono.samplers.vocab import Vocabulary


def _penalty_stage(apply: Callable[[torch.Tensor, torch.Tensor], None]) -> Stage:
    """A stage from an in-place penalty on full-vocab logits ``apply(logits, context_ids)``."""
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        cands.changed_logits()
        apply(cands.logits, context_ids)
    return stage


def _prefix_stage(kernel: Callable[[torch.Tensor], int]) -> Stage:
    """A stage from a kernel that keeps a prefix of the sorted survivors."""
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        cands.keep_prefix(kernel(cands.sorted_survivor_vals()))
    return stage


def _typical_stage(p: float) -> Stage:
    """Typical-p works on any order and may drop the top token, so it fixes the ids."""
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        ids = cands.survivor_ids()
        kept = F.keep_typical(cands.logits[ids], p, cands.min_keep)
        if not isinstance(kept, int):
            cands.ids = ids[kept]
    return stage


def _tfs_stage(z: float, variant: F.TfsVariant) -> Stage:
    """Tail-free sampling; the textgen variant also counts the tokens already removed."""
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        vals = cands.sorted_survivor_vals()
        cands.keep_prefix(F.keep_tail_free(vals, z, variant, cands.vocab - vals.numel()))
    return stage


def _top_k_stage(k: int, greedy: bool = False) -> Stage:
    """Top-k; before anything is sorted, ``torch.topk`` is cheaper than a full sort.

    ``greedy`` (temperature 0) keeps one token whatever ``min_keep`` says.
    """
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        keep = k if greedy else max(k, cands.min_keep)
        if cands.ids is None and cands.sorted_vals is None and keep < cands.m == cands.vocab:
            cands.sorted_vals = torch.topk(cands.logits, keep, sorted=True).values
        cands.keep_prefix(keep, floor=not greedy)
    return stage


def _temperature_stage(t: float) -> Stage:
    def stage(cands: Candidates, context_ids: torch.Tensor) -> None:
        cands.logits /= t  # order-preserving for t > 0, so the sorted state stays valid
        if cands.sorted_vals is not None:
            cands.sorted_vals = cands.sorted_vals / t
    return stage


def _textgen_penalties(s: SamplerSettings) -> list[Stage]:
    def apply(logits: torch.Tensor, context_ids: torch.Tensor) -> None:
        window = F.textgen_window(context_ids, s.rep_pen_range)
        if not window.numel():
            return
        if s.rep_pen != 1.0:
            F.penalise_(logits, torch.unique(window), s.rep_pen)
        if s.presence_penalty or s.frequency_penalty:
            ids, counts = torch.unique(window, return_counts=True)
            logits[ids] -= s.presence_penalty + s.frequency_penalty * counts.to(logits.dtype)
    active = s.rep_pen != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0
    return [_penalty_stage(apply)] if active else []


def _koboldcpp_penalty(s: SamplerSettings, n_ctx: int | None) -> Stage | None:
    """KoboldCpp's rep-pen; its window is also capped at the context size (``n_ctx``)."""
    if s.rep_pen == 1.0 and s.presence_penalty == 0.0 and s.frequency_penalty == 0.0:
        return None
    window = s.rep_pen_range if n_ctx is None else min(max(s.rep_pen_range, 1), n_ctx)
    return _penalty_stage(lambda logits, ids: F.koboldcpp_rep_pen_(
        logits, ids, s.rep_pen, window, s.rep_pen_slope, s.presence_penalty,
        s.frequency_penalty))


def _truncation(name: str, s: SamplerSettings, top_k: int) -> Stage | None:
    """The stage for one truncation sampler or temperature, or None when it is off."""
    variant = s.dialect
    if name == "top_k":
        return _top_k_stage(top_k, greedy=s.temperature == 0.0) if top_k > 0 else None
    if name == "temperature":
        return _temperature_stage(s.temperature) if s.temperature not in (0.0, 1.0) else None
    if name == "tfs":
        return _tfs_stage(s.tfs, variant) if s.tfs < 1.0 else None
    if name == "typical_p":
        return _typical_stage(s.typical) if s.typical < 1.0 else None
    kernels: dict[str, tuple[bool, Callable[[torch.Tensor], int]]] = {
        "top_p": (s.top_p < 1.0, partial(F.keep_top_p, p=s.top_p)),
        "min_p": (s.min_p > 0.0, partial(F.keep_min_p, p=s.min_p)),
        "top_a": (s.top_a > 0.0, partial(F.keep_top_a, a=s.top_a)),
    }
    enabled, kernel = kernels[name]
    return _prefix_stage(kernel) if enabled else None


def textgen_order(s: SamplerSettings) -> tuple[str, ...]:
    """The implemented samplers in the order the textgen dialect runs them (after penalties).

    Names missing from ``sampler_priority`` run first, in the default order, as
    text-generation-webui sorts unlisted samplers first (its ``custom_sort_key`` gives -1).
    """
    priority = s.sampler_priority if s.sampler_priority is not None \
        else TEXTGEN_TEMPERATURE_LAST
    known = [n for n in TEXTGEN_DEFAULT_PRIORITY if n in TEXTGEN_IMPLEMENTED]
    listed = [n for n in priority if n in TEXTGEN_IMPLEMENTED]
    return (*(n for n in known if n not in listed), *listed)


#: KoboldCpp's fixed top-k before the user's samplers (``SampleLogits``; 5000 before 2025).
KOBOLDCPP_PREFILTER = 3000


def _textgen_stage(name: str, s: SamplerSettings, top_k: int, vocab: Vocabulary | None,
                   mirostat: Mirostat | None) -> Stage | None:
    """The textgen stage called ``name`` (a ``sampler_priority`` name), None when off."""
    if name == "dry":
        return S.dry_stage(s, vocab)
    if name == "xtc":
        return S.xtc_stage(s, vocab)
    if name == "top_n_sigma":
        return S.top_n_sigma_stage(s)
    if name == "quadratic_sampling":
        return S.quadratic_stage(s)
    if name == "dynamic_temperature":
        return S.dynatemp_stage(s)
    if name == "mirostat":
        return S.mirostat_stage(s, mirostat) if mirostat is not None else None
    return _truncation(name, s, top_k)


def _koboldcpp_stages(s: SamplerSettings, top_k: int, vocab: Vocabulary | None,
                      mirostat: Mirostat | None, n_ctx: int | None) -> list[Stage | None]:
    """KoboldCpp's ``SampleLogits``: DRY, the top-3000 cut, then mirostat (rep-pen,
    temperature, draw) or the ``sampler_order`` followed by XTC."""
    # KoboldCpp always cuts to the top 3000 before its chain (so rep-pen cannot revive
    # a token beyond them, and TFS normalises over them); a no-op on small vocabularies.
    stages = [S.dry_stage(s, vocab), _prefix_stage(partial(F.keep_top_k, k=KOBOLDCPP_PREFILTER))]
    if mirostat is not None:
        return [*stages, _koboldcpp_penalty(s, n_ctx),
                S.koboldcpp_temperature_stage(s, mirostat=True), S.mirostat_stage(s, mirostat)]
    for sampler_id in s.sampler_order:
        name = KOBOLDCPP_SAMPLERS[sampler_id]
        if name == "rep_pen":
            stages.append(_koboldcpp_penalty(s, n_ctx))
        elif name == "temperature":
            stages.append(S.koboldcpp_temperature_stage(s))
        elif name == "top_p":  # KoboldCpp's id 2 runs top-p, then min-p
            stages += [_truncation("top_p", s, top_k), _truncation("min_p", s, top_k)]
        else:
            stages.append(_truncation("typical_p" if name == "typical" else name, s, top_k))
    return [*stages, S.xtc_stage(s, vocab)]


def build_stages(s: SamplerSettings, vocab: Vocabulary | None = None,
                 mirostat: Mirostat | None = None, n_ctx: int | None = None,
                 landing: Stage | None = None) -> list[Stage]:
    """The enabled stages of ``s`` in dialect order. Temperature 0 runs as top-k 1.

    Args:
        s: The settings.
        vocab: The model's vocabulary, needed for DRY breakers, XTC's exclusions and the
            range check of logit biases.
        mirostat: The generation's mirostat state (when ``s.mirostat`` is 1 or 2).
        n_ctx: The engine's context size (KoboldCpp caps its rep-pen window at it).
        landing: The generation's soft-landing stage (``limamono.engine.landing``), run
            right after logit bias and bans, in both dialects: its bias then goes through
            the penalties and truncation samplers like any logit, and a token it forces
            is one a ban left.
    """
    top_k = 1 if s.temperature == 0.0 else s.top_k
    stages: list[Stage | None] = [S.bias_stage(s, vocab), landing]
    if s.dialect == "textgen":
        stages += _textgen_penalties(s)
        stages += [_textgen_stage(name, s, top_k, vocab, mirostat) for name in textgen_order(s)]
    else:
        stages += _koboldcpp_stages(s, top_k, vocab, mirostat, n_ctx)
    return [stage for stage in stages if stage is not None]


@dataclass
class Sampler:
    """A ready chain for one settings object; build it with ``make_sampler``.

    ``process`` and ``sample`` are safe to call once per generated token. A seeded sampler
    owns its random generator, so one sampler gives one reproducible sequence.
    """

    settings: SamplerSettings
    vocab: Vocabulary | None = None
    context_length: int | None = None
    landing: Stage | None = None

    def __post_init__(self) -> None:
        s = self.settings
        #: Mirostat's feedback state; one per sampler, so one per generation.
        self.mirostat = Mirostat(s.mirostat, s.mirostat_tau, s.mirostat_eta,
                                 self.vocab.size if self.vocab else 0) if s.mirostat else None
        self._stages = build_stages(s, self.vocab, self.mirostat, self.context_length,
                                    self.landing)
        self._generator: torch.Generator | None = None
        if s.seed is not None:
            self._generator = torch.Generator().manual_seed(s.seed)

    def run(self, context_ids: torch.Tensor, logits: torch.Tensor,
            generator: torch.Generator | None = None) -> Candidates:
        """The surviving candidates after every stage (``logits`` is not modified)."""
        F._check_logits(logits)
        if self._stages:
            F._check_context(context_ids, logits.numel())
        if self.mirostat is not None and not self.mirostat.vocab:
            self.mirostat.vocab = logits.numel()
        cands = Candidates(logits.detach().to(torch.float32, copy=True),
                            self.settings.min_keep, generator or self._generator)
        if not top_is_finite(cands.logits):
            raise SamplerError("logits", "NaN/inf", "the logits hold NaN or +inf, or every "
                               "token is -inf (an overflow in half precision?); try float32 "
                               "or bfloat16")
        for stage in self._stages:
            stage(cands, context_ids)
        return cands

    def process(self, context_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """New logits [vocab] after penalties and samplers; removed tokens are ``-inf``.

        Args:
            context_ids: 1-D int64, prompt plus the tokens generated so far.
            logits: 1-D float [vocab], the model's next-token logits.

        Returns:
            A new tensor of ``logits``' dtype (the arithmetic runs in float32).
        """
        return self.run(context_ids, logits).full().to(logits.dtype)

    def sample(self, context_ids: torch.Tensor, logits: torch.Tensor,
               generator: torch.Generator | None = None) -> int:
        """Draw the next token id.

        Args:
            context_ids: 1-D int64, prompt plus the tokens generated so far.
            logits: 1-D float [vocab].
            generator: CPU random source; default the sampler's own (seeded when ``seed``
                is set), else torch's global one.
        """
        cands = self.run(context_ids, logits, generator)
        ids = None if cands.ids is None and cands.m == cands.vocab else cands.survivor_ids()
        if ids is not None and ids.numel() == 1:
            return int(ids[0])
        values = cands.logits if ids is None else cands.logits[ids]
        # Inverse-CDF draw: one uniform number, ~10x cheaper than torch.multinomial here.
        cdf = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
        u = torch.rand(1, generator=generator or self._generator).to(cdf.device)
        choice = min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), cdf.numel() - 1)
        return choice if ids is None else int(ids[choice])


def make_sampler(settings: SamplerSettings, vocab: Vocabulary | None = None,
                 context_length: int | None = None, landing: Stage | None = None) -> Sampler:
    """The sampler for ``settings``: the one factory the engine, server and tests use.

    Build one per generation: mirostat keeps its state in the sampler. ``vocab`` (the
    model's, see ``Vocabulary``) resolves DRY breakers and XTC's newline/EOS exclusion;
    ``context_length`` (the engine's) caps KoboldCpp's rep-pen window as KoboldCpp does.
    ``landing``: the decode loop's soft-landing stage when ``settings.soft_landing`` is on
    (it needs the reply's position and text, which only the loop knows).

    Raises:
        SamplerError: A setting that needs ``vocab`` without it, or a token id out of range.
    """
    return Sampler(settings, vocab, context_length, landing)


def bench_overhead(settings: SamplerSettings | None = None, vocab: int = 49152, n: int = 200,
                   context: int = 4096) -> float:
    """Median milliseconds of one ``Sampler.sample`` call on random logits.

    The median, not the mean, so that a busy shared machine disturbs it less.

    Args:
        settings: What to time; default the ``limamono`` preset.
        vocab: Vocabulary size (SmolLM2: 49152).
        n: Calls to time (after 5 warm-up calls).
        context: Context length in tokens (the rep-pen window is taken from its end).
    """
    from limamono.samplers.settings import get_preset

    # A synthetic vocabulary (one token per character) resolves DRY breakers and XTC's
    # exclusions; the cost per token is the same as with a real one.
    vocabulary = Vocabulary(vocab, lambda text: [ord(c) % vocab for c in text],
                            lambda: [chr(32 + i % 95) for i in range(vocab)], frozenset({0}))
    sampler = make_sampler(settings or get_preset("limamono"), vocabulary)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n + 5, vocab, generator=gen) * 3  # a peaked, LM-like spread
    ids = torch.randint(0, vocab, (context,), generator=gen)
    times = []
    for i, row in enumerate(logits):
        start = time.perf_counter()
        sampler.sample(ids, row)
        if i >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
