"""XTC, top-nσ, quadratic smoothing, dynamic temperature, mirostat and logit bias.

Kernels take the current candidates' logits (any order unless said) and return what the
chain needs: a mask, new values or a chosen index. Public functions (``xtc``,
``top_n_sigma``, ...) check their arguments, take logits [vocab] in vocabulary order and
return new logits with removed tokens ``-inf``. Semantics per dialect, from the sources:
text-generation-webui ``modules/sampler_hijack.py`` (textgen) and KoboldCpp
``gpttype_adapter.cpp`` (koboldcpp); where they agree, one kernel serves both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from limamono.samplers.settings import MIN_TEMPERATURE

#: KoboldCpp's XTC does nothing above this threshold (at most one token can pass it).
KOBOLDCPP_XTC_MAX_THRESHOLD = 0.5
#: Mirostat v1 estimates the Zipf exponent from this many top tokens (llama.cpp, KoboldCpp).
MIROSTAT_M = 100


def xtc_removed(vals: torch.Tensor, ids: torch.Tensor, threshold: float,
                protected: Iterable[int] = ()) -> torch.Tensor | None:
    """XTC's victims: every candidate with ``p >= threshold`` except the least likely one.

    Args:
        vals: Candidate logits [n] (any order).
        ids: Their token ids [n].
        threshold: ``xtc_threshold``.
        protected: textgen: if any victim is one of these (newline, EOS), XTC does nothing.

    Returns:
        A bool mask over the candidates, or None when nothing is removed (fewer than two
        candidates pass the threshold, or a protected token would go). Among tied least
        likely tokens the highest id survives (a stable descending sort's last).
    """
    probs = torch.softmax(vals.float(), dim=-1)
    above = probs >= threshold
    if int(above.sum()) < 2:
        return None
    above_ids = ids[above]
    lowest = probs[above].min()
    survivor = int(above_ids[probs[above] == lowest].max())
    removed = above & (ids != survivor)
    guard = [t for t in protected if t is not None]
    if guard and bool(torch.isin(ids[removed], torch.tensor(guard, dtype=ids.dtype)).any()):
        return None
    return removed


def top_n_sigma_threshold(vals: torch.Tensor, n: float, dialect: str, vocab: int) -> float:
    """The smallest logit top-nσ keeps: ``max - n * std``.

    KoboldCpp (``sample_top_n_sigma``): the population standard deviation of the current
    candidates. text-generation-webui (``TopNSigmaLogitsWarper``): the sample standard
    deviation over the whole vocabulary, where removed (``-inf``) tokens count as 0.
    """
    x = vals.double()
    x = x[torch.isfinite(x)]  # banned (-inf) tokens: left out (textgen: they count as 0)
    if dialect == "koboldcpp" or vocab <= 1:
        std = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
    else:
        total, squares = float(x.sum()), float((x * x).sum())
        mean = total / vocab
        std = math.sqrt(max(0.0, (squares - vocab * mean * mean) / (vocab - 1)))
    return float(x.max()) - n * std


def quadratic(vals: torch.Tensor, factor: float, curve: float) -> torch.Tensor:
    """Quadratic ("smoothing") sampling: ``max - k*f*d**2 + s*f*d**3``, ``d = l - max``,
    ``k = (3 - curve) / 2``, ``s = (curve - 1) / 2`` (both sources; curve 1 is quadratic)."""
    top = vals.max()
    d = vals - top
    k, s = (3.0 - curve) / 2.0, (curve - 1.0) / 2.0
    out = -(k * factor * d * d) + (s * factor * d * d * d) + top
    return torch.where(torch.isfinite(vals), out, vals)  # removed tokens stay -inf


def entropy_temperature(vals: torch.Tensor, low: float, high: float, exponent: float,
                        dialect: str) -> float:
    """Dynamic temperature: ``low + (high - low) * (H / H_max) ** exponent``.

    ``H`` is the entropy of the candidates' distribution and ``H_max = ln(count)``.
    textgen floors both at 1e-10 (``DynamicTemperatureLogitsWarper``); KoboldCpp
    (``sample_entropy``) is only called with two or more candidates.
    """
    logp = torch.log_softmax(vals.double(), dim=-1)
    entropy = float(-(logp.exp() * logp).nansum())
    count = int(torch.isfinite(vals).sum())  # removed (-inf) tokens do not count
    max_entropy = math.log(count) if count > 0 else 0.0
    if dialect == "textgen":
        entropy, max_entropy = max(entropy, 1e-10), max(max_entropy, 1e-10)
    return low + (high - low) * (entropy / max_entropy) ** exponent


def inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Index drawn from ``probs`` (normalised or not) with one uniform number."""
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.rand(1, generator=generator, dtype=cdf.dtype)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), cdf.numel() - 1)


class Mirostat:
    """Mirostat's state for one generation: ``mu`` starts at ``2 * tau`` and follows the
    observed surprise. Each ``choose`` draws one candidate and updates ``mu``.

    v2 (both sources): keep the top tokens up to the first whose surprise ``-log2 p``
    exceeds ``mu`` (at least one), renormalise, draw. v1 (llama.cpp/KoboldCpp
    ``sample_token_mirostat``): estimate the Zipf exponent ``s`` from the top 100 tokens,
    keep the top ``k = (e * 2**mu / (1 - N**-e)) ** (1/s)`` (``e = s - 1``, ``N`` the
    vocabulary), draw. Either way ``mu -= eta * (surprise of the draw - tau)``, where the
    surprise is measured on the renormalised kept tokens.
    """

    def __init__(self, version: int, tau: float, eta: float, vocab: int) -> None:
        self.version, self.tau, self.eta, self.vocab = version, tau, eta, vocab
        self.mu = 2.0 * tau

    def choose(self, sorted_vals: torch.Tensor, generator: torch.Generator | None) -> int:
        """Index (into ``sorted_vals``, descending logits) of the drawn token."""
        probs = torch.softmax(sorted_vals.double(), dim=-1)
        keep = self._keep_v2(probs) if self.version == 2 else self._keep_v1(probs)
        kept = probs[:keep] / probs[:keep].sum()
        index = inverse_cdf_draw(kept, generator)
        self.mu -= self.eta * (-math.log2(float(kept[index])) - self.tau)
        return index

    def _keep_v2(self, probs: torch.Tensor) -> int:
        surprise = -torch.log2(probs)
        over = torch.nonzero(surprise > self.mu)
        return max(1, int(over[0]) if over.numel() else probs.numel())

    def _keep_v1(self, probs: torch.Tensor) -> int:
        n = min(MIROSTAT_M - 1, probs.numel() - 1)
        if n < 1:
            return 1
        i = torch.arange(n, dtype=torch.float64)
        t = torch.log((i + 2) / (i + 1))
        b = torch.log(probs[:n] / probs[1:n + 1])
        s_hat = float((t * b).sum() / (t * t).sum())
        epsilon = s_hat - 1.0
        try:
            k = ((epsilon * 2.0 ** self.mu) / (1.0 - self.vocab ** -epsilon)) ** (1.0 / s_hat)
        except (OverflowError, ZeroDivisionError):
            return probs.numel()
        if isinstance(k, complex) or not math.isfinite(k) or int(k) <= 0:
            return probs.numel()  # KoboldCpp's top-k keeps everything for k <= 0
        return min(int(k), probs.numel())


# ------------------------------------------------------------------ public pure samplers


def _mask_removed(logits: torch.Tensor, removed_ids: torch.Tensor) -> torch.Tensor:
    out = logits.clone()
    out[removed_ids] = -math.inf
    return out


def xtc(logits: torch.Tensor, threshold: float, protected: Iterable[int] = ()) -> torch.Tensor:
    """XTC applied (the dice already rolled "yes"): remove every token with
    ``p >= threshold`` but the least likely; ``protected`` as in ``xtc_removed``."""
    from limamono.samplers import functions as F
    from limamono.samplers.settings import check_float

    F._check_logits(logits)
    threshold = check_float("xtc_threshold", threshold, 0.0, 1.0)
    ids = torch.nonzero(torch.isfinite(logits)).squeeze(1)
    removed = xtc_removed(logits[ids], ids, threshold, protected)
    return logits.clone() if removed is None else _mask_removed(logits, ids[removed])


def top_n_sigma(logits: torch.Tensor, n: float, dialect: str = "textgen") -> torch.Tensor:
    """Keep tokens with ``logit >= max - n * std`` (see ``top_n_sigma_threshold``)."""
    from limamono.samplers import functions as F
    from limamono.samplers.settings import check_float

    F._check_logits(logits)
    n = check_float("top_n_sigma", n, 0.0)
    if n <= 0.0:
        return logits.clone()
    finite = torch.isfinite(logits)
    threshold = top_n_sigma_threshold(logits[finite], n, dialect, logits.numel())
    return logits.masked_fill(~finite | (logits < threshold), -math.inf)


def quadratic_sampling(logits: torch.Tensor, factor: float, curve: float = 1.0) -> torch.Tensor:
    """Quadratic smoothing of the finite logits (see ``quadratic``); ``factor = 0`` is off."""
    from limamono.samplers import functions as F
    from limamono.samplers.settings import check_float

    F._check_logits(logits)
    factor = check_float("smoothing_factor", factor, 0.0)
    curve = check_float("smoothing_curve", curve, 0.0, 10.0)
    out = logits.clone()
    finite = torch.isfinite(logits)
    if factor > 0.0:
        out[finite] = quadratic(logits[finite], factor, curve)
    return out


def dynamic_temperature(logits: torch.Tensor, low: float, high: float, exponent: float = 1.0,
                        dialect: str = "textgen") -> torch.Tensor:
    """Divide the logits by the entropy-chosen temperature (see ``entropy_temperature``).

    A temperature below ``MIN_TEMPERATURE`` (``low = 0`` on a near-certain distribution)
    keeps only the top token instead of overflowing the scaled logits (the draw is the same).
    """
    from limamono.samplers import functions as F
    from limamono.samplers.settings import check_float

    F._check_logits(logits)
    low, high = check_float("dynatemp_low", low, 0.0), check_float("dynatemp_high", high, 0.0)
    exponent = check_float("dynatemp_exponent", exponent, 0.0)
    finite = torch.isfinite(logits)
    if dialect == "koboldcpp" and int(finite.sum()) <= 1:
        return logits.clone()
    temperature = entropy_temperature(logits[finite], low, high, exponent, dialect)
    if temperature < MIN_TEMPERATURE:
        return F.apply_temperature(logits, 0.0)
    return logits / temperature


def logit_bias(logits: torch.Tensor, bias: dict[int, float] | Iterable[tuple[int, float]],
               ) -> torch.Tensor:
    """Add ``bias[id]`` to each listed token's logit (OpenAI's and KoboldCpp's rule).

    Raises:
        SamplerError: A token id outside the vocabulary.
    """
    from limamono.samplers import functions as F
    from limamono.samplers.settings import check_logit_bias

    F._check_logits(logits)
    pairs = check_logit_bias(dict(bias) if not isinstance(bias, dict) else bias)
    check_in_vocab("logit_bias", [t for t, _ in pairs], logits.numel())
    out = logits.clone()
    for token, amount in pairs:
        out[token] += amount
    return out


def check_in_vocab(field: str, ids: Iterable[int], vocab: int) -> None:
    """Raise ``SamplerError`` naming the first id outside ``[0, vocab)``."""
    from limamono.samplers.settings import SamplerError

    for token in ids:
        if not 0 <= token < vocab:
            raise SamplerError(f"{field}[{token}]", token, f"token id out of range; this "
                               f"model's ids are 0-{vocab - 1}")
