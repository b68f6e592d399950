"""From a validated request body to one generation: prompt, samplers, length, stops, context.

Everything here runs before a request enters the queue, so a bad request is refused with
400 naming its field and never reaches the engine. The policies, per emulated API:

- Reply length: Kobold routes clamp ``max_length`` so that some prompt still fits, as
  KoboldCpp does; OpenAI routes refuse a ``max_tokens`` that leaves no room for a prompt
  (400), as vLLM does. Both refuse values below 1 or above ``MAX_TOKENS_CAP``.
- Context overflow: the prompt policy (``limamono.core.policy``) fits a Limamono prompt by
  leaving out its oldest whole turns, never the newest user turn or the open header, and
  refuses (400 naming the token counts) when even those do not fit; every cut is logged
  in one line. Any other text is cut from the left by tokens, which is what KoboldCpp and
  text-generation-webui do. A client's own context size (``truncation_length``,
  ``max_context_length``, ``num_ctx``) below the model's is honoured the same way.
- Sampler semantics: the KoboldCpp dialect on Kobold routes and for KoboldCpp-shaped
  ``/v1/completions`` bodies (see ``dialect_of``), the text-generation-webui one elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from limamono.core import policy as pol
from limamono.core.conversation import Conversation
from limamono.engine.protocol import Engine, GrammarError
from limamono.samplers import (
    MAX_LOGPROBS,
    SamplerError,
    SamplerSettings,
    settings_from_fields,
    unsupported_fields,
)
from limamono.samplers.settings import Grammar, check_int
from limamono.samplers.shaping import check_in_vocab
from limamono.samplers.wire import constraint_fields
from limamono.server.config import ServerConfig
from limamono.server.errors import BAD_REQUEST, ApiError
from limamono.util.untrusted import quote

log = logging.getLogger("limamono.server")

#: Larger reply lengths are refused outright on every route (a typo or an attack).
MAX_TOKENS_CAP = 1 << 20

#: Request-level aliases (not samplers), each dialect's own name first.
MAX_TOKEN_FIELDS = {
    "koboldcpp": ("max_length", "max_tokens", "max_new_tokens", "n_predict", "num_predict"),
    "textgen": ("max_tokens", "max_new_tokens", "max_completion_tokens", "max_length",
                "n_predict", "num_predict"),
    "llamacpp": ("n_predict", "max_tokens", "max_new_tokens", "max_length", "num_predict"),
}
STOP_FIELDS = {
    "koboldcpp": ("stop_sequence", "stop", "stopping_strings"),
    "textgen": ("stop", "stopping_strings", "stop_sequence"),
    "llamacpp": ("stop", "stopping_strings", "stop_sequence"),
}
CONTEXT_FIELDS = {
    "koboldcpp": ("max_context_length", "truncation_length", "num_ctx"),
    "textgen": ("truncation_length", "num_ctx", "max_context_length"),
    "llamacpp": ("truncation_length", "num_ctx", "max_context_length"),
}


@dataclass(frozen=True)
class ChatPrompt:
    """A structured conversation to render and fit under a prompt policy (the chat route).

    Attributes:
        conversation: The conversation the request describes.
        policy: The policy that labels and fits it.
        response_length: The open reply's label (None: no label).
        input_length: Requested label of user turns (None: the policy's rule).
        continuing: The last message is the assistant's reply being continued: the prompt
            ends with its text instead of a new open ``### Response:`` header.
    """

    conversation: Conversation
    policy: pol.PromptPolicy
    response_length: str | None
    input_length: str | None
    continuing: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, checked and ready for the queue.

    Attributes:
        prompt: The prompt text (cut later by the engine if it does not fit).
        settings: The sampler settings (the preset overridden by the request).
        max_new_tokens: Tokens to generate at most.
        stop: Stop strings (the reply ends before the first one; never included).
        context: The context to fit prompt + reply into (<= the engine's).
        genkey: The client's key, for ``/api/extra/abort`` and ``/generate/check``.
        chat: The conversation behind ``prompt`` (structured routes), fitted by turns.
        context_field: The wire field that set ``context`` (None: the engine's own).
        n: Replies (choices) to the one prompt; choice i samples with seed + i.
    """

    prompt: str
    settings: SamplerSettings
    max_new_tokens: int
    stop: tuple[str, ...]
    context: int
    genkey: str | None = None
    chat: ChatPrompt | None = None
    context_field: str | None = None
    n: int = 1
    #: llama.cpp's per-request ``lora`` field as sent (checked by :func:`request_adapters`).
    lora: Any = None
    #: The adapter set chosen (name to scale); None: every loaded adapter at its scale.
    adapters: dict[str, float] | None = None


#: Largest LoRA scale a client may give (llama.cpp takes any float; beyond this is a typo).
MAX_SCALE = 10.0


def request_adapters(value: Any, engine: Any) -> dict[str, float] | None:
    """A request's adapter choice from llama.cpp's ``lora`` field (name to scale); None
    when the body has none (``tools/server/README.md``: adapters not named get scale 0).

    Raises:
        ApiError: 400 naming the field: not a list of ``{"id", "scale"}``, an id that is
            not loaded, a scale out of range, or an engine without run-time adapters.
    """
    if value is None:
        return None
    if not hasattr(engine, "using_adapters"):
        raise ApiError(BAD_REQUEST, "lora: choosing adapters per request needs the llama.cpp "
                       "engine (a GGUF model); torch merges --adapter into the weights",
                       field="lora")
    if not isinstance(value, list):
        raise ApiError(BAD_REQUEST, 'lora: must be a list of {"id": N, "scale": X}',
                       field="lora")
    loaded = engine.adapters()
    choice = {a.name: 0.0 for a in loaded}
    for i, item in enumerate(value):
        where = f"lora[{i}]"
        if not isinstance(item, dict) or set(item) - {"id", "scale"} or "id" not in item:
            raise ApiError(BAD_REQUEST, f'{where}: must be {{"id": N, "scale": X}}',
                           field=where)
        index, scale = item["id"], item.get("scale", 1.0)
        if isinstance(index, bool) or not isinstance(index, int) or \
                not 0 <= index < len(loaded):
            raise ApiError(BAD_REQUEST, f"{where}.id={quote(index)}: no loaded adapter has "
                           f"that id ({len(loaded)} loaded; GET /v1/lora lists them)",
                           field=f"{where}.id")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or \
                not -MAX_SCALE <= scale <= MAX_SCALE:
            raise ApiError(BAD_REQUEST, f"{where}.scale={quote(scale)}: must be a number "
                           f"from {-MAX_SCALE} to {MAX_SCALE}", field=f"{where}.scale")
        choice[loaded[index].name] = float(scale)
    return choice


def dialect_of(body: Mapping[str, Any]) -> str:
    """The sampler dialect of a ``/v1/completions`` body: ``koboldcpp`` or ``textgen``.

    KoboldCpp-shaped means SillyTavern's own marker ``api_type: "koboldcpp"``, or
    ``sampler_order``, a KoboldCpp-native key that SillyTavern sends to no other backend
    type (its text-generation-webui mode sends ``rep_pen`` and ``rep_pen_slope`` too, so
    those do not count).
    """
    if body.get("api_type") == "koboldcpp" or body.get("sampler_order") is not None:
        return "koboldcpp"
    return "textgen"


def first_present(body: Mapping[str, Any], names: Sequence[str]) -> tuple[str, Any] | None:
    """(name, value) of the first of ``names`` that ``body`` sets to a non-null value."""
    for name in names:
        if body.get(name) is not None:
            return name, body[name]
    return None


def whole_number(name: str, value: Any) -> int:
    """A request's token count: an int (or a float with no fraction, as JavaScript clients
    may send ``512.0``); anything else is a 400 naming the field.

    Raises:
        ApiError: text, a list, true/false, a fraction, NaN or infinity.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(BAD_REQUEST, f"{name}={quote(value)}: must be a whole number",
                       field=name)
    return value


def sampler_settings(body: Mapping[str, Any], base: SamplerSettings, dialect: str,
                     vocab_size: int | None = None) -> SamplerSettings:
    """The request's samplers and log-probability count; a bad value is a 400 naming the
    wire field (a token id outside the vocabulary too, when ``vocab_size`` is known)."""
    try:
        settings = settings_from_fields(body, base, dialect)
        settings = settings.replace(logprobs=logprobs_count(body))
        if vocab_size is not None:
            check_in_vocab("logit_bias", [t for t, _ in settings.logit_bias], vocab_size)
            check_in_vocab("custom_token_bans", settings.custom_token_bans, vocab_size)
        if base.banned_strings and settings.banned_strings != base.banned_strings:
            # the server's own bans (``serve --ban``) hold for every request
            settings = settings.replace(banned_strings=tuple(dict.fromkeys(
                (*base.banned_strings, *settings.banned_strings))))
        return settings
    except SamplerError as error:
        raise ApiError(BAD_REQUEST, str(error), field=error.field) from None


def logprobs_count(body: Mapping[str, Any]) -> int | None:
    """How many alternatives per token the request wants reported, or None (not asked).

    OpenAI completions: ``logprobs`` is the count (0-5 there; 0-20 here); chat completions:
    ``logprobs: true`` with ``top_logprobs``; KoboldCpp and llama.cpp: ``n_probs``
    (``logprobs: true`` on Kobold routes).

    Raises:
        SamplerError: A count that is not a whole number in [0, 20].
    """
    flag, count = body.get("logprobs"), body.get("n_probs")
    top = body.get("top_logprobs")
    if flag is None or flag is False:
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return check_int("n_probs", count, 0, MAX_LOGPROBS)
        return None
    if flag is True:
        name, value = ("top_logprobs", top) if top is not None else ("n_probs", count)
        return 0 if value is None else check_int(name, value, 0, MAX_LOGPROBS)
    return check_int("logprobs", flag, 0, MAX_LOGPROBS)


def effective_context(body: Mapping[str, Any], dialect: str, engine_context: int) -> int:
    """The context to fit into: the client's size when it is smaller than the engine's."""
    found = first_present(body, CONTEXT_FIELDS[dialect])
    if found is None:
        return engine_context
    name, value = found[0], whole_number(*found)
    if value < 1:
        raise ApiError(BAD_REQUEST, f"{name}={value}: must be at least 1 (or absent: "
                       f"the model's {engine_context})", field=name)
    return min(value, engine_context)


def max_new_tokens(body: Mapping[str, Any], dialect: str, default: int, context: int,
                   clamp: bool) -> int:
    """The reply length: the request's, checked; clamped (Kobold) or refused (OpenAI).

    Raises:
        ApiError: Below 1, above ``MAX_TOKENS_CAP``, or (``clamp=False``) leaving no room
            for a prompt in ``context``.
    """
    # KoboldCpp keeps at least min(ctx - 4, 16) tokens for the prompt.
    limit = max(1, context - max(1, min(context - 4, 16)))
    found = first_present(body, MAX_TOKEN_FIELDS[dialect])
    if found is None:
        return min(default, limit)  # the server's default never refuses a request
    name, value = found[0], whole_number(*found)
    if value < 1 or value > MAX_TOKENS_CAP:
        raise ApiError(BAD_REQUEST, f"{name}={value}: must be in [1, {MAX_TOKENS_CAP}]",
                       field=name)
    if value <= limit:
        return value
    if clamp:
        return limit
    raise ApiError(BAD_REQUEST, f"{name}={value} leaves no room for a prompt in the context of "
                   f"{context} tokens; fix: at most {limit}", field=name)


def stop_strings(body: Mapping[str, Any], dialect: str, config: ServerConfig,
                 extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The stop strings: the request's (a string or a list), then ``extra``, deduplicated.

    Empty strings are dropped. A leading newline, as SillyTavern sends in instruct mode, is
    kept: it is part of the string to match.

    Raises:
        ApiError: More than ``config.max_stop_strings`` or one longer than
            ``config.max_stop_chars``.
    """
    found = first_present(body, STOP_FIELDS[dialect])
    name, value = found if found is not None else ("stop", [])
    given = [value] if isinstance(value, str) else value
    if not isinstance(given, list) or not all(isinstance(stop, str) for stop in given):
        raise ApiError(BAD_REQUEST, f"{name} must be a string or a list of strings, got "
                       f"{quote(value)}", field=name)
    if len(given) > config.max_stop_strings:
        raise ApiError(BAD_REQUEST, f"{name} has {len(given)} stop strings; at most "
                       f"{config.max_stop_strings} are allowed", field=name)
    for i, stop in enumerate(given):
        if len(stop) > config.max_stop_chars:
            raise ApiError(BAD_REQUEST, f"{name}[{i}] has {len(stop)} characters; at most "
                           f"{config.max_stop_chars} are allowed", field=f"{name}[{i}]")
    return tuple(s for s in dict.fromkeys([*given, *extra]) if s)


def single_prompt(value: str | list[str], field: str = "prompt") -> str:
    """The one prompt of a request (OpenAI allows a list; one reply per request here)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ApiError(BAD_REQUEST, f"{field} is a list of {len(value)} prompts; send "
                           "exactly one (one reply per request)", field=field)
        value = value[0]
    if not value:
        raise ApiError(BAD_REQUEST, f"{field} is empty; send the text to continue", field=field)
    return value


#: Most replies (``n``) one OpenAI-style request may ask for.
MAX_CHOICES = 8


def check_single_reply(body: Mapping[str, Any]) -> None:
    """Refuse ``n`` / ``best_of`` other than 1 (routes that return one reply)."""
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and value != 1:
            raise ApiError(BAD_REQUEST, f"{name}={quote(value)}: only 1 is supported; send one "
                           "request per reply", field=name)


def choices_of(body: Mapping[str, Any]) -> int:
    """The ``n`` of a request that may return several replies (1..:data:`MAX_CHOICES`).

    ``best_of`` is accepted only as 1 or equal to ``n`` (no ranking of replies here).
    """
    n = body.get("n")
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise ApiError(BAD_REQUEST, f"n={quote(n)}: must be a whole number from 1 to "
                       f"{MAX_CHOICES}", field="n")
    best_of = body.get("best_of")
    if best_of is not None and best_of not in (1, n):
        raise ApiError(BAD_REQUEST, f"best_of={quote(best_of)}: only 1 or n ({n}) is "
                       "supported; replies are not ranked", field="best_of")
    return n


def check_constraints(body: Mapping[str, Any], supported: bool) -> None:
    """Refuse a constraint (grammar, JSON schema) the engine cannot run.

    Ignoring it would answer free text to a client that parses JSON (SillyTavern's tracker
    and status-block extensions send ``json_schema``), so the field is named instead.
    SillyTavern sends the fields empty when they are off (``""``, ``{}``): those pass, as
    does OpenAI's ``response_format: {"type": "text"}``. Which field maps to which grammar
    is ``limamono.samplers.wire.grammar_from_fields``' decision.
    """
    if supported:
        return
    for name in constraint_fields(body):
        raise ApiError(BAD_REQUEST, f"{name}: grammars and JSON schemas need the llama.cpp "
                       "backend (serve a GGUF model: --backend llamacpp); the torch engine "
                       "runs none; fix: leave the field empty (SillyTavern: clear the "
                       "grammar / JSON schema box)", field=name)


def check_grammar(engine: Engine, grammar: Grammar) -> None:
    """Parse a request's grammar once before it is queued (each stream parses its own).

    Raises:
        ApiError: 400 naming the grammar's field, with llama.cpp's parse message, or
            saying that this engine runs no grammars.
    """
    check = getattr(engine, "check_grammar", None)
    try:
        if check is None:
            raise GrammarError(grammar.field, "grammars and JSON schemas need the llama.cpp "
                               "backend; this engine runs none")
        check(grammar)
    except GrammarError as error:
        raise ApiError(BAD_REQUEST, str(error), field=error.field) from None


def text_request(body: Mapping[str, Any], prompt: str, dialect: str, clamp: bool,
                 config: ServerConfig, engine_context: int,
                 extra_stops: Sequence[str] = (),
                 vocab_size: int | None = None, choices: bool = False,
                 grammars: bool = False) -> GenerationRequest:
    """Check a text-completion body and build its :class:`GenerationRequest`.

    Args:
        body: The validated body as a dict (unknown keys included and ignored).
        prompt: The prompt text.
        dialect: ``koboldcpp``, ``textgen`` or ``llamacpp`` (aliases and sampler
            semantics; a ``llamacpp`` body has been through ``wire.llamacpp_fields``).
        clamp: Clamp an over-long reply length (Kobold) instead of refusing it.
        config: The server config (preset, limits).
        engine_context: The engine's context length.
        extra_stops: Stop strings the route adds (the chat route's ``###`` and user line).
        vocab_size: The model's vocabulary size (token ids in ``logit_bias`` and
            ``custom_token_bans`` must be below it); None: not checked here.
        choices: The route returns ``n`` replies (OpenAI shapes); else ``n`` must be 1.
        grammars: The engine runs grammars (``supports_grammar``); else a constraint
            field is a 400 naming it.

    Raises:
        ApiError: 400 naming the field at fault.
    """
    n = choices_of(body) if choices else 1
    if not choices:
        check_single_reply(body)
    check_constraints(body, grammars)
    ignored = unsupported_fields(body)
    if ignored:  # accepted, as the emulated servers accept them, but the user should know
        log.warning("ignoring fields this server does not implement: %s", ", ".join(ignored))
    context = effective_context(body, dialect, engine_context)
    found = first_present(body, CONTEXT_FIELDS[dialect])
    return GenerationRequest(
        prompt=prompt,
        settings=sampler_settings(body, config.sampler_settings(), dialect, vocab_size),
        max_new_tokens=max_new_tokens(body, dialect, config.default_max_tokens, context, clamp),
        stop=stop_strings(body, dialect, config, extra_stops),
        context=context,
        genkey=body.get("genkey"),
        context_field=found[0] if found is not None else None,
        n=n,
        lora=body.get("lora"),
    )


#: The answer to a Limamono prompt that is a closed sheet and nothing else.
SHEET_ONLY = (
    "the prompt is a character sheet with no turn and no open '### Response:' header, so "
    "there is no reply to write; SillyTavern sends this when the sheet alone fills its "
    "prompt budget (Context minus Response minus padding); fix: raise Context (tokens), "
    "lower Response (tokens), or shorten the sheet")


def fit_to_context(engine: Engine, request: GenerationRequest) -> str:
    """The prompt to queue: fitted by the prompt policy to the request's context.

    A conversation (chat route) is fitted by its policy; a Limamono text prompt by whole
    turns (``policy.fit_text``), keeping the bytes the client sent; any other text is cut
    from the left by tokens when the client asked for a context below the engine's (the
    engine cuts raw text to its own). A cut is logged in one line. Tokenizing does not
    take the engine's generation lock.

    Raises:
        ApiError: 400 when even the sheet, the newest user turn and the open header do not
            fit (the message names the token counts and the fix), and when a text prompt
            is a closed sheet with no turn (``policy.closed_sheet_without_turn``).
    """
    count = pol.token_counter(engine)
    check_room_for_prompt(request, count(""))
    chat = request.chat
    try:
        if chat is not None:
            fitted: pol.Fitted | None = chat.policy.fit(
                chat.conversation, count, request.context, request.max_new_tokens,
                open_response=not chat.continuing, response_length=chat.response_length,
                input_length=chat.input_length, continuing=chat.continuing)
        else:
            if pol.closed_sheet_without_turn(request.prompt):
                log.warning("refused: the prompt is a character sheet with no turn and no "
                            "open '### Response:' header")
                raise ApiError(BAD_REQUEST, SHEET_ONLY, field="prompt",
                               kind="context_length_exceeded")
            fitted = pol.fit_text(request.prompt, count, request.context,
                                  request.max_new_tokens)
    except pol.PromptTooLongError as error:
        raise ApiError(BAD_REQUEST, str(error), field="messages" if chat else "prompt",
                       kind="context_length_exceeded") from None
    if fitted is None:
        return _cut_raw(engine, request)
    if fitted.cut:
        log.warning("%s", fitted.describe())
    return fitted.text


def check_room_for_prompt(request: GenerationRequest, start_tokens: int) -> None:
    """Refuse a context that holds no prompt token beside the reply and the start tokens.

    Raises:
        ApiError: 400 naming the context field (``max_context_length: 1`` and the like).
    """
    room = request.context - request.max_new_tokens - start_tokens
    if room >= 1:
        return
    field = request.context_field or "max_tokens"
    need = request.max_new_tokens + start_tokens + 1
    raise ApiError(BAD_REQUEST, f"{field}={request.context}: no room for a prompt in the "
                   f"context: the reply takes {request.max_new_tokens} token(s) and the "
                   f"model's start tokens {start_tokens}; fix: a context of at least {need} "
                   "tokens, or a shorter reply", field=field)


def _cut_raw(engine: Engine, request: GenerationRequest) -> str:
    """Text that is not a Limamono prompt, cut from the left to a client's smaller context."""
    if request.context >= engine.context_length:
        return request.prompt
    # The engine puts its start tokens (BOS) before the text: they count in the budget.
    budget = request.context - request.max_new_tokens - pol.token_counter(engine)("")
    ids = engine.tokenize(request.prompt)
    if len(ids) <= budget:
        return request.prompt
    log.warning("prompt cut to fit: %d -> %d tokens (budget %d), raw text cut from the left",
                len(ids), budget, budget)
    return engine.detokenize(ids[len(ids) - budget:])
