"""Server-sent events and client-disconnect handling shared by the Kobold and OpenAI routes.

A client that goes away must free the engine: a streaming response listens for
``http.disconnect`` whatever ASGI spec version the server speaks, and a non-streaming one
races the generation against the same message. Either way the job's cancel event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from limamono.engine.protocol import FinishReason, TextChunk, TokenLogprob
from limamono.server.queue import Job

#: Headers of every event stream (KoboldCpp sends the same: no caching, no proxy buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | str, event: str | None = None) -> str:
    """One server-sent event: optional ``event:`` line, one ``data:`` line, a blank line.

    JSON is written on one line (``ensure_ascii=False`` keeps non-ASCII text readable; a
    newline inside a string is escaped by JSON, so it cannot split the event).
    """
    payload = data if isinstance(data, str) else json.dumps(
        data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` when it ends, however it ends.

    Starlette watches for a disconnect only below ASGI spec 2.4 and otherwise notices it
    at the next write; a job waiting in the queue writes nothing, so this class always
    listens, cancels the writer on disconnect and closes the body iterator at once.

    Args:
        content: The events.
        on_close: Called once when the response ends (finished, failed or disconnected).
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None],
                 status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, headers=SSE_HEADERS)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the events until they end or the client disconnects."""
        try:
            async with anyio.create_task_group() as group:

                async def write() -> None:
                    # An ASGI 2.4 server raises OSError when the client is gone.
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(write)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self._on_close()
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


@dataclass(frozen=True)
class Reply:
    """A whole reply collected from a job (non-streaming requests)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


async def collect(job: Job, receive: Receive) -> Reply | None:
    """The job's whole reply, or None when the client disconnected first (job cancelled).

    Raises:
        Exception: The engine's error, re-raised from the worker thread.
    """
    replies = await collect_choices(job, receive)
    return None if replies is None else replies[0]


async def collect_choices(job: Job, receive: Receive) -> list[Reply] | None:
    """Every choice's whole reply (by index), or None when the client disconnected first.

    Raises:
        Exception: The engine's error, re-raised from the worker thread.
    """

    async def join() -> list[Reply]:
        parts: list[list[str]] = [[] for _ in range(job.choices)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(job.choices)]
        replies: dict[int, Reply] = {}
        async for index, chunk in job.choice_chunks():
            parts[index].append(chunk.text)
            logprobs[index] += chunk.logprobs
            if chunk.finish_reason is not None:
                replies[index] = Reply("".join(parts[index]), chunk.finish_reason,
                                       chunk.prompt_tokens, chunk.completion_tokens,
                                       tuple(logprobs[index]))
        if len(replies) != job.choices:
            raise RuntimeError("the generation ended without a finish reason")
        return [replies[i] for i in range(job.choices)]

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    reply_task = asyncio.ensure_future(join())
    watch_task = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({reply_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not reply_task.done():
            job.request_cancel()
            reply_task.cancel()
    if reply_task.cancelled() or not reply_task.done():
        return None
    return reply_task.result()


def wire_finish_reason(reason: FinishReason | None) -> str | None:
    """The finish reason on the wire: ``stop`` or ``length`` (a cancelled reply: ``stop``).

    The emulated APIs know only these two; a reply cut by ``/api/extra/abort`` ended
    because it was stopped.
    """
    return None if reason is None else ("length" if reason == "length" else "stop")


#: Seconds without an event after which a stream sends a keepalive comment.
KEEPALIVE_S = 5.0


def keepalive(job: Job) -> str:
    """An SSE comment saying where ``job`` is: queued (with its position) or running.

    Comments are the keepalive of every dialect served here: the SSE specification has
    clients ignore them, and SillyTavern's parser (``public/scripts/sse-stream.js``) skips
    an event without data, on the OpenAI and the Kobold streams alike. KoboldCpp itself
    sends nothing while a request waits.
    """
    position = job.position()
    return f": queued, position {position}\n\n" if position else ": generating\n\n"


def job_stream(job: Job, events: Callable[[TextChunk], list[str]],
               error_event: Callable[[str], str], trailer: str = "") -> EventStream:
    """An event stream of a one-choice job's chunks; the job is cancelled if the stream
    ends early.

    Args:
        job: The queued job.
        events: The events (already framed with :func:`sse`) for one chunk.
        error_event: The event that reports an engine error (a real error).
        trailer: Sent after the last chunk or the error (OpenAI's ``data: [DONE]``).
    """
    return choices_stream(job, lambda _index: events, error_event, trailer)


def choices_stream(job: Job, choice_events: Callable[[int], Callable[[TextChunk], list[str]]],
                   error_event: Callable[[str], str], trailer: str = "") -> EventStream:
    """An event stream of every choice's chunks as they come (OpenAI's ``index``).

    Args:
        job: The queued job.
        choice_events: Makes, once per choice index, the events of that choice's chunks
            (each choice keeps its own state: its role chunk, its log-probability offset).
        error_event: The event that reports an engine error (a real error).
        trailer: Sent after the last chunk or the error (OpenAI's ``data: [DONE]``).
    """
    finished = False
    makers: dict[int, Callable[[TextChunk], list[str]]] = {}

    async def body() -> AsyncIterator[str]:
        nonlocal finished
        try:
            if job.position() > 0:
                yield keepalive(job)  # at once: the client knows it is queued, and where
            async for item in job.ticking_chunks(KEEPALIVE_S):
                if item is None:
                    yield keepalive(job)
                    continue
                index, chunk = item
                if index not in makers:
                    makers[index] = choice_events(index)
                for event in makers[index](chunk):
                    yield event
        except Exception as error:  # request boundary: report it in the stream
            yield error_event(str(error))
        finished = True
        if trailer:
            yield trailer

    def on_close() -> None:
        if not finished:
            job.request_cancel()

    return EventStream(body(), on_close)
