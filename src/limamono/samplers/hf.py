"""The sampler chain as a transformers ``LogitsProcessor``, for ``model.generate``.

Kept apart from the chain so that only callers of ``model.generate`` import transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from limamono.samplers.chain import make_sampler
from limamono.samplers.settings import SamplerSettings
from limamono.samplers.vocab import Vocabulary


class SamplerLogitsProcessor(LogitsProcessor):
    """Runs ``make_sampler(settings).process`` on each row of a batch.

    It applies penalties and every filter, temperature included (``vocab``: the model's,
    needed for DRY breakers and XTC's exclusions), so ``generate`` must not add its own:
    pass ``generate_kwargs(settings)``, which neutralises HF's defaults (its ``top_k=50``
    among them).
    """

    def __init__(self, settings: SamplerSettings, vocab: Vocabulary | None = None) -> None:
        self.sampler = make_sampler(settings, vocab)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids [batch, seq], scores [batch, vocab] -> new scores [batch, vocab]."""
        rows = [self.sampler.process(ids, row) for ids, row in zip(input_ids, scores, strict=True)]
        return torch.stack(rows)  # type: ignore[return-value]  # transformers' annotation


def generate_kwargs(settings: SamplerSettings, vocab: Vocabulary | None = None,
                    ) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` that sample with ``settings`` and nothing else.

    The seed is not set here: call ``torch.manual_seed(settings.seed)`` before ``generate``
    when reproducibility matters (``generate`` draws from torch's global generator).
    """
    processors = LogitsProcessorList([SamplerLogitsProcessor(settings, vocab)])
    if settings.greedy:
        return {"do_sample": False, "logits_processor": processors}
    # neutral values override whatever the model's generation_config sets
    return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None,
            "typical_p": 1.0, "repetition_penalty": 1.0, "logits_processor": processors}
