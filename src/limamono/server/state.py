"""What every route shares: the engine, the config, the queue, and submitting a job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from limamono.core.policy import ContextOverflowError
from limamono.engine.protocol import Engine
from limamono.server.config import ServerConfig
from limamono.server.errors import BAD_REQUEST, BUSY, ApiError
from limamono.server.params import GenerationRequest, fit_to_context
from limamono.server.queue import GenerationQueue, Job, QueueFullError
from limamono.server.streaming import Reply, collect

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

    @property
    def model_name(self) -> str:
        """The name every model route reports (SillyTavern shows it and matches presets)."""
        return self.engine.model_name

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, off the event loop and without the generation lock."""
        return await run_in_threadpool(self.engine.tokenize, text)

    async def submit(self, request: GenerationRequest) -> Job:
        """Fit the prompt to the request's context and queue the generation.

        Raises:
            ApiError: 400 when the prompt cannot fit; 503 with ``Retry-After`` when the
                queue is full.
        """
        prompt = await run_in_threadpool(fit_to_context, self.engine, request)
        try:
            return self.queue.submit(request, prompt)
        except QueueFullError as error:
            raise ApiError(BUSY, f"Server is busy ({error}); please try again later.",
                           kind="service_unavailable",
                           headers={"Retry-After": str(self.config.retry_after_s)}) from None

    async def reply(self, job: Job, receive: Receive) -> Reply:
        """The whole reply of a non-streaming request.

        Raises:
            ApiError: 400 when the prompt cannot fit, 500 when the engine failed,
                499 (unread) when the client disconnected and the job was cancelled.
        """
        try:
            reply = await collect(job, receive)
        except ContextOverflowError as error:
            raise ApiError(BAD_REQUEST, str(error), field="prompt") from None
        except Exception as error:  # request boundary: the engine failed
            raise ApiError(500, f"generation failed: {error}", kind="server_error") from None
        if reply is None:
            raise ApiError(CLIENT_CLOSED, "the client closed the connection; generation "
                           "cancelled", kind="cancelled")
        return reply


def body_fields(body: BaseModel) -> dict[str, Any]:
    """A validated body as the dict the sampler mapping reads (unknown keys included)."""
    return body.model_dump(exclude_unset=True)
