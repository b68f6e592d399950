"""Run-time LoRA adapters on the llama.cpp engine: load time and the cost of mixed sets.

The embedded model's GGUF with 2 slots and the demo adapter (converted before timing).
Measures the time ``load_adapter`` takes, then two greedy streams of at most T tokens
started together: tokens of both per second of wall time (prompt read included; a greedy
reply may end early at EOS), median of R runs (cache cleared before each), side by side:

- ``same-base``: both on the base model (one step decodes both rows);
- ``same-lora``: both under the demo adapter;
- ``mixed``: one base, one adapter. llama.cpp applies adapters per context, so each step
  holds one set and the two streams take turns.

Usage::

    .venv/bin/python bench/lora_switch.py --tokens 64 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = ["Mira looked out over the harbour. The boats were",
           "The lighthouse keeper climbed the stairs and"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.gguf_lora import convert
    from limamono.models.resolve import embedded_gguf
    from limamono.samplers import get_preset

    demo = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo"
    lora = Path(tempfile.mkdtemp()) / "demo.gguf"
    convert(demo, embedded_gguf(), lora)
    engine = LlamaCppEngine(embedded_gguf(), context_length=512, threads=args.threads,
                            parallel=2)
    began = time.perf_counter()
    engine.load_adapter("demo", lora)
    print(f"load_adapter: {1000 * (time.perf_counter() - began):.1f} ms")

    def together(choices: list[dict[str, float]]) -> tuple[float, int]:
        engine.clear_cache()
        start = threading.Barrier(len(choices))
        counts = [0] * len(choices)

        def run(i: int) -> None:
            start.wait()
            with engine.using_adapters(choices[i]):
                for _ in engine.stream_tokens(engine.prompt_ids(PROMPTS[i]),
                                              get_preset("greedy"), args.tokens):
                    counts[i] += 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(choices))]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - began, sum(counts)

    cases = {"same-base": [{}, {}], "same-lora": [{"demo": 1.0}, {"demo": 1.0}],
             "mixed": [{}, {"demo": 1.0}]}
    together(cases["same-base"])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, so load changes hit every case alike
        for name, choices in cases.items():
            seconds, tokens = together(choices)  # a greedy reply may end early (EOS)
            rates[name].append(tokens / seconds)
    base = statistics.median(rates["same-base"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:10s} median {median:.1f} tok/s (both streams, prompt read included; "
              f"{median / base:.2f}x same-base)")
    engine.close()


if __name__ == "__main__":
    main()
