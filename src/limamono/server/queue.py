"""One engine behind a FIFO queue: a worker thread runs one generation at a time.

Request handlers (on the asyncio loop) ``submit`` a :class:`Job` and read its chunks from
an asyncio queue; the worker thread runs ``engine.stream_text`` and hands each chunk over
with ``loop.call_soon_threadsafe``. A full queue refuses at once (the caller answers 503);
a job whose client went away is cancelled through its event, which the engine checks
before every token, so the engine is free again within one token's time.

Token counting never goes through here: tokenizing does not take the generation lock.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from limamono.engine.protocol import Engine, TextChunk
from limamono.server.params import GenerationRequest

#: What a job hands to its reader: a chunk, or the exception that ended the generation.
Event = TextChunk | BaseException


class QueueFullError(RuntimeError):
    """More requests are waiting than the queue allows."""


@dataclass
class QueueStats:
    """Counters for ``/api/extra/perf`` and the load benchmark.

    Attributes:
        total: Jobs that finished (any way).
        cancelled: Jobs that ended because they were cancelled.
        rejected: Submissions refused because the queue was full.
        last_cancel_latency_s: Seconds from a running job's cancel to the engine being free.
        max_cancel_latency_s: The largest of those.
    """

    total: int = 0
    cancelled: int = 0
    rejected: int = 0
    last_cancel_latency_s: float = 0.0
    max_cancel_latency_s: float = 0.0


@dataclass
class Job:
    """A queued or running generation and the channel its chunks travel on."""

    request: GenerationRequest
    prompt: str
    loop: asyncio.AbstractEventLoop
    id: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    text: list[str] = field(default_factory=list)  # the reply so far (for /generate/check)
    cancelled_at: float | None = None

    def request_cancel(self) -> None:
        """Stop this job (waiting: skipped; running: the engine stops before its next token)."""
        if not self.cancel.is_set():
            self.cancelled_at = time.monotonic()
            self.cancel.set()

    def put(self, event: Event) -> None:
        """Hand an event to the reader (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is left to read
            self.request_cancel()

    async def chunks(self) -> AsyncIterator[TextChunk]:
        """The job's chunks until the one with a finish reason; re-raises an engine error."""
        while True:
            event = await self.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if event.finish_reason is not None:
                return


class GenerationQueue:
    """A FIFO of generation jobs in front of one engine, run by one worker thread.

    Args:
        engine: The engine (only this queue's worker generates with it).
        max_waiting: Jobs allowed to wait behind the running one.
    """

    def __init__(self, engine: Engine, max_waiting: int) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.stats = QueueStats()
        self._jobs: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._closed = True
        self._ids = itertools.count(1)
        self._thread = threading.Thread()
        self.start()

    # -- state ---------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Jobs waiting behind the running one (a cancelled one no longer counts)."""
        with self._cond:
            return self._live_waiting()

    def _live_waiting(self) -> int:
        # A waiting job whose client left stays in the deque until the worker skips it, but
        # it neither holds a queue slot nor shows in /health.
        return sum(not job.cancel.is_set() for job in self._jobs)

    @property
    def busy(self) -> bool:
        """Whether a generation is running."""
        with self._cond:
            return self._current is not None

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (health reports 503 when it does not)."""
        return self._thread.is_alive() and not self._closed

    def pending_text(self, genkey: str | None = None) -> str:
        """The text generated so far by the running job, if ``genkey`` is that job's key.

        Without the job's key nothing is returned: another client's reply is not readable
        (KoboldCpp returns it to anyone; a job sent with no key is readable by no one).
        """
        with self._cond:
            job = self._current
        if job is None or genkey is None or job.request.genkey != genkey:
            return ""
        return "".join(job.text)

    # -- control -------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, prompt: str) -> Job:
        """Queue a generation; its chunks arrive on the returned job.

        Must be called on the event loop that will read the job.

        Raises:
            QueueFullError: ``max_waiting`` jobs are already waiting.
        """
        job = Job(request, prompt, asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            # A job not yet picked up by the worker counts as waiting only behind another.
            in_system = self._live_waiting() + (self._current is not None)
            if in_system > self.max_waiting:
                self.stats.rejected += 1
                raise QueueFullError(f"{self._live_waiting()} requests are already waiting")
            job.id = next(self._ids)
            self._jobs.append(job)
            self._cond.notify()
        return job

    def abort(self, genkey: str | None = None) -> bool:
        """Cancel the running job (KoboldCpp ``/api/extra/abort``); True if one was cancelled.

        Without ``genkey`` the running job is cancelled whoever started it, as KoboldCpp
        does; with one, the jobs (running or waiting) carrying that key.
        """
        with self._cond:
            if genkey is None:
                targets = [self._current] if self._current is not None else []
            else:
                targets = [j for j in [self._current, *self._jobs]
                           if j is not None and j.request.genkey == genkey]
        for job in targets:
            job.request_cancel()
        return bool(targets)

    def start(self) -> None:
        """Start the worker thread (again, after :meth:`close`); no-op while it runs.

        The app starts it when built, for clients that run no lifespan, and again at each
        startup, since a test client runs startup and shutdown around every session.
        """
        with self._cond:
            if not self._closed:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._work, name="limamono-generation",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every job and stop the worker thread."""
        with self._cond:
            self._closed = True
            jobs = [j for j in [self._current, *self._jobs] if j is not None]
            self._cond.notify_all()
        for job in jobs:
            job.request_cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._current = self._jobs.popleft()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._current = None
                self._count(job)

    def _run(self, job: Job) -> None:
        request = job.request
        if job.cancel.is_set():
            job.put(TextChunk("", finish_reason="cancelled"))
            return
        try:
            for chunk in self.engine.stream_text(job.prompt, request.settings,
                                                 request.max_new_tokens, request.stop,
                                                 cancel=job.cancel, truncation="left"):
                job.text.append(chunk.text)
                job.put(chunk)
        except Exception as error:  # thread boundary: the handler turns it into a reply
            job.put(error)

    def _count(self, job: Job) -> None:
        stats = self.stats
        stats.total += 1
        if job.cancelled_at is not None:
            stats.cancelled += 1
            latency = time.monotonic() - job.cancelled_at
            stats.last_cancel_latency_s = latency
            stats.max_cancel_latency_s = max(stats.max_cancel_latency_s, latency)
