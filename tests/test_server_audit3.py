"""Issue 24 (hardening, round 3), the server's part: one request never freezes the server.

Reproductions: ``shared/testdata/repros/audit-3/`` (numbered as the issue's defects); the
hostile request bodies among them are in ``tests/assets/hostile/http/``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app, stchat
from test_server_fakes import FakeEngine, live_server


def make_client(engine: Any, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ServerConfig(**config)), raise_server_exceptions=False)


# --------------------------------------------------------------------------- 1: ReDoS

#: System texts that made the old regular expressions backtrack (defect 1 and its kin).
BACKTRACKERS = [
    "[" + "x's personality: " * 250_000,  # the reproduction's shape, 4 MB
    "[" + "Edda Varn's personality: " * 100_000 + "\n]",
    "Write " + "a's next reply in a fictional chat between " * 100_000,
    "Write " + "a's next reply in a fictional chat between a and " * 60_000,
    "[Circumstances and context of the dialogue: " * 100_000,
    "[Start a new group chat. Group members: " * 100_000,
]


@pytest.mark.parametrize("text", BACKTRACKERS, ids=range(len(BACKTRACKERS)))
def test_the_sheet_parses_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    stchat.main_prompt_names(text)
    stchat.scenario_text(text)
    stchat.personality_text(text)
    stchat.conversation([{"role": "system", "content": text}, {"role": "user", "content": "hi"}])
    assert time.perf_counter() - start < 1.0


def test_sheet_parts_keep_sillytavern_meanings() -> None:
    assert stchat.main_prompt_names("Write Edda's next reply in a fictional chat between Edda "
                                    "and Tom.\nMore.") == ("Edda", "Tom")
    assert stchat.main_prompt_names("Write Edda's next reply in a fictional chat between Ann "
                                    "and Tom.") is None
    assert stchat.personality_text("[Edda's personality: calm, [sly]]") == "calm, [sly]"
    assert stchat.personality_text("[Ed]da's personality: calm]") is None
    assert stchat.personality_text("['s personality: 's personality: x]") == "x"
    assert stchat.scenario_text("[Circumstances and context of the dialogue: a mill]") == "a mill"
    assert stchat.scenario_text("[Circumstances and context of the dialogue: a mill") is None


class SlowTokenizer(FakeEngine):
    """Tokenizing blocks its thread for ``delay`` seconds (a CPU-heavy prompt)."""

    delay: float = 1.5

    def tokenize(self, text: str) -> list[int]:
        time.sleep(self.delay)
        return super().tokenize(text)


def test_a_heavy_request_step_runs_off_the_event_loop() -> None:
    engine = SlowTokenizer()
    with live_server(create_app(engine, ServerConfig())) as url:
        worker = threading.Thread(target=httpx.post, args=(url + "/api/extra/tokencount",),
                                  kwargs={"json": {"prompt": "abc"}, "timeout": 30})
        worker.start()
        time.sleep(0.3)  # the tokenizing has started
        start = time.perf_counter()
        health = httpx.get(url + "/health", timeout=30)
        waited = time.perf_counter() - start
        worker.join()
    assert health.status_code == 200
    assert waited < 0.5


def test_heavy_steps_are_bounded_and_the_excess_gets_503() -> None:
    engine = SlowTokenizer()
    engine.delay = 1.0
    app = create_app(engine, ServerConfig(cpu_threads=1, cpu_waiting=1))
    with live_server(app) as url:
        results: list[int] = []

        def count() -> None:
            response = httpx.post(url + "/v1/internal/token-count", json={"text": "abc"},
                                  timeout=30)
            results.append(response.status_code)

        workers = [threading.Thread(target=count) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(0.3)
        refused = httpx.post(url + "/v1/internal/token-count", json={"text": "abc"}, timeout=30)
        for worker in workers:
            worker.join()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert sorted(results) == [200, 200]
