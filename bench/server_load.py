"""Load test of `limamono serve`: N concurrent streaming clients against the real engine.

Starts `create_app` with the real embedded engine in a child process (uvicorn on a
loopback port chosen by the OS, so the clients do not share the server's GIL), then:

0. One client streaming back to back for T/4 seconds (the baseline).
1. Load: N clients stream ``/v1/completions`` back to back for T seconds. Reports
   requests/s, generated tokens/s, time to first token (p50/p95; it includes the wait in
   the FIFO queue, since one engine serves everyone) and errors.
2. Cancellation: N streams at once; half of them are dropped after their first few
   chunks. For each drop, the time until the server counted the job as cancelled and freed
   the engine (polled on ``/api/extra/perf``), the server-side cancel-to-free latency, and
   whether the other half completed without error.
3. Rejection: invalid bodies (NaN, out-of-range samplers, absurd lengths, non-objects,
   1000 stop strings) sent over HTTP: latency of the 400/422, and no generation started.
4. Overload: 4 x (queue + 1) short requests at once: each must get 200, or 503 with
   ``Retry-After``; nothing else (no 5xx, no timeout).

Usage::

    .venv/bin/python bench/server_load.py --clients 8 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User


@dataclass
class LoadResult:
    """Figures of the load phase."""

    clients: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Requests/s, tokens/s, TTFT p50/p95 (seconds) and errors."""
        return {"clients": self.clients, "duration_s": round(self.duration_s, 1),
                "requests": self.requests, "errors": self.errors,
                "requests_per_s": round(self.requests / self.duration_s, 3),
                "tokens_per_s": round(self.tokens / self.duration_s, 2),
                "ttft_p50_s": round(percentile(self.ttft_s, 50), 3),
                "ttft_p95_s": round(percentile(self.ttft_s, 95), 3)}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def bench_prompt() -> str:
    """A short Limamono prompt with an open character turn."""
    conversation = Conversation(
        Character("Edda Varn", "Edda keeps the Saltreach lighthouse. She cannot swim."),
        User("Corin"), "A courier knocks during a storm.",
        [Message("char", "Edda looked up from her logbook. \"Who's there?\""),
         Message("user", "A courier, with a letter for the keeper.")])
    return fmt.render(conversation, open_response=True)


def serve_child(model: str, threads: int, queue: int) -> None:
    """The server process: load the engine, warm it up, bind port 0, print it, serve."""
    import uvicorn

    from limamono.engine import load_engine
    from limamono.samplers import get_preset
    from limamono.server import ServerConfig, create_app

    engine = load_engine(model, threads=threads)
    # One untimed reply first: the first forward passes are several times slower (warm-up).
    engine.generate(bench_prompt(), get_preset("limamono"), 8)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it every small response write waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]} MODEL {engine.model_name}", flush=True)
    app = create_app(engine, ServerConfig(queue=queue))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def start_server(args: argparse.Namespace) -> tuple[str, str, subprocess.Popen[str]]:
    """Start the server in its own process (its own GIL); return URL, model and process."""
    command = [sys.executable, __file__, "--serve", "--model", args.model,
               "--threads", str(args.threads), "--clients", str(args.clients)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("PORT "):
            _, port, _, model = line.split()
            return f"http://127.0.0.1:{port}", model, child
    raise RuntimeError(f"the server process exited with {child.wait()} before serving")


def make_client(url: str) -> httpx.AsyncClient:
    """A client with Nagle's algorithm off: httpx writes a POST's headers and body
    separately, and with Nagle on, the body waits for a delayed ACK (about 40 ms)."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    return httpx.AsyncClient(base_url=url, timeout=600,
                             transport=httpx.AsyncHTTPTransport(socket_options=nodelay))


async def stream_once(client: httpx.AsyncClient, body: dict[str, Any],
                      drop_after: int | None = None) -> tuple[float | None, int, bool]:
    """One streaming request: (TTFT, completion tokens, ok). Drops after N chunks if asked."""
    start = time.perf_counter()
    ttft, tokens, chunks = None, 0, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None, 0, False
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return ttft, tokens, False
            if data["choices"][0]["text"] and ttft is None:
                ttft = time.perf_counter() - start
            chunks += 1
            tokens = data.get("usage", {}).get("completion_tokens", tokens)
            if drop_after is not None and chunks >= drop_after:
                return ttft, tokens, True  # leaving the block closes the connection
    return ttft, tokens, True


async def load_phase(url: str, clients: int, duration: float, max_tokens: int) -> LoadResult:
    """N clients streaming back to back until the deadline."""
    result = LoadResult(clients, duration)
    body = {"prompt": bench_prompt(), "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    deadline = time.perf_counter() + duration
    began = time.perf_counter()

    async def worker() -> None:
        async with make_client(url) as client:
            while time.perf_counter() < deadline:
                try:
                    ttft, tokens, ok = await stream_once(client, body)
                except httpx.HTTPError:
                    ttft, tokens, ok = None, 0, False
                result.requests += ok
                result.errors += not ok
                result.tokens += tokens
                if ttft is not None:
                    result.ttft_s.append(ttft)

    await asyncio.gather(*(worker() for _ in range(clients)))
    result.duration_s = time.perf_counter() - began
    return result


async def cancel_phase(url: str, clients: int, max_tokens: int) -> dict[str, Any]:
    """N streams at once, every other one dropped after 3 chunks; measure the freeing."""
    body = {"prompt": bench_prompt(), "max_tokens": max_tokens, "stream": True}
    async with make_client(url) as perf:
        before = (await perf.get("/api/extra/perf")).json()["cancelled"]
        latencies: list[float] = []

        async def dropper() -> bool:
            async with make_client(url) as client:
                _, _, ok = await stream_once(client, body, drop_after=3)
            dropped_at = time.perf_counter()
            seen = len(latencies) + before
            # The drop is freed when the server's cancelled count passes what it was.
            while (await perf.get("/api/extra/perf")).json()["cancelled"] <= seen:
                if time.perf_counter() - dropped_at > 10:
                    return False
                await asyncio.sleep(0.01)
            latencies.append(time.perf_counter() - dropped_at)
            return ok

        async def keeper() -> bool:
            async with make_client(url) as client:
                return (await stream_once(client, body))[2]

        # Start the droppers first so that they hold the engine when they drop.
        tasks = [dropper() if i % 2 == 0 else keeper() for i in range(clients)]
        results = await asyncio.gather(*tasks)
        server = (await perf.get("/api/extra/perf")).json()
    kept = results[1::2]
    return {"streams": clients, "dropped": len(results[0::2]),
            "dropped_ok": sum(results[0::2]), "kept_completed": sum(kept),
            "kept_errors": len(kept) - sum(kept),
            "freed_within_1s": sum(1 for x in latencies if x <= 1.0),
            "client_seen_free_max_s": round(max(latencies, default=0.0), 3),
            "server_cancel_to_free_max_s": server["max_cancel_latency_s"],
            "server_cancelled": server["cancelled"] - before}


async def overload_phase(url: str, queue: int, factor: int = 4) -> dict[str, Any]:
    """``factor`` x (queue + 1) short requests at once: only 200 or 503 + Retry-After."""
    body = {"prompt": bench_prompt(), "max_tokens": 4}
    statuses: dict[int, int] = {}
    missing_retry_after = 0

    async def one() -> None:
        nonlocal missing_retry_after
        async with make_client(url) as client:
            response = await client.post("/v1/completions", json=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 503 and "retry-after" not in response.headers:
            missing_retry_after += 1

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(factor * (queue + 1))))
    return {"requests": factor * (queue + 1), "statuses": statuses,
            "missing_retry_after": missing_retry_after,
            "seconds": round(time.perf_counter() - start, 1)}


#: Invalid bodies (raw JSON text) that must be refused before any generation.
INVALID_BODIES = [
    '{"prompt": "x", "temperature": NaN}', '{"prompt": "x", "top_p": 1.5}',
    '{"prompt": "x", "top_k": -5}', '{"prompt": "x", "max_tokens": -186}',
    '{"prompt": "x", "max_tokens": 1000000000}', '{"prompt": "x", "n": 1000000000}',
    '{"prompt": "x", "temperature": "hot"}', '[1, 2]', '{"prompt": "x",',
    '{"prompt": "x", "stop": [' + ", ".join(['"s"'] * 1000) + "]}",
]


async def rejection_phase(url: str, rounds: int = 20) -> dict[str, Any]:
    """Latency of refusing invalid bodies over HTTP, and whether any reached the engine."""
    latencies, statuses = [], set()
    async with make_client(url) as client:
        before = (await client.get("/api/extra/perf")).json()["total_gens"]
        for _ in range(rounds):
            for raw in INVALID_BODIES:
                start = time.perf_counter()
                response = await client.post("/v1/completions", content=raw,
                                             headers={"Content-Type": "application/json"})
                latencies.append(time.perf_counter() - start)
                statuses.add(response.status_code)
        after = (await client.get("/api/extra/perf")).json()["total_gens"]
    return {"requests": len(latencies), "statuses": sorted(statuses),
            "p50_ms": round(1000 * percentile(latencies, 50), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "generations_started": after - before}


def main(argv: list[str] | None = None) -> int:
    """Run the phases and print the figures (and write them as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_child(args.model, args.threads, queue=2 * args.clients)
        return 0

    url, model, child = start_server(args)
    try:
        single = asyncio.run(load_phase(url, 1, args.duration / 4, args.max_tokens))
        load = asyncio.run(load_phase(url, args.clients, args.duration, args.max_tokens))
        cancel = asyncio.run(cancel_phase(url, args.clients, args.max_tokens))
        rejected = asyncio.run(rejection_phase(url))
        overload = asyncio.run(overload_phase(url, queue=2 * args.clients))
    finally:
        child.terminate()
        child.wait(30)
    figures = {"model": model, "max_tokens": args.max_tokens, "threads": args.threads,
               "one_client": single.summary(), "load": load.summary(),
               "cancellation": cancel, "rejection": rejected, "overload": overload}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    ok = (load.errors == 0 and single.errors == 0 and cancel["kept_errors"] == 0
          and rejected["generations_started"] == 0 and max(rejected["statuses"]) < 500
          and set(overload["statuses"]) <= {200, 503} and overload["missing_retry_after"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
