"""Request bodies of the HTTP API as pydantic models (validation and the OpenAPI schema).

The models check types only: ranges and alias precedence of the sampler fields are
``limamono.samplers``' job (``settings_from_fields``), and the request-level limits
(``max_tokens``, stop strings, context) are ``limamono.server.params``'. Every model keeps
unknown keys (``extra="allow"``): SillyTavern forwards its whole settings body, including
keys no backend knows (``api_server``, ``legacy_api``, ...), and those must just work.

``strict`` stops pydantic from turning ``"0.7"`` into ``0.7`` or ``1`` into ``True`` (an
error names the field instead), and ``allow_inf_nan=False`` rejects the ``NaN`` and
``Infinity`` that Python's JSON parser accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from limamono.samplers import SamplerSettings
from limamono.samplers.wire import KOBOLDCPP_ALIASES, TEXTGEN_ALIASES
from limamono.server.errors import BAD_REQUEST, ApiError
from limamono.util.untrusted import surrogate_reason

#: Python type of each SamplerSettings field -> the JSON type its wire names accept.
_WIRE_TYPES: dict[str, Any] = {
    "float": float | None,
    "int": int | None,
    "int | None": int | None,
    "tuple[int, ...]": list[int] | str | None,  # textgen's custom_token_bans: "id,id"
    "tuple[str, ...]": list[str] | str | None,  # DRY breakers: also a JSON string
    "tuple[str, ...] | None": list[str] | str | None,
    "bool": bool | None,
    # logit_bias: OpenAI's {"id": bias}, or a list of [id, bias] pairs
    "tuple[tuple[int, float], ...]": dict[str, Any] | list[Any] | None,
}


class Body(BaseModel):
    """Base of every request body: strict types, finite numbers, unknown keys kept, and
    text that is valid Unicode (see :func:`check_unicode`)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_unicode(data)
        return data


def check_unicode(data: Any) -> None:
    """Refuse a body holding a lone UTF-16 surrogate (JSON's ``"\\ud800"``) anywhere.

    Python's JSON parser accepts one, but it cannot be encoded, so it would fail deep in the
    tokenizer (a 500, or an error event after a 200 when streaming). Raised as
    :class:`ApiError` (400 naming the field), which pydantic does not wrap, so the route's
    error handler answers it as it is.

    Raises:
        ApiError: 400 naming the first field (dotted path) that holds one.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_text(path or "body", value)
        elif isinstance(value, dict):
            items = list(value.items())
            for key, _ in items:
                _check_text(f"a key of {path or 'the body'}", str(key))
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(items))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))


def _check_text(field: str, text: str) -> None:
    if text.isascii():
        return
    reason = surrogate_reason(text)
    if reason is not None:
        raise ApiError(BAD_REQUEST, f"{field}: {reason}; fix: send valid UTF-8 text (JSON "
                       "\\u escapes of surrogates must come in pairs)", field=field)


def _sampler_fields() -> dict[str, Any]:
    """One optional field per sampler wire name, typed from ``SamplerSettings``.

    Built from the alias tables of ``limamono.samplers.wire`` so that the schema can never
    miss (or invent) an alias.
    """
    kinds = {f.name: str(f.type) for f in dataclasses.fields(SamplerSettings)}
    fields: dict[str, Any] = {}
    for table in (TEXTGEN_ALIASES, KOBOLDCPP_ALIASES):
        for setting, names in table.items():
            for name in names:
                doc = f"Sampler setting `{setting}` (wire name `{name}`); absent: the preset."
                # A type not listed yet (a new sampler) is documented loosely; the sampler
                # settings still check it, so the server keeps working meanwhile.
                wire_type = _WIRE_TYPES.get(kinds[setting], Any)
                fields[name] = (wire_type, Field(None, description=doc))
    fields["temperature_last"] = (bool | None, Field(
        None, description="text-generation-webui: run temperature after the other samplers."))
    return fields


SamplerFields: type[Body] = create_model(
    "SamplerFields", __base__=Body, __doc__="Every sampler wire name SillyTavern sends.",
    **_sampler_fields())

_STOP_DOC = "Stop strings (a string or a list); the reply ends before the first one found."
_CTX_DOC = "The client's context size; the prompt is cut from the left to fit it."


class KoboldGenerateRequest(SamplerFields):  # type: ignore[misc, valid-type]  # a create_model class
    """KoboldAI/KoboldCpp ``/api/v1/generate`` and ``/api/extra/generate/stream``."""

    prompt: str = Field(description="The whole prompt, as text.")
    memory: str | None = Field(None, description="Text put before the prompt (KoboldCpp).")
    max_length: int | None = Field(None, description="Tokens to generate (clamped to fit).")
    max_context_length: int | None = Field(None, description=_CTX_DOC)
    stop_sequence: list[str] | None = Field(None, description=_STOP_DOC)
    genkey: str | None = Field(None, description="Client key, for abort and check.")


class StreamOptions(Body):
    """OpenAI ``stream_options``."""

    include_usage: bool | None = None


class CompletionRequest(SamplerFields):  # type: ignore[misc, valid-type]  # a create_model class
    """``/v1/completions``: OpenAI fields plus the KoboldCpp and text-generation-webui ones."""

    prompt: str | list[str] = Field(description="The prompt (a list must hold one string).")
    model: str | None = Field(None, description="Ignored: one model is served.")
    max_tokens: int | None = Field(None, description="Tokens to generate.")
    max_new_tokens: int | None = Field(None, description="Alias of max_tokens.")
    max_length: int | None = Field(None, description="KoboldCpp alias of max_tokens.")
    n_predict: int | None = Field(None, description="llama.cpp alias of max_tokens.")
    num_predict: int | None = Field(None, description="Ollama alias of max_tokens.")
    stop: str | list[str] | None = Field(None, description=_STOP_DOC)
    stopping_strings: list[str] | None = Field(None, description="Alias of stop.")
    stop_sequence: list[str] | None = Field(None, description="KoboldCpp alias of stop.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: StreamOptions | None = None
    truncation_length: int | None = Field(None, description=_CTX_DOC)
    num_ctx: int | None = Field(None, description="Alias of truncation_length.")
    max_context_length: int | None = Field(None, description="Alias of truncation_length.")
    n: int | None = Field(None, description=(
        "Replies to the one prompt (1-8; the prompt is read once); choice i samples with "
        "seed + i."))
    best_of: int | None = Field(None, description="1 or n (replies are not ranked).")
    api_type: str | None = Field(None, description=(
        "SillyTavern's backend type; `koboldcpp` selects KoboldCpp sampler semantics."))
    genkey: str | None = Field(None, description="Client key, for abort and check.")


class ContentPart(Body):
    """One part of an OpenAI message's content; text parts are kept, others ignored."""

    type: str | None = None
    text: str | None = None


class WireMessage(Body):
    """One OpenAI chat message as sent; ``name`` names the speaker, ``length`` labels the turn.

    Not the chat model: ``stchat.conversation`` turns the list into a ``Conversation``
    (through ``format.from_chat_messages``), the one place wire messages become the model.
    """

    role: str
    content: str | list[ContentPart]
    name: str | None = None
    length: str | None = None


class ChatCompletionRequest(SamplerFields):  # type: ignore[misc, valid-type]  # a create_model class
    """``/v1/chat/completions``: messages rendered with the Limamono format."""

    messages: list[WireMessage] = Field(description=(
        "System: the character sheet (name on the first line, `Scenario: ...` last); "
        "then user/assistant turns."))
    model: str | None = Field(None, description="Ignored: one model is served.")
    max_tokens: int | None = Field(None, description="Tokens to generate.")
    max_completion_tokens: int | None = Field(None, description="Alias of max_tokens.")
    stop: str | list[str] | None = Field(None, description=_STOP_DOC)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description=(
        "Replies to the one prompt (1-8; the prompt is read once); choice i samples with "
        "seed + i."))
    response_length: str | None = Field(None, description=(
        "Length label of the reply (`micro` ... `unlimited`, or `none`); default `long`."))
    input_length: str | None = Field(None, description=(
        "Length label of user turns without their own (the policy says which); default: "
        "the policy's rule."))
    user_name: str | None = Field(None, description="The user's name when no message names it.")
    char_name: str | None = Field(None, description=(
        "The character's name; a sheet that does not start with it is all description."))
    trigger: str | None = Field(None, description="Trigger phrase: `card` or `preset`; "
                                "default: the server's (the adapter's).")
    policy: str | None = Field(None, description=(
        "Prompt policy: `training` or `sillytavern`; default: the server's."))
    continue_: bool | None = Field(None, description=(
        "text-generation-webui: continue the last assistant message instead of starting a "
        "new reply. Default: continue when the last message is the assistant's."))
    continue_final_message: bool | None = Field(None, description=(
        "vLLM/transformers name of the same switch."))
    add_generation_prompt: bool | None = Field(None, description=(
        "vLLM: `false` continues the last assistant message, `true` opens a new reply."))


class TokenCountRequest(Body):
    """KoboldCpp ``/api/extra/tokencount``."""

    prompt: str
    special: bool | None = None


class EncodeRequest(Body):
    """text-generation-webui ``/v1/internal/encode`` and ``/token-count``."""

    text: str


class AbortRequest(Body):
    """KoboldCpp ``/api/extra/abort`` and ``/api/extra/generate/check``."""

    genkey: str | None = None


class SlotActionRequest(Body):
    """``POST /slots/{id}?action=save|restore`` (llama.cpp server)."""

    filename: str | None = Field(None, description="A plain file name in --slot-save-path.")
