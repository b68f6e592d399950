"""Slow and idle connections against a running server (issue 24, defect 2).

Start a server first, e.g. with a small descriptor limit so that a flood can reach it:

    bash -c 'ulimit -n 1024; exec limamono serve --port 5101' 2> serve.err &
    python bench/connections.py --port 5101 --hold 30 --flood 3000

``probe``: one connection of each slow kind (half a request line, headers dribbled every
2 s, a body dribbled every 2 s) and 100 idle kept-alive connections, held up to ``--hold``
seconds: when each was closed, and what the server answered. ``flood``: ``--flood`` idle
connections opened as fast as possible (past the descriptor limit) and held; then the
answer to ``/health`` and its time 2 s and 12 s later. Count the server's log lines
afterwards (``wc -l serve.err``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from typing import Any

KINDS = {
    "partial_line": b"GET /he",
    "slow_headers": b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    "slow_body": b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 b"application/json\r\nContent-Length: 100\r\n\r\n{\"pro",
    "idle_keepalive": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


async def one(port: int, kind: str, hold: float) -> tuple[str, float | None, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(KINDS[kind])
    await writer.drain()

    async def dribble() -> None:
        while True:
            await asyncio.sleep(2)
            writer.write(b"X-a: b\r\n" if kind == "slow_headers" else b"m")
            await writer.drain()

    task = asyncio.ensure_future(dribble()) if kind.startswith("slow_") else None
    got, closed = b"", None
    try:
        while True:
            left = hold - (time.monotonic() - start)
            chunk = await asyncio.wait_for(reader.read(65536), max(left, 0.01))
            if not chunk:
                closed = time.monotonic() - start
                break
            got += chunk
    except TimeoutError:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = time.monotonic() - start
    if task is not None:
        task.cancel()
    writer.close()
    return kind, closed, got


async def probe(port: int, hold: float) -> dict[str, Any]:
    kinds = ["partial_line", "slow_headers", "slow_body"] + ["idle_keepalive"] * 100
    results = await asyncio.gather(*(one(port, k, hold) for k in kinds))
    summary: dict[str, Any] = {}
    for kind, closed, got in results:
        entry = summary.setdefault(kind, {"n": 0, "closed": 0, "max_open_s": 0.0,
                                          "last_status": ""})
        entry["n"] += 1
        if closed is not None:
            entry["closed"] += 1
        entry["max_open_s"] = max(entry["max_open_s"], round(closed if closed else hold, 1))
        statuses = [line for line in got.split(b"\r\n") if line.startswith(b"HTTP/1.1")]
        entry["last_status"] = statuses[-1].decode() if statuses else "(nothing)"
    return summary


async def flood(port: int, count: int) -> dict[str, Any]:
    opened, failed, writers = 0, 0, []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writers.append(writer)
            opened += 1
        except (OSError, TimeoutError):
            failed += 1
    result: dict[str, Any] = {"opened": opened, "failed": failed}
    waited = 0.0
    for when in (2.0, 12.0):  # /health while the flood's sockets are all still held open
        await asyncio.sleep(when - waited)
        waited = when
        start = time.monotonic()
        try:
            status: Any = await asyncio.to_thread(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health", timeout=10).status)
        except OSError as error:
            status = f"failed: {error}"
        result[f"health_after_{when:g}s"] = [status, round(time.monotonic() - start, 2)]
    for writer in writers:
        writer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5101)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--flood", type=int, default=0, help="idle connections to open")
    args = parser.parse_args()
    print(json.dumps({"probe": asyncio.run(probe(args.port, args.hold))}, indent=1))
    if args.flood:
        print(json.dumps({"flood": asyncio.run(flood(args.port, args.flood))}, indent=1))


if __name__ == "__main__":
    main()
