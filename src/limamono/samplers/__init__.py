"""Samplers: pure functions on logits, one factory (``make_sampler``) and named presets.

Settings, presets and the wire-alias mapping import without torch (cheap for the CLI and
the server schemas); the torch parts (``Sampler``, ``make_sampler``, the pure functions)
and the transformers part (``SamplerLogitsProcessor``) load on first use.

Usage::

    from limamono.samplers import get_preset, make_sampler
    sampler = make_sampler(get_preset("limamono"))
    next_id = sampler.sample(context_ids, logits)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from limamono.samplers.settings import (
    KOBOLDCPP_DEFAULT_ORDER,
    KOBOLDCPP_SAMPLERS,
    MAX_LOGPROBS,
    PRESETS,
    TEXTGEN_DEFAULT_PRIORITY,
    SamplerError,
    SamplerSettings,
    get_preset,
)
from limamono.samplers.wire import settings_from_fields, unsupported_fields

if TYPE_CHECKING:
    from limamono.samplers.chain import Sampler, bench_overhead, make_sampler
    from limamono.samplers.functions import (
        apply_temperature,
        koboldcpp_repetition_penalty,
        min_p,
        presence_frequency_penalty,
        repetition_penalty,
        tail_free,
        top_a,
        top_k,
        top_p,
        typical_p,
    )
    from limamono.samplers.hf import SamplerLogitsProcessor, generate_kwargs

_LAZY = {
    "Sampler": "chain", "make_sampler": "chain", "bench_overhead": "chain",
    "apply_temperature": "functions", "top_k": "functions", "top_p": "functions",
    "min_p": "functions", "typical_p": "functions", "top_a": "functions",
    "tail_free": "functions", "repetition_penalty": "functions",
    "presence_frequency_penalty": "functions", "koboldcpp_repetition_penalty": "functions",
    "SamplerLogitsProcessor": "hf", "generate_kwargs": "hf",
}

__all__ = [
    "KOBOLDCPP_DEFAULT_ORDER", "KOBOLDCPP_SAMPLERS", "MAX_LOGPROBS", "PRESETS",
    "TEXTGEN_DEFAULT_PRIORITY",
    "Sampler", "SamplerError", "SamplerLogitsProcessor", "SamplerSettings",
    "apply_temperature", "bench_overhead", "generate_kwargs", "get_preset",
    "koboldcpp_repetition_penalty", "make_sampler", "min_p", "presence_frequency_penalty",
    "repetition_penalty", "settings_from_fields", "tail_free", "top_a", "top_k", "top_p",
    "typical_p", "unsupported_fields",
]


def __getattr__(name: str) -> Any:
    """Import the torch/transformers parts on first use."""
    if name in _LAZY:
        module = importlib.import_module(f"limamono.samplers.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'limamono.samplers' has no attribute {name!r}")
