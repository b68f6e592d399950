"""SillyTavern's other Text Completion types: llama.cpp's server, TabbyAPI, Aphrodite/vLLM.

**llama.cpp.**
SillyTavern 1.12.6 calls, for this type (``src/endpoints/backends/text-completions.js``):
``GET /v1/models`` for the status check (served by the OpenAI routes), ``POST /completion``
for generation, with the whole text-completion body, streamed or not (lines 256-269);
``POST /tokenize`` with ``{"content"}`` for token counts, read as ``tokens`` (its
``src/endpoints/tokenizers.js`` lines 969-971 and 996-997); and ``GET /props`` and
``GET /slots`` for its slash commands (text-completions.js 514-590); the slot actions
(``POST /slots/{id}``) are ``limamono.server.slots``.

Shapes follow llama.cpp's server: ``/completion`` answers ``{"content", "stop", ...}``
and streams ``data: {"content", "stop"}`` events with no ``[DONE]`` (SillyTavern reads
``data.content``, ``public/scripts/textgen-settings.js`` line 905). Samplers use the
``llamacpp`` wire dialect (``limamono.samplers.wire.llamacpp_fields``).

**TabbyAPI** (same file, lines 122-124 and 194-210; tokenizers.js 961-963): the status
check reads ``GET /v1/model/list`` (``data[].id``) and ``GET /v1/model`` (``id``);
generation is ``/v1/completions``; token counts ``POST /v1/token/encode`` with ``{"text"}``.
**Aphrodite** and **vLLM** (tokenizers.js 973-979): ``/v1/models`` and ``/v1/completions``,
token counts ``POST /v1/tokenize`` (Aphrodite) or ``POST /tokenize`` (vLLM) with
``{"model", "prompt"}``. SillyTavern reads a count from ``length``, ``count``, ``value``
or ``tokens`` and the ids from ``tokens`` (tokenizers.js 996-997), so every tokenize
route answers ``{"tokens", "count", "length"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from limamono.engine.protocol import TextChunk
from limamono.server.errors import BAD_REQUEST, ApiError, stream_error
from limamono.server.params import GenerationRequest, single_prompt, text_request
from limamono.server.schemas import Body, SamplerFields
from limamono.server.state import ServerState, body_fields
from limamono.server.streaming import EventStream, job_stream, sse

#: The one slot this server has (one generation at a time).
SLOT_ID = 0


class LlamaCompletionRequest(SamplerFields):  # type: ignore[misc, valid-type]  # a create_model class
    """llama.cpp ``/completion``: its own field names, plus whatever SillyTavern adds."""

    prompt: str | list[str] = Field(description="The prompt (token-id prompts are refused).")
    n_predict: int | None = Field(None, description="Tokens to generate; -1: the default.")
    stop: list[str] | None = Field(None, description="Stop strings.")
    stream: bool = Field(False, description="Stream server-sent events.")
    samplers: list[str] | None = Field(None, description=(
        "Sampler order by name (top_k, tfs_z, typical_p, top_p, min_p, temperature, ...)."))
    n_probs: int | None = Field(None, description="Probabilities of the N likeliest tokens.")
    cache_prompt: bool | None = Field(None, description="Accepted: the KV cache is always "
                                      "reused.")


class TokenizeRequest(Body):
    """llama.cpp ``/tokenize`` (``content``); vLLM's ``/tokenize`` and Aphrodite's
    ``/v1/tokenize`` (``prompt``); TabbyAPI's ``/v1/token/encode`` (``text``)."""

    content: str | None = None
    prompt: str | None = None
    text: str | None = None
    add_special: bool = False

    def the_text(self) -> str:
        """The text to tokenize, whichever name it came under."""
        for value in (self.content, self.prompt, self.text):
            if value is not None:
                return value
        raise ApiError(BAD_REQUEST, "send the text to tokenize as content, prompt or text",
                       field="content")


class DetokenizeRequest(Body):
    """llama.cpp ``/detokenize``."""

    tokens: list[int]


def llamacpp_request(body: LlamaCompletionRequest, state: ServerState) -> GenerationRequest:
    """Check a ``/completion`` body in the ``llamacpp`` dialect (OpenAI-style limits)."""
    from limamono.samplers import SamplerError
    from limamono.samplers.wire import llamacpp_fields

    if isinstance(body.prompt, list) and any(not isinstance(p, str) for p in body.prompt):
        raise ApiError(BAD_REQUEST, "prompt: token-id prompts are not supported; send text",
                       field="prompt")
    try:
        fields = llamacpp_fields(body_fields(body), state.engine.context_length)
    except SamplerError as error:
        raise ApiError(BAD_REQUEST, str(error), field=error.field) from None
    return text_request(fields, single_prompt(body.prompt), "llamacpp", clamp=False,
                        config=state.config, engine_context=state.engine.context_length,
                        vocab_size=getattr(state.engine, "n_vocab", None),
                        grammars=getattr(state.engine, "supports_grammar", False))


def stop_type(chunk: TextChunk) -> str:
    """llama.cpp's ``stop_type``: ``limit`` (length), ``word`` (a stop string) or ``eos``."""
    if chunk.finish_reason == "length":
        return "limit"
    return "word" if chunk.stop_string else "eos"


def completion_probabilities(chunk: TextChunk) -> list[dict[str, Any]]:
    """The chunk's log-probabilities as llama.cpp's ``completion_probabilities`` (the
    ``probs``/``tok_str``/``prob`` shape SillyTavern 1.12.6 reads, textgen-settings.js
    943-949)."""
    import math

    return [{"content": lp.token,
             "probs": [{"tok_str": text, "prob": math.exp(logprob)}
                       for text, _, logprob in lp.top]} for lp in chunk.logprobs]


def _final(chunk: TextChunk, model: str) -> dict[str, Any]:
    return {"stop": True, "id_slot": SLOT_ID, "model": model,
            "tokens_predicted": chunk.completion_tokens,
            "tokens_evaluated": chunk.prompt_tokens, "stop_type": stop_type(chunk),
            "stopping_word": chunk.stop_string or "", "truncated": False}


def router(state: ServerState) -> APIRouter:
    """The llama.cpp routes, bound to ``state``."""
    api = APIRouter(tags=["llama.cpp"])

    @api.post("/completion", summary="Text completion (llama.cpp server shape)",
              response_model=None)
    async def completion(body: LlamaCompletionRequest, request: Request,
                         ) -> dict[str, Any] | EventStream:
        job = await state.submit(lambda: llamacpp_request(body, state))
        model = state.model_name

        def events(chunk: TextChunk) -> list[str]:
            if chunk.finish_reason is None and not chunk.text and not chunk.logprobs:
                return []
            data: dict[str, Any] = {"content": chunk.text, "stop": False, "id_slot": SLOT_ID}
            if chunk.logprobs:
                data["completion_probabilities"] = completion_probabilities(chunk)
            if chunk.finish_reason is not None:
                data.update(_final(chunk, model))
            return [sse(data)]

        if body.stream:
            return job_stream(job, events, lambda message: sse(stream_error(message)))
        reply = await state.reply(job, request.receive)
        last = TextChunk("", reply.finish_reason, reply.prompt_tokens, reply.completion_tokens,
                         logprobs=reply.logprobs)
        out = {"content": reply.text, **_final(last, model)}
        if reply.logprobs:
            out["completion_probabilities"] = completion_probabilities(last)
        return out

    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        text = body.the_text()
        prompt_ids = getattr(state.engine, "prompt_ids", None)
        if body.add_special and prompt_ids is not None:
            ids = await state.cpu(lambda: list(prompt_ids(text)))
        else:
            ids = await state.tokenize(text)
        return {"tokens": ids, "count": len(ids), "length": len(ids)}

    for path, summary in (("/tokenize", "Token ids of a text (llama.cpp, vLLM)"),
                          ("/v1/tokenize", "Token ids of a text (Aphrodite)"),
                          ("/v1/token/encode", "Token ids of a text (TabbyAPI)")):
        api.post(path, summary=summary)(tokenize)

    @api.get("/v1/model/list", summary="The served model (TabbyAPI's status check)")
    async def model_list() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                            "owned_by": "limamono"}]}

    @api.get("/v1/model", summary="The loaded model (TabbyAPI)")
    async def model() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "owned_by": "limamono"}

    @api.post("/detokenize", summary="The text of token ids (llama.cpp)")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        vocab = getattr(state.engine, "n_vocab", None)
        bad = [t for t in body.tokens if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise ApiError(BAD_REQUEST, f"tokens: {bad[0]} is not a token id of this model"
                           + (f" (0-{vocab - 1})" if vocab else ""), field="tokens")
        try:
            text = await state.cpu(lambda: state.engine.detokenize(body.tokens))
        except (ValueError, OverflowError, IndexError, KeyError, TypeError):
            # an engine that does not report its vocabulary size refuses the ids itself
            raise ApiError(BAD_REQUEST, "tokens: not token ids of this model",
                           field="tokens") from None
        return {"content": text}

    @api.get("/props", summary="Server properties (llama.cpp)")
    async def props() -> dict[str, Any]:
        return {"default_generation_settings": {
                    "n_ctx": state.engine.context_length, "model": state.model_name,
                    "n_predict": state.config.default_max_tokens},
                "total_slots": getattr(state.engine, "parallel", 1),
                "model_path": state.model_name,
                "chat_template": "", "build_info": "limamono"}

    @api.get("/slots", summary="Every slot's state (llama.cpp)")
    async def slots() -> list[dict[str, Any]]:
        tokens = getattr(state.engine, "slot_tokens", None)
        if tokens is None:  # an engine without slots (torch): its one generation
            return [{"id": SLOT_ID, "n_ctx": state.engine.context_length,
                     "is_processing": state.queue.busy}]
        return [{"id": i, "n_ctx": state.engine.context_length, "is_processing": busy,
                 "n_past": held} for i, (busy, held) in enumerate(tokens())]

    return api
