"""Parallel slots against one slot: N concurrent streaming clients, and `n` against N requests.

Starts `create_app` with the embedded model on the llama.cpp engine in a child process
(one per configuration, loopback, OS-chosen port), then for ``--parallel 1`` and for
``--parallel P``, side by side in one run:

1. For 1, 2, 4 and 8 clients streaming ``/v1/completions`` back to back for T seconds:
   aggregate generated tokens/s and time to first token (p50/p95; includes the time a
   request waits for a slot).
2. ``n`` = 4 in one request against 4 sequential single requests (seeds s..s+3): time to
   all four replies.

Usage::

    .venv/bin/python bench/server_slots.py --duration 20 --slots 8 --json /tmp/slots.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from server_load import bench_prompt, load_phase, make_client


def serve_child(parallel: int, threads: int, queue: int) -> None:
    """The server process: the embedded GGUF with ``parallel`` slots, warmed up, on port 0."""
    import uvicorn

    from limamono.engine import load_engine
    from limamono.engine.load import LlamaOptions
    from limamono.samplers import get_preset
    from limamono.server import ServerConfig, create_app

    engine = load_engine(threads=threads, backend="llamacpp",
                         llama=LlamaOptions(parallel=parallel))
    engine.generate(bench_prompt(), get_preset("limamono"), 8)  # warm-up, untimed
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = create_app(engine, ServerConfig(queue=queue))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def start(parallel: int, threads: int) -> tuple[str, subprocess.Popen[str]]:
    command = [sys.executable, __file__, "--serve", "--slots", str(parallel),
               "--threads", str(threads)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("PORT "):
            return f"http://127.0.0.1:{line.split()[1]}", child
    raise RuntimeError(f"the server process exited with {child.wait()} before serving")


async def choices_phase(url: str, max_tokens: int) -> dict[str, float]:
    """Seconds to four replies: one request with n=4, then four requests one after another."""
    body = {"prompt": bench_prompt(), "max_tokens": max_tokens, "seed": 11,
            "temperature": 1.0}
    async with make_client(url) as client:
        await client.post("/v1/completions", json={**body, "max_tokens": 1})  # cache it
        began = time.perf_counter()
        together = await client.post("/v1/completions", json={**body, "n": 4})
        n4 = time.perf_counter() - began
        began = time.perf_counter()
        singles = [await client.post("/v1/completions", json={**body, "seed": 11 + i})
                   for i in range(4)]
        seq = time.perf_counter() - began
    same = [c["text"] for c in together.json()["choices"]] == \
        [s.json()["choices"][0]["text"] for s in singles]
    return {"n4_s": round(n4, 3), "sequential_s": round(seq, 3),
            "ratio": round(n4 / seq, 3), "same_texts": same}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=8, help="slots of the batched server")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load run")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_child(args.slots, args.threads, queue=64)
        return 0
    figures: dict[str, Any] = {"runs": []}
    for parallel in (1, args.slots):
        url, child = start(parallel, args.threads)
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                result = asyncio.run(load_phase(url, clients, args.duration, args.max_tokens))
                row = {"parallel": parallel, **result.summary(), "load": loadavg()}
                print(json.dumps(row), flush=True)
                figures["runs"].append(row)
            row = {"parallel": parallel, **asyncio.run(choices_phase(url, args.max_tokens)),
                   "load": loadavg()}
            print(json.dumps(row), flush=True)
            figures.setdefault("choices", []).append(row)
        finally:
            child.terminate()
            child.wait()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
