"""Issue 24, defect 19 and issue 20 item 2: greedy output cold, cached and forked.

llama.cpp's kernels round the last prompt token's logits differently when that token is
read inside a prompt chunk and when it is read alone (a batch of one row). A cached prompt,
an ``n``-choice fork and a restored state read only that token, alone; since issue 20 a
cold read does too (``limamono.engine.loop.prefill_end``). On the audit's request
(``shared/testdata/repros/audit-3/15_greedy.json``, demo adapter) this reports, per engine:

- cold vs cached: the greedy tokens of a cold read and of the same prompt again (cached);
- the last prompt token's logits read inside the chunk (the shape before the rule) and
  alone (the rule), and the prompt before it read in other chunk sizes;
- the rule's cost: a cold prompt read as one chunk against all but the last token, then
  the last alone (paired runs, interleaved), and the lone token's evaluation itself.

Usage::

    .venv/bin/python bench/greedy_cache.py [--adapter demo] [--threads 2] [--runs 5]
        [--backend llamacpp|torch|both] [--tokens 80]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPRO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "repros" / "audit-3"


def first_diff(a: list[int], b: list[int]) -> int | None:
    """The first index where the two token lists differ (None: equal up to the shorter)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def read(engine: Any, ids: list[int], chunks: list[int]) -> tuple[Any, list[float]]:
    """Logits after reading ``ids`` on an empty cache in evaluations of the given sizes
    (straight through the engine's KV slot, past the loop's rule), and each one's seconds."""
    engine.clear_cache()
    start = engine._open_slot(ids)
    times, begin = [], 0
    try:
        for size in chunks:
            took = time.perf_counter()
            logits = start.slot.eval(ids[begin:begin + size])
            times.append(time.perf_counter() - took)
            begin += size
    finally:
        engine._close_slot(start.slot, None)
    assert begin == len(ids)
    return logits, times


def _min_median(values: list[float]) -> list[float]:
    return [round(min(values), 4), round(statistics.median(values), 4)]


def measure(engine: Any, prompt: str, max_tokens: int, runs: int) -> dict[str, Any]:
    import torch

    from limamono.samplers import get_preset

    settings = replace(get_preset("greedy"), seed=1)
    ids = engine.prompt_ids(prompt)
    n = len(ids)
    engine.clear_cache()
    cold = list(engine.stream_tokens(ids, settings, max_tokens))
    cached = list(engine.stream_tokens(ids, settings, max_tokens))
    inside, _ = read(engine, ids, [n])
    alone, _ = read(engine, ids, [n - 1, 1])
    other, _ = read(engine, ids, [16, 32, n - 49, 1])
    whole_s, split_s, lone_s = [], [], []
    for _ in range(runs):  # interleaved pairs: the load changes both alike
        whole_s.append(sum(read(engine, ids, [n])[1]))
        times = read(engine, ids, [n - 1, 1])[1]
        split_s.append(sum(times))
        lone_s.append(times[1])
    top = torch.topk(inside, 2).values
    return {
        "prompt_tokens": n, "reply_tokens": len(cold),
        "cold_vs_cached_first_difference": first_diff(cold, cached),
        "cold_equals_cached": cold == cached,
        "last_token_in_chunk_vs_alone_max_abs_diff": round(float((inside - alone).abs().max()),
                                                           6),
        "last_token_in_chunk_vs_alone_mean_abs_diff": round(
            float((inside - alone).abs().mean()), 6),
        "last_token_top2_margin": round(float(top[0] - top[1]), 4),
        "prefix_in_16_32_rest_vs_one_chunk_max_abs_diff": round(
            float((other - alone).abs().max()), 6),
        # On a shared machine a run can stall for seconds (a thread descheduled): the
        # minimum is the work's cost, the median what this load gave.
        "cold_read_one_chunk_s_min_median": _min_median(whole_s),
        "cold_read_last_alone_s_min_median": _min_median(split_s),
        "lone_last_token_s_min_median": _min_median(lone_s),
        "extra_ratio_of_minimums": round(min(split_s) / min(whole_s), 3),
    }


def main() -> None:
    from limamono.engine import load_engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=["llamacpp", "torch", "both"], default="both")
    parser.add_argument("--tokens", type=int, default=None,
                        help="greedy tokens of the cold/cached runs (default: the request's)")
    args = parser.parse_args()
    body = json.loads((REPRO / "15_greedy.json").read_text())
    out: dict[str, Any] = {"load_average_start": [round(x, 2) for x in os.getloadavg()]}
    backends = ["llamacpp", "torch"] if args.backend == "both" else [args.backend]
    for backend in backends:
        engine = load_engine("smollm2-135m", adapter=args.adapter, threads=args.threads,
                             backend=backend)
        try:
            out[backend] = measure(engine, body["prompt"], args.tokens or body["max_tokens"],
                                   args.runs)
        finally:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
