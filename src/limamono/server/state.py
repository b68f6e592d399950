"""What every route shares: the engine, the config, the queue, and submitting a job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel
from starlette.types import Receive

from limamono.core.policy import ContextOverflowError
from limamono.engine.protocol import AdapterUnloadedError, Engine
from limamono.server.config import ServerConfig
from limamono.server.errors import BAD_REQUEST, BUSY, ApiError
from limamono.server.params import (
    GenerationRequest,
    check_grammar,
    fit_to_context,
    request_adapters,
)
from limamono.server.queue import GenerationQueue, Job, QueueFullError
from limamono.server.streaming import Reply, collect_choices

T = TypeVar("T")

#: Status of a request whose adapter was unloaded while it waited in the queue.
CONFLICT = 409
#: Status of the (unread) answer to a client that disconnected before its reply was done.
CLIENT_CLOSED = 499

#: The KoboldAI United API version claimed (SillyTavern needs >= 1.2.4 for every feature).
KOBOLD_API_VERSION = "1.2.5"
#: The KoboldCpp version claimed; SillyTavern reads the *name* (``result``) for features.
KOBOLDCPP_VERSION = "1.77"


@dataclass
class ServerState:
    """The one engine, its queue and the config, shared by the route modules."""

    engine: Engine
    config: ServerConfig
    queue: GenerationQueue
    _limiter: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)
    _cpu_pending: int = field(default=0, init=False, repr=False)
    #: An adapter load or unload is running (``limamono.server.adapters``): new
    #: generation requests get 503.
    adapter_loading: bool = field(default=False, init=False)

    @property
    def model_name(self) -> str:
        """The name every model route reports (SillyTavern shows it and matches presets)."""
        return self.engine.model_name

    async def cpu(self, step: Callable[..., T], *args: Any) -> T:
        """Run a CPU-heavy request step (building or fitting a prompt, tokenizing) off the
        event loop, so that one big request never stalls the others or ``/health``.

        At most ``config.cpu_threads`` steps run at once; when ``config.cpu_waiting`` more
        already wait for a thread, the request is refused with 503 and ``Retry-After``.
        """
        if self._limiter is None:  # made on the event loop, at the first request
            self._limiter = anyio.CapacityLimiter(self.config.cpu_threads)
        if self._cpu_pending >= self.config.cpu_threads + self.config.cpu_waiting:
            raise ApiError(BUSY, f"Server is busy ({self._cpu_pending} requests are being "
                           "prepared); please try again later.", kind="service_unavailable",
                           headers={"Retry-After": str(self.config.retry_after_s)})
        self._cpu_pending += 1
        try:
            return await anyio.to_thread.run_sync(step, *args, limiter=self._limiter)
        finally:
            self._cpu_pending -= 1

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, off the event loop and without the generation lock."""
        return await self.cpu(self.engine.tokenize, text)

    async def submit(self, build: Callable[[], GenerationRequest]) -> Job:
        """Build the request (``build`` checks the body), fit its prompt to the request's
        context, both off the event loop (:meth:`cpu`), and queue the generation.

        Raises:
            ApiError: 400 for a bad body or when the prompt cannot fit; 503 with
                ``Retry-After`` when the queue is full.
        """

        def prepare() -> tuple[GenerationRequest, str]:
            request = build()
            if request.lora is not None:
                request = replace(request, adapters=request_adapters(request.lora,
                                                                     self.engine))
            if request.settings.grammar is not None:
                check_grammar(self.engine, request.settings.grammar)
            return request, fit_to_context(self.engine, request)

        if self.adapter_loading:
            raise ApiError(BUSY, "an adapter is loading; try again in a moment",
                           kind="service_unavailable",
                           headers={"Retry-After": str(self.config.retry_after_s)})
        request, prompt = await self.cpu(prepare)
        try:
            return self.queue.submit(request, prompt)
        except QueueFullError as error:
            raise ApiError(BUSY, f"Server is busy ({error}); please try again later.",
                           kind="service_unavailable",
                           headers={"Retry-After": str(self.config.retry_after_s)}) from None

    async def reply(self, job: Job, receive: Receive) -> Reply:
        """The whole reply of a non-streaming request (choice 0).

        Raises:
            ApiError: 400 when the prompt cannot fit, 409 naming the adapter when one the
                request chose was unloaded while it waited, 500 when the engine failed,
                499 (unread) when the client disconnected and the job was cancelled.
        """
        return (await self.replies(job, receive))[0]

    async def replies(self, job: Job, receive: Receive) -> list[Reply]:
        """Every choice's whole reply of a non-streaming request, by index.

        Raises:
            ApiError: As :meth:`reply`.
        """
        try:
            reply = await collect_choices(job, receive)
        except ContextOverflowError as error:
            raise ApiError(BAD_REQUEST, str(error), field="prompt") from None
        except AdapterUnloadedError as error:  # unloaded while the request was queued
            raise ApiError(CONFLICT, str(error), field="lora", kind="conflict") from None
        except Exception as error:  # request boundary: the engine failed
            raise ApiError(500, f"generation failed: {error}", kind="server_error") from None
        if reply is None:
            raise ApiError(CLIENT_CLOSED, "the client closed the connection; generation "
                           "cancelled", kind="cancelled")
        return reply


def body_fields(body: BaseModel) -> dict[str, Any]:
    """A validated body as the dict the sampler mapping reads (unknown keys included)."""
    return body.model_dump(exclude_unset=True)
