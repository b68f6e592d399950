"""Cold first turn on the llama.cpp engine: time to first token and decode speed.

The demo's first turn reads a 1,311-token prompt with nothing cached, then writes 120
tokens. This runs the same shape through ``LlamaCppEngine.stream_tokens`` (the decode loop
the demo and the server use, prompt chunking included): a prompt of ``--tokens`` tokens cut
from the bundled example characters, greedy, ``--reply`` tokens, on a fresh cache each run.
Several GGUF files can be compared side by side: the runs alternate between them.

    PYTHONPATH=src .venv/bin/python bench/cold_prompt.py --runs 3
    PYTHONPATH=src .venv/bin/python bench/cold_prompt.py --gguf embedded,/tmp/q8_0.gguf
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prompt_ids(engine, tokens: int) -> list[int]:
    text = "\n".join(p.read_text() for p in sorted((REPO / "examples" / "characters")
                                                   .glob("*.yaml")))
    ids = engine.prompt_ids(text)
    while len(ids) < tokens:
        ids += ids
    return ids[:tokens]


def main() -> None:
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.gguf_lora import gguf_lora_for
    from limamono.models.resolve import embedded_gguf, resolve_adapter
    from limamono.samplers import get_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default="embedded",
                        help="GGUF files, comma-separated ('embedded': the shipped one)")
    parser.add_argument("--adapter", default="demo", help="'demo', 'none' or a folder")
    parser.add_argument("--threads", default="1", help="thread counts, comma-separated")
    parser.add_argument("--tokens", type=int, default=1311)
    parser.add_argument("--reply", type=int, default=120)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    files = [embedded_gguf() if g == "embedded" else Path(g) for g in args.gguf.split(",")]
    adapter = resolve_adapter(None if args.adapter == "none" else args.adapter,
                              "smollm2-135m")
    engines = {}
    for path in files:
        for threads in (int(t) for t in args.threads.split(",")):
            lora = None if adapter is None else gguf_lora_for(Path(adapter), path)
            engine = LlamaCppEngine(path, context_length=args.tokens + args.reply + 8,
                                    threads=threads, cache_entries=0, lora=lora)
            list(engine.stream_tokens(prompt_ids(engine, 64), get_preset("greedy"), 2))
            engines[f"{path.name} threads={threads}"] = engine
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, engine in engines.items():
            ids = prompt_ids(engine, args.tokens)
            load = os.getloadavg()[0]
            began = time.perf_counter()
            first = None
            count = 0
            for _token in engine.stream_tokens(ids, get_preset("greedy"), args.reply):
                count += 1
                if first is None:
                    first = time.perf_counter() - began
            total = time.perf_counter() - began
            assert first is not None
            times[name].append((first, (count - 1) / max(total - first, 1e-9), load))
            print(f"{name}: TTFT {first:.2f} s ({args.tokens / first:.0f} prompt tokens/s), "
                  f"decode {times[name][-1][1]:.1f} tokens/s, total {total:.2f} s, "
                  f"load {load:.2f}", flush=True)
    print("median TTFT / decode tokens/s:")
    for name, rows in times.items():
        print(f"  {name}: {statistics.median(r[0] for r in rows):.2f} s / "
              f"{statistics.median(r[1] for r in rows):.1f}")


if __name__ == "__main__":
    main()
