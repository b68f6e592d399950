"""Greedy output and the KV cache (issue 24, defect 19).

llama.cpp's kernels give slightly different logits for a token read in a batch and the
same token read alone (a batch of one), so a prompt read cold and the same prompt read
from the cache (only its last token read again, alone) can part once two candidates are
nearly tied. The reuse itself is exact: a cold run that reads the last prompt token alone
gives the cached run's tokens exactly. Evidence and figures: docs/ARCHITECTURE.md ("Greedy
output and the cache") and ``bench/greedy_cache.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

REPRO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "repros" / "audit-3"


@pytest.mark.slow
def test_cached_greedy_tokens_equal_a_cold_run_of_the_same_evaluation_shape() -> None:
    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    path = REPRO / "15_greedy.json"
    if not path.is_file():
        pytest.skip("../shared/testdata/repros is not present")
    body = json.loads(path.read_text())
    settings = replace(get_preset("greedy"), seed=1)
    engine = load_engine("smollm2-135m", adapter="demo", threads=2, backend="llamacpp")
    try:
        ids = engine.prompt_ids(body["prompt"])
        list(engine.stream_tokens(ids[:-1], settings, 1))
        split = list(engine.stream_tokens(ids, settings, body["max_tokens"]))
        assert engine.stats.last_reused == len(ids) - 1
        cached = list(engine.stream_tokens(ids, settings, body["max_tokens"]))
        again = list(engine.stream_tokens(ids, settings, body["max_tokens"]))
        assert len(split) == body["max_tokens"]
        assert split == cached == again  # same evaluation shape, same tokens: reuse is exact
    finally:
        engine.close()
