"""Grammars on the llama.cpp engine: the cost of llama.cpp's grammar mask per token.

The embedded model's GGUF, one thread. Side by side in each run, the same prompt and
seeded sampler preset (``limamono``, soft landing off) with and without a JSON-schema
grammar: milliseconds per generated token (wall time / tokens, prompt cached by a warm-up),
and the grammar mask alone (``llama_sampler_apply`` over the whole vocabulary), medians of
R runs.

Usage::

    .venv/bin/python bench/grammar.py --tokens 48 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string"}, "mood": {"type": "string"},
                         "age": {"type": "integer"}},
          "required": ["name", "mood", "age"]}
PROMPT = "A character sheet as JSON:\n"


def main() -> None:
    import torch

    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf
    from limamono.samplers import get_preset
    from limamono.samplers.wire import grammar_from_fields

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    engine = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1)
    grammar = grammar_from_fields({"json_schema": SCHEMA})
    base = get_preset("limamono").replace(soft_landing=False, seed=1, ban_eos_token=True)
    variants = {"free text": base,
                "JSON schema": base.replace(ban_eos_token=False, grammar=grammar)}
    print(f"load average before: {os.getloadavg()}")
    engine.generate(PROMPT, base, 1)  # the prompt into the KV cache
    per_token: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, settings in variants.items():
            began = time.perf_counter()
            reply = engine.generate(PROMPT, settings, args.tokens)
            per_token[name].append((time.perf_counter() - began) * 1000
                                   / max(reply.completion_tokens, 1))
    assert grammar is not None
    state = engine._open_grammar(grammar)
    logits = torch.randn(engine.n_vocab, generator=torch.Generator().manual_seed(0))
    masks = []
    for _ in range(30):
        began = time.perf_counter()
        state.mask(logits)
        masks.append((time.perf_counter() - began) * 1000)
    state.close()
    for name, values in per_token.items():
        print(f"{name}: {statistics.median(values):.1f} ms per token")
    print(f"grammar mask over {engine.n_vocab} tokens: {statistics.median(masks):.1f} ms")
    print(f"load average after: {os.getloadavg()}")
    engine.close()


if __name__ == "__main__":
    main()
