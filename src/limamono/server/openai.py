"""OpenAI-compatible routes, with the KoboldCpp and text-generation-webui extras.

``/v1/completions`` serves three SillyTavern modes with one handler: KoboldCpp (its native
fields and samplers, detected by ``params.dialect_of``), text-generation-webui (its extra
fields) and generic OpenAI (standard fields only; the rest comes from the server's preset).
``/v1/chat/completions`` renders the messages with the Limamono format. Streams are
``data: {json}`` events ending with ``data: [DONE]``; a chunk never carries top-level
``error``, ``message`` or ``detail`` keys, which SillyTavern would show as an error.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request

from limamono.core import format as fmt
from limamono.core import policy as pol
from limamono.core.conversation import Conversation
from limamono.engine.protocol import TextChunk
from limamono.server import stchat
from limamono.server.errors import BAD_REQUEST, ApiError, stream_error
from limamono.server.logprobs import chat_logprobs, completion_logprobs
from limamono.server.params import (
    ChatPrompt,
    GenerationRequest,
    dialect_of,
    single_prompt,
    text_request,
)
from limamono.server.schemas import ChatCompletionRequest, CompletionRequest, EncodeRequest
from limamono.server.state import ServerState, body_fields
from limamono.server.streaming import (
    EventStream,
    Reply,
    choices_stream,
    sse,
    wire_finish_reason,
)
from limamono.util.untrusted import quote

DONE = "data: [DONE]\n\n"
log = logging.getLogger("limamono.server")


@dataclass(frozen=True)
class ReplyMeta:
    """The fields every chunk of one reply repeats."""

    id: str
    created: int
    model: str
    usage: bool  # add token usage to the last chunk (``stream_options.include_usage``)

    @staticmethod
    def new(prefix: str, model: str, usage: bool = False) -> ReplyMeta:
        """Fresh metadata for a reply (``cmpl-...`` or ``chatcmpl-...``)."""
        return ReplyMeta(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model, usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_request(body: CompletionRequest, state: ServerState) -> GenerationRequest:
    """Check a ``/v1/completions`` body in its dialect (OpenAI limits: no clamping)."""
    fields = body_fields(body)
    return text_request(fields, single_prompt(body.prompt), dialect_of(fields), clamp=False,
                        config=state.config, engine_context=state.engine.context_length,
                        vocab_size=getattr(state.engine, "n_vocab", None), choices=True,
                        grammars=getattr(state.engine, "supports_grammar", False))


def _length_label(value: str | None, default: str | None, field: str) -> str | None:
    """A length label from the request: absent -> ``default``, ``none`` -> no label."""
    if value is None:
        return default
    if value == "none":
        return None
    try:
        return fmt.check_length(value, field)
    except fmt.FormatError as error:
        raise ApiError(BAD_REQUEST, str(error), field=field) from None


def chat_prompt(body: ChatCompletionRequest, policy: pol.PromptPolicy) -> ChatPrompt:
    """The conversation of a chat request, under the server's policy or the one it names.

    SillyTavern's prompt-manager messages are understood (``limamono.server.stchat``).

    Raises:
        ApiError: 400 naming the message (or extension field) at fault.
    """
    for field, value, allowed in (("policy", body.policy, pol.POLICIES),
                                  ("trigger", body.trigger, tuple(fmt.TRIGGERS))):
        if value is not None and value not in allowed:
            raise ApiError(BAD_REQUEST, f"{field}={quote(value)}: must be one of "
                           f"{', '.join(allowed)}", field=field)
    if body.policy is not None or body.trigger is not None:
        policy = pol.get_policy(body.policy or policy.name, body.trigger or policy.trigger,
                                policy.length_bounds, policy.stops)
    response_length = _length_label(body.response_length, fmt.DEFAULT_RESPONSE_LENGTH,
                                    "response_length")
    input_length = _length_label(body.input_length, None, "input_length")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    if stchat.asks_impersonation(messages):
        # Without this, the prompt dropped as a marker left the character's message last,
        # and the "impersonation" continued the character's reply (seen in SillyTavern).
        raise ApiError(BAD_REQUEST, "SillyTavern's Impersonate is not supported on "
                       "/v1/chat/completions: this route writes the character's turns in "
                       "the Limamono format; use a Text Completion connection with the "
                       "Limamono presets, where Impersonate writes your turn",
                       field=f"messages[{len(messages) - 1}]")
    if examples := stchat.example_messages(messages):
        log.info("example dialogue left out: %d message(s) named example_user/"
                 "example_assistant (the Limamono format has no examples)", examples)
    try:
        conversation = stchat.conversation(messages, char_name=body.char_name,
                                           user_name=body.user_name)
        continuing = _continuing(body, conversation, stchat.ends_with_group_nudge(messages))
        chat = ChatPrompt(conversation, policy, response_length, input_length, continuing)
        render_chat(chat)  # a turn holding a header fails here
    except fmt.FormatError as error:
        index = error.message_index
        field = "messages" if index is None else f"messages[{index}]"
        raise ApiError(BAD_REQUEST, str(error), field=field) from None
    return chat


def _continuing(body: ChatCompletionRequest, conversation: Conversation,
                group_nudge: bool = False) -> bool:
    """Whether the reply continues the last message (SillyTavern's Continue and prefill).

    The last message must be the character's. SillyTavern 1.12.6 sends no flag: with
    "Continue prefill" the partial reply is the last message; without it the last message
    is followed by its continue nudge (``[Continue the following message. ...]``,
    ``public/scripts/openai.js`` 797-809 and 873-876), which ``stchat`` drops. So a
    trailing assistant message is continued unless the body says otherwise with
    text-generation-webui's ``continue_``, vLLM's ``continue_final_message`` or
    ``add_generation_prompt: true``, or ends with SillyTavern's group nudge
    (``group_nudge``): in a group chat one member's reply follows another's, and the
    nudged member writes a new one.
    """
    visible = [m for m in conversation.messages if not m.hidden]
    if not visible or visible[-1].role != "char":
        return False
    for flag in (body.continue_, body.continue_final_message):
        if flag is not None:
            return flag
    return body.add_generation_prompt is not True and not group_nudge


def render_chat(chat: ChatPrompt) -> str:
    """The whole prompt of a chat request (before fitting): open header, or the reply
    being continued."""
    return chat.policy.render(chat.conversation, open_response=not chat.continuing,
                              response_length=chat.response_length,
                              input_length=chat.input_length, continuing=chat.continuing)


def chat_request(body: ChatCompletionRequest, state: ServerState) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` body (text-generation-webui samplers).

    The prompt is fitted to the context by the policy when the request is queued.
    """
    chat = chat_prompt(body, state.config.prompt_policy)
    prompt = render_chat(chat)
    stops = chat.policy.stop_strings(chat.conversation.user.name)
    request = text_request(body_fields(body), prompt, "textgen", clamp=False,
                           config=state.config, engine_context=state.engine.context_length,
                           extra_stops=stops, vocab_size=getattr(state.engine, "n_vocab", None),
                           choices=True,
                           grammars=getattr(state.engine, "supports_grammar", False))
    return replace(request, chat=chat)


def completion_events(meta: ReplyMeta, index: int = 0) -> Callable[[TextChunk], list[str]]:
    """The SSE events of ``/v1/completions`` chunks of choice ``index``."""

    offset = 0  # reply characters already sent (``text_offset`` of the log-probabilities)

    def events(chunk: TextChunk) -> list[str]:
        nonlocal offset
        reason = wire_finish_reason(chunk.finish_reason)
        if not chunk.text and reason is None and not chunk.logprobs:
            return []
        data: dict[str, Any] = {
            "id": meta.id, "object": "text_completion", "created": meta.created,
            "model": meta.model, "choices": [{
                "index": index, "text": chunk.text, "finish_reason": reason,
                "logprobs": completion_logprobs(chunk.logprobs, offset)}]}
        offset += sum(len(e.token) for e in chunk.logprobs)
        if reason is not None and meta.usage:
            data["usage"] = usage(chunk.prompt_tokens, chunk.completion_tokens)
        return [sse(data)]

    return events


def keeps_leading_space(body: ChatCompletionRequest) -> bool:
    """Whether the reply keeps the space its first token starts with.

    The open turn ends with ``Name:``, so a new reply starts with a space that is not part
    of the message: it is dropped. A continued message is joined by the client: with an
    explicit ``continue_``/``continue_final_message``/``add_generation_prompt: false`` the
    text is appended as it is (text-generation-webui, vLLM), so the space stays; without a
    flag (SillyTavern) it is dropped too, since SillyTavern's default Continue Postfix adds
    a space itself (``public/script.js`` 3947-3954).
    """
    return (body.continue_ is True or body.continue_final_message is True
            or body.add_generation_prompt is False)


def chat_events(meta: ReplyMeta, keep_space: bool = False, index: int = 0,
                ) -> Callable[[TextChunk], list[str]]:
    """The SSE events of ``/v1/chat/completions`` chunks of choice ``index`` (the role
    first, then deltas).

    The first text loses its leading space unless ``keep_space`` (``keeps_leading_space``).
    """
    started = False

    def events(chunk: TextChunk) -> list[str]:
        nonlocal started
        out = []
        text = chunk.text if started or keep_space else chunk.text.lstrip(" ")
        if not started and (text or chunk.finish_reason):
            started = True
            out.append(sse(_chat_chunk_data(meta, {"role": "assistant", "content": ""}, None,
                                            index)))
        if text or chunk.logprobs:
            data = _chat_chunk_data(meta, {"content": text}, None, index)
            if chunk.logprobs:
                data["choices"][0]["logprobs"] = chat_logprobs(chunk.logprobs)
            out.append(sse(data))
        reason = wire_finish_reason(chunk.finish_reason)
        if reason is not None:
            data = _chat_chunk_data(meta, {}, reason, index)
            if meta.usage:
                data["usage"] = usage(chunk.prompt_tokens, chunk.completion_tokens)
            out.append(sse(data))
        return out

    return events


def _chat_chunk_data(meta: ReplyMeta, delta: dict[str, Any], reason: str | None,
                     index: int = 0) -> dict[str, Any]:
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
            "model": meta.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": reason}]}


def _total_usage(replies: list[Reply]) -> dict[str, int]:
    """``usage`` of a request's choices: the prompt once, every choice's tokens."""
    return usage(replies[0].prompt_tokens, sum(r.completion_tokens for r in replies))


def openai_error_event(message: str) -> str:
    """The event reporting an engine failure in an OpenAI stream (then ``[DONE]``)."""
    return sse(stream_error(message))


def _wants_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def router(state: ServerState) -> APIRouter:
    """The OpenAI and text-generation-webui routes, bound to ``state``."""
    api = APIRouter(tags=["openai"])

    @api.get("/v1/models", summary="The served model (SillyTavern's status check)")
    async def models() -> dict[str, Any]:
        # ``max_model_len`` is vLLM's name for the context; clients that read it size
        # their prompts to what this server really fits.
        return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                            "created": 0, "owned_by": "limamono",
                                            "max_model_len": state.engine.context_length}]}

    @api.post("/v1/completions", summary="Text completion (OpenAI, KoboldCpp, textgen)",
              response_model=None)
    async def completions(body: CompletionRequest, request: Request,
                          ) -> dict[str, Any] | EventStream:
        job = await state.submit(lambda: completion_request(body, state))
        meta = ReplyMeta.new("cmpl", state.model_name, _wants_usage(body))
        if body.stream:
            return choices_stream(job, lambda i: completion_events(meta, i),
                                  openai_error_event, DONE)
        replies = await state.replies(job, request.receive)
        return {"id": meta.id, "object": "text_completion", "created": meta.created,
                "model": meta.model,
                "choices": [{"index": i, "text": reply.text,
                             "logprobs": completion_logprobs(reply.logprobs),
                             "finish_reason": wire_finish_reason(reply.finish_reason)}
                            for i, reply in enumerate(replies)],
                "usage": _total_usage(replies)}

    @api.post("/v1/chat/completions", summary="Chat, rendered with the Limamono format",
              response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               ) -> dict[str, Any] | EventStream:
        job = await state.submit(lambda: chat_request(body, state))
        meta = ReplyMeta.new("chatcmpl", state.model_name, _wants_usage(body))
        if body.stream:
            keep = keeps_leading_space(body)
            return choices_stream(job, lambda i: chat_events(meta, keep, i),
                                  openai_error_event, DONE)
        replies = await state.replies(job, request.receive)
        keep = keeps_leading_space(body)
        return {"id": meta.id, "object": "chat.completion", "created": meta.created,
                "model": meta.model,
                "choices": [{"index": i, "finish_reason": wire_finish_reason(reply.finish_reason),
                             "message": {"role": "assistant",
                                         "content": reply.text if keep
                                         else reply.text.lstrip(" ")},
                             "logprobs": chat_logprobs(reply.logprobs)}
                            for i, reply in enumerate(replies)],
                "usage": _total_usage(replies)}

    @api.get("/v1/internal/model/info", summary="Model and LoRA names (text-generation-webui)")
    async def model_info() -> dict[str, Any]:
        loras = [state.config.adapter_name] if state.config.adapter_name else []
        adapters = getattr(state.engine, "adapters", None)
        if adapters is not None:  # llama.cpp: the loaded ones (they change at run time)
            loras = [a.name for a in adapters()]
        return {"model_name": state.model_name, "lora_names": loras,
                "context_length": state.engine.context_length,
                "prompt_policy": state.config.prompt_policy.name}

    @api.post("/v1/internal/encode", summary="Tokenize a text (text-generation-webui)")
    async def encode(body: EncodeRequest) -> dict[str, Any]:
        ids = await state.tokenize(body.text)
        return {"tokens": ids, "length": len(ids)}

    @api.post("/v1/internal/token-count", summary="Count a text's tokens (text-generation-webui)")
    async def token_count(body: EncodeRequest) -> dict[str, Any]:
        return {"length": len(await state.tokenize(body.text))}

    @api.post("/v1/internal/stop-generation", summary="Stop the running generation")
    async def stop_generation() -> str:
        state.queue.abort()
        return "OK"

    return api
