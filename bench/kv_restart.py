"""A restarted server continues a 20-turn chat: TTFT of the next turn with the saved KV
state (``--kv-save-mb``) against reading the whole prompt again.

Engine-level (the llama.cpp engine the server runs, embedded model): a first engine reads
the chat and its reply (the state is saved when the slot closes), is closed (the
restart), and a new engine answers the next turn; a third engine without saved states
answers the same prompt. Also the cold TTFT of a 1,311-token prompt (the size of the
demo's first turn) at 1 and 2 threads.

Usage::

    .venv/bin/python bench/kv_restart.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.engine.llamacpp import LlamaCppEngine
from limamono.models.resolve import embedded_gguf
from limamono.samplers import get_preset

LINES = ["The storm has not let up since noon.", "Then the boats will stay in harbour.",
         "Someone has to light the lamp tonight.", "I climbed the stairs an hour ago.",
         "The glass on the north side is cracked.", "We can tape it until morning."]


def chat(turns: int) -> str:
    messages = [Message("char" if i % 2 else "user", f"{LINES[i % len(LINES)]} (turn {i})")
                for i in range(turns)]
    conversation = Conversation(Character("Edda Varn", "Edda keeps the Saltreach "
                                          "lighthouse. She cannot swim."), User("Corin"),
                                "A courier knocks during a storm.", messages)
    return fmt.render(conversation, open_response=True)


def ttft(engine: LlamaCppEngine, prompt: str) -> float:
    began = time.perf_counter()
    stream = engine.stream_tokens(engine.prompt_ids(prompt), get_preset("greedy"), 1)
    next(stream)
    took = time.perf_counter() - began
    stream.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    model, t = embedded_gguf(), args.threads
    before, after = chat(args.turns - 1), chat(args.turns)
    with tempfile.TemporaryDirectory() as folder:
        first = LlamaCppEngine(model, context_length=4096, threads=t, state_dir=Path(folder))
        first.prompt_logits(first.prompt_ids(before))
        first.close()  # the restart
        restarted = LlamaCppEngine(model, context_length=4096, threads=t,
                                   state_dir=Path(folder))
        with_state = ttft(restarted, after)
        restored = restarted.restored_tokens
        restarted.close()
    fresh = LlamaCppEngine(model, context_length=4096, threads=t)
    without = ttft(fresh, after)
    tokens = len(fresh.prompt_ids(after))
    fresh.close()
    print(json.dumps({"turns": args.turns, "prompt_tokens": tokens, "restored": restored,
                      "ttft_with_state_s": round(with_state, 3),
                      "ttft_without_s": round(without, 3),
                      "speedup": round(without / with_state, 1),
                      "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}))
    # Cold reads of a 1,311-token prompt (the size of the demo's first turn) by threads.
    ids = LlamaCppEngine(model, context_length=4096, threads=1).prompt_ids(chat(60))[:1311]
    for threads in (1, 2):
        engine = LlamaCppEngine(model, context_length=4096, threads=threads)
        began = time.perf_counter()
        next(engine.stream_tokens(ids, get_preset("greedy"), 1))
        took = time.perf_counter() - began
        engine.close()
        print(json.dumps({"cold_prompt_tokens": len(ids), "threads": threads,
                          "ttft_s": round(took, 3), "prompt_tok_per_s": round(len(ids) / took),
                          "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
