"""One engine behind a FIFO queue: the front of its slots (continuous batching).

Request handlers (on the asyncio loop) ``submit`` a :class:`Job` and read its chunks from
an asyncio queue. One worker thread per engine slot (``engine.parallel``: the llama.cpp
engine's ``--parallel``, 1 for torch) takes the oldest waiting job, runs
``engine.stream_text`` and hands each chunk over with ``loop.call_soon_threadsafe``; the
engine decodes the running streams together, one batch per step, so a new request starts
at the next step instead of after the others. A full queue refuses at once (the caller
answers 503); a job whose client went away is cancelled through its event, which the engine
checks before every token, so its slot is free again within one step.

A job with ``n`` > 1 choices runs choice 0 first; once it has produced its first chunk
(its prompt is read), choices 1..n-1 go to the front of the queue and take the prompt from
choice 0's slot (the llama.cpp engine copies the KV, ``llama_memory_seq_cp``) instead of
reading it again; a fork reads only the prompt's last token, alone, as every prompt read
does (``limamono.engine.loop.prefill_end``). Choice i samples with seed + i, so it equals a
single request with that seed, cold or cached, token for token.

Token counting never goes through here: tokenizing does not take the generation lock.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from limamono.engine.protocol import Engine, TextChunk
from limamono.samplers import SamplerSettings
from limamono.server.params import GenerationRequest

#: What a job hands to its reader: (choice index, chunk), or the exception that ended a
#: generation.
Event = tuple[int, TextChunk] | BaseException


class QueueFullError(RuntimeError):
    """More requests are waiting than the queue allows."""


@dataclass
class QueueStats:
    """Counters for ``/api/extra/perf`` and the load benchmark.

    Attributes:
        total: Jobs that finished (any way).
        cancelled: Jobs that ended because they were cancelled.
        rejected: Submissions refused because the queue was full.
        last_cancel_latency_s: Seconds from a running job's cancel to its slot being free
            (a job cancelled while it waited is only skipped: not counted here).
        max_cancel_latency_s: The largest of those.
        last_queue_wait_s: Seconds the latest job waited for a slot.
        max_queue_wait_s: The largest of those.
    """

    total: int = 0
    cancelled: int = 0
    rejected: int = 0
    last_cancel_latency_s: float = 0.0
    max_cancel_latency_s: float = 0.0
    last_queue_wait_s: float = 0.0
    max_queue_wait_s: float = 0.0


@dataclass
class Job:
    """A queued or running generation and the channel its chunks travel on."""

    request: GenerationRequest
    prompt: str
    loop: asyncio.AbstractEventLoop
    id: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    text: list[str] = field(default_factory=list)  # choice 0 so far (for /generate/check)
    cancelled_at: float | None = None
    running: int = 0  # choices started and not yet finished (guarded by the queue)
    finished: int = 0  # choices finished
    #: The seed of choice 0 when n > 1 and the request gave none (drawn once per job).
    base_seed: int = field(default_factory=lambda: secrets.randbits(62))
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when its first choice got a slot
    #: The queue's :meth:`GenerationQueue.position` (set when submitted).
    position_of: Callable[[Job], int] | None = field(default=None, repr=False)

    def position(self) -> int:
        """1 + the live jobs waiting before this one; 0 once it runs (or has ended)."""
        return self.position_of(self) if self.position_of is not None else 0

    @property
    def choices(self) -> int:
        """Replies this job returns (the request's ``n``)."""
        return self.request.n

    def choice_settings(self, index: int) -> SamplerSettings:
        """Choice ``index``'s samplers: the request's seed + ``index`` (n > 1 without a seed:
        a random base seed, drawn once per job)."""
        settings = self.request.settings
        if self.choices == 1:
            return settings
        base = self.base_seed if settings.seed is None else settings.seed
        return replace(settings, seed=base + index)

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
        """Choice 0's chunks until the one with a finish reason (a job of one choice);
        re-raises an engine error."""
        async for index, chunk in self.choice_chunks():
            if index == 0:
                yield chunk

    async def ticking_chunks(self, tick: float,
                             ) -> AsyncIterator[tuple[int, TextChunk] | None]:
        """:meth:`choice_chunks`, with None whenever ``tick`` seconds pass without a chunk
        (a stream's cue to send a keepalive)."""
        chunks = self.choice_chunks()
        pending = asyncio.ensure_future(anext(chunks))
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=tick)
                if not done:
                    yield None
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                yield item
                pending = asyncio.ensure_future(anext(chunks))
        finally:
            pending.cancel()

    async def choice_chunks(self) -> AsyncIterator[tuple[int, TextChunk]]:
        """(choice index, chunk) of every choice, as they come, until each has sent its
        chunk with a finish reason; re-raises an engine error."""
        left = self.choices
        while left:
            event = await self.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if event[1].finish_reason is not None:
                left -= 1


class GenerationQueue:
    """A FIFO of generation jobs in front of one engine, run by one worker thread per slot.

    Args:
        engine: The engine (only this queue's workers generate with it); its
            ``parallel`` attribute (default 1) is the number of workers.
        max_waiting: Jobs allowed to wait behind the running ones.
    """

    def __init__(self, engine: Engine, max_waiting: int) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.slots = max(1, int(getattr(engine, "parallel", 1)))
        self.stats = QueueStats()
        self._jobs: collections.deque[tuple[Job, int]] = collections.deque()  # (job, choice)
        self._running: list[Job] = []  # jobs with a running choice, oldest first
        self._cond = threading.Condition()
        self._closed = True
        self._ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self.start()

    # -- state ---------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot (a cancelled one no longer counts)."""
        with self._cond:
            return self._live_waiting()

    def _live_waiting(self) -> int:
        # A waiting job whose client left stays in the deque until a worker skips it, but
        # it neither holds a queue slot nor shows in /health. Choices of a running job
        # waiting for their turn are not waiting jobs.
        return sum(not job.cancel.is_set() for job, choice in self._jobs if choice == 0)

    @property
    def busy(self) -> bool:
        """Whether a generation is running."""
        with self._cond:
            return bool(self._running)

    @property
    def running(self) -> int:
        """Jobs with a running generation (at most one per slot)."""
        with self._cond:
            return len(self._running)

    @property
    def alive(self) -> bool:
        """Whether the worker threads run (health reports 503 when they do not)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads) \
            and not self._closed

    def pending_text(self, genkey: str | None = None) -> str:
        """The text generated so far by the running job carrying ``genkey``.

        Without a key nothing is returned: another client's reply is not readable
        (KoboldCpp returns it to anyone; a job sent with no key is readable by no one).
        """
        if genkey is None:
            return ""
        with self._cond:
            jobs = [j for j in self._running if j.request.genkey == genkey]
        return "".join(jobs[0].text) if jobs else ""

    def position(self, job: Job) -> int:
        """1 + the live jobs waiting before ``job``; 0 once it runs (or has ended)."""
        with self._cond:
            if job.running or job.finished:
                return 0
            ahead = 0
            for other, choice in self._jobs:
                if other is job:
                    return ahead + 1
                ahead += choice == 0 and not other.cancel.is_set()
            return 0

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
            # A job not yet picked up by a worker counts as waiting only when every slot
            # is taken.
            free = max(0, self.slots - len(self._running))
            if self._live_waiting() + 1 > self.max_waiting + free:
                self.stats.rejected += 1
                raise QueueFullError(f"{self._live_waiting()} requests are already waiting")
            job.id = next(self._ids)
            job.position_of = self.position
            self._jobs.append((job, 0))
            self._cond.notify()
        return job

    def abort(self, genkey: str | None = None) -> bool:
        """Cancel running jobs (KoboldCpp ``/api/extra/abort``); True if one was cancelled.

        Without ``genkey`` every running job is cancelled whoever started it, as KoboldCpp
        does with its one; with one, the jobs (running or waiting) carrying that key.
        """
        with self._cond:
            if genkey is None:
                targets = list(self._running)
            else:
                waiting = [job for job, _ in self._jobs]
                targets = list({id(j): j for j in [*self._running, *waiting]
                                if j.request.genkey == genkey}.values())
        for job in targets:
            job.request_cancel()
        return bool(targets)

    def start(self) -> None:
        """Start the worker threads (again, after :meth:`close`); no-op while they run.

        The app starts them when built, for clients that run no lifespan, and again at
        each startup, since a test client runs startup and shutdown around every session.
        """
        with self._cond:
            if not self._closed:
                return
            self._closed = False
            self._threads = [threading.Thread(target=self._work, daemon=True,
                                              name=f"limamono-generation-{i}")
                             for i in range(self.slots)]
            for thread in self._threads:
                thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every job and stop the worker threads."""
        with self._cond:
            self._closed = True
            jobs = [*self._running, *(job for job, _ in self._jobs)]
            self._cond.notify_all()
        for job in jobs:
            job.request_cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- workers -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job, choice = self._jobs.popleft()
                job.running += 1
                if job.running == 1 and job.finished == 0:
                    self._running.append(job)
                    job.started_at = time.monotonic()
            try:
                self._run(job, choice)
            finally:
                with self._cond:
                    job.running -= 1
                    job.finished += 1
                    done = job.finished == job.choices
                    if done:
                        self._running.remove(job)
                if done:
                    self._count(job)

    def _fork(self, job: Job) -> None:
        """Queue choices 1..n-1 of ``job`` first in line (choice 0 has read the prompt)."""
        with self._cond:
            self._jobs.extendleft((job, i) for i in range(job.choices - 1, 0, -1))
            self._cond.notify_all()

    def _run(self, job: Job, choice: int) -> None:
        request = job.request
        forked = choice > 0 or job.choices == 1
        try:
            if job.cancel.is_set():
                job.put((choice, TextChunk("", finish_reason="cancelled")))
                return
            with self._adapters(request.adapters):
                for chunk in self.engine.stream_text(job.prompt, job.choice_settings(choice),
                                                     request.max_new_tokens, request.stop,
                                                     cancel=job.cancel, truncation="left"):
                    if choice == 0:
                        job.text.append(chunk.text)
                    job.put((choice, chunk))
                    if not forked:
                        forked = True
                        self._fork(job)
        except Exception as error:  # thread boundary: the handler turns it into a reply
            job.put(error)
        finally:
            if not forked:  # choice 0 ended before any chunk: the others still run
                self._fork(job)

    def _adapters(self, choice: dict[str, float] | None) -> AbstractContextManager[None]:
        """The request's adapter set for the streams this thread runs (the llama.cpp
        engine's ``using_adapters``); nothing to do without a choice."""
        if choice is None:
            return nullcontext()
        engine: Any = self.engine  # the llama.cpp engine (request_adapters checked it)
        using: AbstractContextManager[None] = engine.using_adapters(choice)
        return using

    def _count(self, job: Job) -> None:
        stats = self.stats
        stats.total += 1
        started = job.started_at if job.started_at is not None else time.monotonic()
        stats.last_queue_wait_s = started - job.submitted_at
        stats.max_queue_wait_s = max(stats.max_queue_wait_s, stats.last_queue_wait_s)
        if job.cancelled_at is not None:
            stats.cancelled += 1
            if job.cancelled_at >= started:  # cancelled while running (not while waiting)
                latency = time.monotonic() - job.cancelled_at
                stats.last_cancel_latency_s = latency
                stats.max_cancel_latency_s = max(stats.max_cancel_latency_s, latency)
