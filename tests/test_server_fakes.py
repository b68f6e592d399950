"""A scripted engine and server helpers for the server tests (and a test of the fake itself).

``FakeEngine`` implements ``limamono.engine.protocol.Engine`` deterministically: one character is
one token, the reply is streamed word by word, stop strings cut it like the real engine's,
and in slow mode every chunk after the first waits for ``release`` (or the cancel event),
so queue and cancellation tests control exactly when a generation runs and ends.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from limamono.engine.protocol import Completion, TextChunk


@dataclass
class Call:
    """What the fake engine was asked to do."""

    prompt: str
    settings: Any
    max_new_tokens: int
    stop: tuple[str, ...]
    truncation: str


@dataclass
class FakeEngine:
    """A deterministic Engine; see the module docstring."""

    reply: str = "Hello there, traveller. The lamp is lit."
    context_length: int = 2048
    model_name: str = "fake-limamono"
    slow: bool = False
    calls: list[Call] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    tokenized: int = 0

    def tokenize(self, text: str) -> list[int]:
        self.tokenized += 1
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def stream_text(self, prompt: str, settings: Any, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: str = "left") -> Iterator[TextChunk]:
        self.calls.append(Call(prompt, settings, max_new_tokens, tuple(stop), truncation))
        self.started.set()
        try:
            yield from self._chunks(prompt, max_new_tokens, stop, cancel)
        finally:
            self.stopped.set()

    def _chunks(self, prompt: str, max_new_tokens: int, stop: Sequence[str],
                cancel: threading.Event | None) -> Iterator[TextChunk]:
        text, reason, hit = self.reply, "stop", None
        found = [(text.find(s), s) for s in stop if s and s in text]
        if found:
            at, hit = min(found)
            text = text[:at]
        if len(text) > max_new_tokens:
            text, reason, hit = text[:max_new_tokens], "length", None
        count = 0
        for i, piece in enumerate(re.findall(r"\s*\S+|\s+$", text)):
            if i > 0 and self.slow:
                while not self.release.is_set():
                    if cancel is not None and cancel.wait(0.005):
                        break
            if cancel is not None and cancel.is_set():
                yield TextChunk("", "cancelled", len(prompt), count)
                return
            count += len(piece)
            yield TextChunk(piece, None, len(prompt), count)
        yield TextChunk("", reason, len(prompt), count, hit)

    def generate(self, prompt: str, settings: Any, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: str = "left") -> Completion:
        chunks = list(self.stream_text(prompt, settings, max_new_tokens, stop, cancel,
                                       truncation))
        last = chunks[-1]
        return Completion("".join(c.text for c in chunks), last.finish_reason or "length",
                          last.prompt_tokens, last.completion_tokens, last.stop_string)


class RuntimeAdapters:
    """Mixin for a fake engine: the llama.cpp engine's run-time adapter methods
    (``adapters``, ``using_adapters``) over ``ADAPTERS`` (name, scale), recording in
    ``choices`` the adapter choice each ``stream_text`` ran under."""

    ADAPTERS: tuple[tuple[str, float], ...] = (("a", 1.0), ("b", 0.5))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = [SimpleNamespace(name=name, scale=scale) for name, scale in self.ADAPTERS]
        self.choices: list[dict[str, float] | None] = []
        self._choice = threading.local()

    def adapters(self) -> list[Any]:
        return list(self.loaded)

    @contextmanager
    def using_adapters(self, choice: dict[str, float] | None) -> Iterator[None]:
        self._choice.value = choice
        try:
            yield
        finally:
            self._choice.value = None

    def stream_text(self, *args: Any, **kwargs: Any) -> Any:
        self.choices.append(getattr(self._choice, "value", None))
        return super().stream_text(*args, **kwargs)  # type: ignore[misc]  # the fake's own


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a loopback port chosen by the OS; yield its base URL.

    The socket is bound and listening before the server thread starts, so a client can
    connect at once (the connection waits in the backlog): no sleeps, no fixed port.
    """
    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it every small response write waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def sse_events(raw: str) -> list[dict[str, str]]:
    """Parse an event stream the way SillyTavern's ``sse-stream.js`` does.

    Events are separated by a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``);
    ``data:`` lines of one event are joined with newlines; ``event:`` names it; an event
    without a ``data:`` line (a ``: keepalive`` comment) is skipped.
    """
    events = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", raw):
        if not block.strip():
            continue
        event: dict[str, str] = {}
        data = []
        for line in re.split(r"\r\n|\n|\r", block):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event["event"] = value
        if not data:  # a comment (keepalive) or an event without data: skipped, as there
            continue
        event["data"] = "\n".join(data)
        events.append(event)
    return events


def test_fake_engine_cuts_at_stop_strings_and_max_tokens() -> None:
    engine = FakeEngine(reply="One two\nUser: three")
    chunks = list(engine.stream_text("p", None, 100, stop=["\nUser:"]))
    assert "".join(c.text for c in chunks) == "One two"
    assert (chunks[-1].finish_reason, chunks[-1].stop_string) == ("stop", "\nUser:")
    short = engine.generate("p", None, 5)
    assert (short.text, short.finish_reason) == ("One t", "length")


def test_sse_events_skips_keepalive_comments_as_sillytavern_does() -> None:
    raw = ": queued, position 1\n\n: generating\n\ndata: {\"a\": 1}\n\ndata: [DONE]\n\n"
    assert sse_events(raw) == [{"data": "{\"a\": 1}"}, {"data": "[DONE]"}]
