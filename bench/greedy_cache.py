"""Issue 24, defect 19: why one greedy request gives one text cold and another cached.

On the llama.cpp engine (embedded model, demo adapter) the audit's request
(``shared/testdata/repros/audit-3/15_greedy.json``) is run four ways:

- cold: the whole prompt read in one batch, then decoding;
- cached: the same prompt again: its KV is reused and only its last token is read again,
  alone (a batch of one), for the next token's logits;
- split cold: a fresh engine reads all but the last prompt token, then the full prompt
  (so the last token is read alone, as in the cached run);
- the last prompt token's logits read in the batch and read alone.

Usage::

    .venv/bin/python bench/greedy_cache.py [--adapter demo] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

REPRO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "repros" / "audit-3"


def first_diff(a: list[int], b: list[int]) -> int | None:
    """The first index where the two token lists differ (None: equal up to the shorter)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def main() -> None:
    import torch

    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    body = json.loads((REPRO / "15_greedy.json").read_text())
    settings = replace(get_preset("greedy"), seed=1)

    def fresh() -> Any:
        return load_engine("smollm2-135m", adapter=args.adapter, threads=args.threads,
                           backend="llamacpp")

    def run(engine: Any, ids: list[int]) -> list[int]:
        return list(engine.stream_tokens(ids, settings, body["max_tokens"]))

    engine = fresh()
    ids = engine.prompt_ids(body["prompt"])
    cold, cached = run(engine, ids), run(engine, ids)
    engine.close()
    engine = fresh()
    run(engine, ids[:-1])
    split = run(engine, ids)
    whole = engine.prompt_logits(ids)
    engine.clear_cache()
    engine.prompt_logits(ids[:-1])
    alone = engine.prompt_logits(ids)
    k = first_diff(cold, cached)
    gap = None
    if k is not None:
        engine.clear_cache()
        here = engine.prompt_logits(ids + cold[:k])
        gap = float(here[cold[k]] - here[cached[k]])
    engine.close()
    diff = (whole - alone).abs()
    top = torch.topk(whole, 2).values
    print(json.dumps({
        "prompt_tokens": len(ids), "reply_tokens": len(cold),
        "cold_vs_cached_first_difference": k,
        "split_cold_vs_cached_first_difference": first_diff(split, cached),
        "split_cold_equals_cached": split == cached,
        "last_token_logits_max_abs_diff": round(float(diff.max()), 4),
        "last_token_logits_mean_abs_diff": round(float(diff.mean()), 4),
        "last_token_top2_margin": round(float(top[0] - top[1]), 4),
        "logit_gap_at_divergence": None if gap is None else round(gap, 4),
    }, indent=1))


if __name__ == "__main__":
    main()
