"""The KoboldAI United / KoboldCpp API (SillyTavern's "KoboldAI" mode and KoboldCpp extras).

Shapes follow KoboldCpp 1.77 (``shared/reference/sillytavern_api.md`` §2): ``{"result"}``
for info, ``{"value"}`` for numbers, ``{"results": [{"text", "finish_reason"}]}`` for a
reply, and for streaming ``event: message`` / ``data: {"token", "finish_reason"}`` events
whose finish reason is the *string* ``"null"`` until the last one. Samplers follow the
KoboldCpp dialect (its TFS variant, ``sampler_order``, rep-pen range and slope); reply
lengths are clamped to fit, as KoboldCpp clamps them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from limamono import __version__
from limamono.engine.protocol import TextChunk
from limamono.samplers import SamplerError
from limamono.samplers.wire import schema_gbnf
from limamono.server.errors import BAD_REQUEST, ApiError, stream_error
from limamono.server.logprobs import chat_logprobs
from limamono.server.params import GenerationRequest, text_request
from limamono.server.schemas import (
    AbortRequest,
    Body,
    KoboldGenerateRequest,
    TokenCountRequest,
)
from limamono.server.state import (
    KOBOLD_API_VERSION,
    KOBOLDCPP_VERSION,
    ServerState,
    body_fields,
)
from limamono.server.streaming import EventStream, job_stream, sse, wire_finish_reason

#: Routes that answer without an API key (SillyTavern's status check sends none).
PUBLIC_PATHS = ("/api/v1/info/version", "/api/extra/version")


def kobold_request(body: KoboldGenerateRequest, state: ServerState) -> GenerationRequest:
    """Check a Kobold generate body (``memory`` goes before the prompt, as in KoboldCpp)."""
    prompt = (body.memory or "") + body.prompt
    if not prompt:
        raise ApiError(BAD_REQUEST, "prompt is empty; send the text to continue",
                       field="prompt")
    return text_request(body_fields(body), prompt, "koboldcpp", clamp=True,
                        config=state.config, engine_context=state.engine.context_length,
                        vocab_size=getattr(state.engine, "n_vocab", None),
                        grammars=getattr(state.engine, "supports_grammar", False))


def kobold_events(chunk: TextChunk) -> list[str]:
    """The Kobold SSE events of one chunk (an empty non-final chunk sends nothing)."""
    reason = wire_finish_reason(chunk.finish_reason)
    if not chunk.text and reason is None and not chunk.logprobs:
        return []
    data: dict[str, Any] = {"token": chunk.text, "finish_reason": reason or "null"}
    if chunk.logprobs:
        data["logprobs"] = chat_logprobs(chunk.logprobs)
    return [sse(data, event="message")]


def kobold_error_event(message: str) -> str:
    """The event reporting an engine failure in a Kobold stream."""
    return sse(stream_error(message), event="error")


def router(state: ServerState) -> APIRouter:
    """The Kobold routes, bound to ``state``."""
    api = APIRouter(tags=["kobold"])

    @api.get("/api/v1/model", summary="The model name (not 'ReadOnly': a model is loaded)")
    async def model() -> dict[str, Any]:
        return {"result": state.model_name}

    @api.get("/api/v1/info/version", summary="The KoboldAI API version claimed")
    async def api_version() -> dict[str, Any]:
        return {"result": KOBOLD_API_VERSION}

    @api.get("/api/extra/version", summary="The KoboldCpp name and version claimed")
    async def extra_version() -> dict[str, Any]:
        # SillyTavern enables streaming, tokenization, min_p and grammar from ``result``:
        # it must be a non-numeric name (KoboldCpp's own, since that API is what we serve).
        return {"result": "KoboldCpp", "version": KOBOLDCPP_VERSION,
                "protected": state.config.api_key is not None, "txt2img": False,
                "vision": False, "transcribe": False, "server": "limamono",
                "server_version": __version__}

    @api.get("/api/v1/config/max_context_length", summary="The context length in tokens")
    async def max_context_length() -> dict[str, Any]:
        return {"value": state.engine.context_length}

    @api.get("/api/extra/true_max_context_length", summary="The context length in tokens")
    async def true_max_context_length() -> dict[str, Any]:
        return {"value": state.engine.context_length}

    @api.get("/api/v1/config/max_length", summary="The default reply length in tokens")
    async def max_length() -> dict[str, Any]:
        return {"value": state.config.default_max_tokens}

    @api.post("/api/v1/generate", summary="Generate a whole reply (KoboldCpp samplers)")
    async def generate(body: KoboldGenerateRequest, request: Request) -> dict[str, Any]:
        job = await state.submit(lambda: kobold_request(body, state))
        reply = await state.reply(job, request.receive)
        result: dict[str, Any] = {
            "text": reply.text, "finish_reason": wire_finish_reason(reply.finish_reason),
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        if reply.logprobs:
            result["logprobs"] = chat_logprobs(reply.logprobs)
        return {"results": [result]}

    @api.post("/api/extra/generate/stream", summary="Stream a reply as Kobold SSE",
              response_class=EventStream)
    async def generate_stream(body: KoboldGenerateRequest) -> EventStream:
        job = await state.submit(lambda: kobold_request(body, state))
        return job_stream(job, kobold_events, kobold_error_event)

    @api.get("/api/extra/generate/check", summary="The text generated so far (by genkey)")
    async def check(genkey: str | None = None) -> dict[str, Any]:
        return {"results": [{"text": state.queue.pending_text(genkey)}]}

    @api.post("/api/extra/generate/check", summary="The text generated so far (by genkey)")
    async def check_key(body: AbortRequest | None = None) -> dict[str, Any]:
        genkey = body.genkey if body is not None else None
        return {"results": [{"text": state.queue.pending_text(genkey)}]}

    @api.post("/api/extra/abort", summary="Stop the running generation")
    async def abort(body: AbortRequest | None = None) -> dict[str, Any]:
        done = state.queue.abort(body.genkey if body is not None else None)
        # KoboldCpp answers with the strings "true"/"false".
        flag = "true" if done else "false"
        return {"success": flag, "done": flag}

    @api.post("/api/extra/tokencount", summary="Count the tokens of a text")
    async def tokencount(body: TokenCountRequest) -> dict[str, Any]:
        ids = await state.tokenize(body.prompt)
        return {"value": len(ids), "ids": ids}

    @api.post("/api/extra/json_to_grammar", summary="A JSON schema as a GBNF grammar")
    async def json_to_grammar(body: Body) -> dict[str, Any]:
        # KoboldCpp Lite posts {"schema": ...} and reads "success" and "result" (falling
        # back to a generic JSON grammar when success is false); other clients post the
        # schema itself. The converter is the one json_schema requests use.
        fields = body.model_dump()
        schema = fields.get("schema", fields)
        try:
            grammar = await state.cpu(schema_gbnf, "schema", schema)
        except SamplerError as error:
            return {"result": "", "success": False, "error": str(error)}
        return {"result": grammar, "success": True}

    @api.get("/api/extra/perf", summary="Queue state and generation counters")
    async def perf() -> JSONResponse:
        stats = state.queue.stats
        return JSONResponse({
            "queue": state.queue.waiting, "idle": 0 if state.queue.busy else 1,
            "total_gens": stats.total, "cancelled": stats.cancelled,
            "rejected": stats.rejected,
            "last_cancel_latency_s": round(stats.last_cancel_latency_s, 4),
            "max_cancel_latency_s": round(stats.max_cancel_latency_s, 4),
            "last_queue_wait_s": round(stats.last_queue_wait_s, 4),
            "max_queue_wait_s": round(stats.max_queue_wait_s, 4),
        })

    return api
