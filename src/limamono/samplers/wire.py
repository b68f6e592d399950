"""Request fields to ``SamplerSettings``: the one place where wire aliases are mapped.

SillyTavern sends each sampler under several names at once (``tfs`` and ``tfs_z``,
``rep_pen``, ``repetition_penalty`` and ``repeat_penalty``, ...; see
``shared/reference/sillytavern_api.md`` §1.3-1.4). When several aliases are present, the
dialect's own name wins: text-generation-webui reads its canonical names and ignores the
others; KoboldCpp reads its native names, and takes the largest of the three repetition
penalties (``transform_genparams``).

Fields absent from a request (or JSON ``null``) keep the base settings' values, which are
the server's preset. Unknown keys are ignored, as both servers do; ``unsupported_fields``
names the ones that ask for a sampler this package does not implement, so a caller can warn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from limamono.samplers.settings import (
    MAX_GRAMMAR_CHARS,
    TEXTGEN_DEFAULT_PRIORITY,
    TEXTGEN_TEMPERATURE_NAMES,
    Grammar,
    SamplerError,
    SamplerSettings,
    check_sampler_priority,
)

#: Field -> wire names, the textgen dialect's preferred name first.
TEXTGEN_ALIASES: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature", "temp"),
    "top_k": ("top_k",),
    "top_p": ("top_p",),
    "min_p": ("min_p",),
    "typical": ("typical_p", "typical"),
    "top_a": ("top_a",),
    "tfs": ("tfs", "tfs_z"),
    "rep_pen": ("repetition_penalty", "rep_pen", "repeat_penalty"),
    "rep_pen_range": ("repetition_penalty_range", "rep_pen_range", "repeat_last_n",
                      "penalty_range"),
    "rep_pen_slope": ("rep_pen_slope",),
    "presence_penalty": ("presence_penalty", "presence_pen"),
    "frequency_penalty": ("frequency_penalty", "freq_pen"),
    "seed": ("seed", "sampler_seed"),
    "sampler_order": ("sampler_order",),
    "sampler_priority": ("sampler_priority",),
    "dry_multiplier": ("dry_multiplier",),
    "dry_base": ("dry_base",),
    "dry_allowed_length": ("dry_allowed_length",),
    "dry_penalty_last_n": ("dry_penalty_last_n", "dry_range"),
    "dry_sequence_breakers": ("dry_sequence_breakers",),
    "xtc_threshold": ("xtc_threshold",),
    "xtc_probability": ("xtc_probability",),
    "top_n_sigma": ("top_n_sigma", "nsigma"),
    "min_keep": ("min_keep",),
    "smoothing_factor": ("smoothing_factor",),
    "smoothing_curve": ("smoothing_curve",),
    "dynamic_temperature": ("dynamic_temperature",),
    "dynatemp_low": ("dynatemp_low", "min_temp"),
    "dynatemp_high": ("dynatemp_high", "max_temp"),
    "dynatemp_range": ("dynatemp_range",),
    "dynatemp_exponent": ("dynatemp_exponent", "temp_exponent"),
    "mirostat": ("mirostat_mode", "mirostat"),
    "mirostat_tau": ("mirostat_tau",),
    "mirostat_eta": ("mirostat_eta",),
    "logit_bias": ("logit_bias",),
    "custom_token_bans": ("custom_token_bans",),
    "ban_eos_token": ("ban_eos_token", "ignore_eos", "use_default_badwordsids", "bypass_eos"),
    "banned_strings": ("banned_strings",),
    # limamono's own (limamono.engine.landing); no other server reads it.
    "soft_landing": ("soft_landing",),
}

#: Field -> wire names, KoboldCpp's native name first.
KOBOLDCPP_ALIASES: dict[str, tuple[str, ...]] = {
    **TEXTGEN_ALIASES,
    "typical": ("typical", "typical_p"),
    "rep_pen": ("rep_pen", "repetition_penalty", "repeat_penalty"),
    "rep_pen_range": ("rep_pen_range", "repetition_penalty_range", "repeat_last_n",
                      "penalty_range"),
    "seed": ("sampler_seed", "seed"),
    "top_n_sigma": ("nsigma", "top_n_sigma"),
    "mirostat": ("mirostat", "mirostat_mode"),
    # KoboldCpp reads ``banned_tokens`` as phrases too (``banned_strings`` is SillyTavern's).
    "banned_strings": ("banned_strings", "banned_tokens"),
}

#: Field -> wire names, llama.cpp server's own name first (its ``/completion`` fields:
#: ``repeat_penalty``, ``repeat_last_n``, ``tfs_z``, ``typical_p``, ``n_probs``...).
LLAMACPP_ALIASES: dict[str, tuple[str, ...]] = {
    **KOBOLDCPP_ALIASES,
    "typical": ("typical_p", "typical"),
    "rep_pen": ("repeat_penalty", "repetition_penalty", "rep_pen"),
    "rep_pen_range": ("repeat_last_n", "repetition_penalty_range", "rep_pen_range",
                      "penalty_range"),
    "tfs": ("tfs_z", "tfs"),
    "seed": ("seed", "sampler_seed"),
    "top_n_sigma": ("top_n_sigma", "nsigma"),
    "banned_strings": ("banned_strings",),
}

#: The wire dialects (alias tables) and the sampler semantics each one runs with. llama.cpp's
#: server and KoboldCpp share their sampler code (KoboldCpp is a llama.cpp fork, and DRY,
#: XTC and the dynatemp range went from KoboldCpp into llama.cpp), so llama.cpp bodies run
#: with the KoboldCpp semantics: its tail-free variant, dynamic temperature as a range
#: around ``temperature``, multi-token DRY breakers, XTC off above 0.5, mirostat replacing
#: the order. ``llamacpp_fields`` translates what differs on the wire.
WIRE_DIALECTS: dict[str, str] = {"textgen": "textgen", "koboldcpp": "koboldcpp",
                                 "llamacpp": "koboldcpp"}

#: llama.cpp ``samplers`` names -> KoboldCpp ``sampler_order`` ids. The others (``min_p``,
#: ``xtc``, ``dry``, ``penalties``, ``top_n_sigma``) run where KoboldCpp runs them: penalties
#: and DRY first, min-p after top-p, XTC after the order, top-nσ after temperature.
LLAMACPP_SAMPLER_IDS: dict[str, int] = {
    "top_k": 0, "top_p": 2, "tfs_z": 3, "typ_p": 4, "typical_p": 4, "temperature": 5,
    "temp": 5}
LLAMACPP_FIXED_PLACE = frozenset({"min_p", "xtc", "dry", "penalties", "top_n_sigma",
                                  "infill"})


def llamacpp_fields(fields: Mapping[str, Any], context: int) -> dict[str, Any]:
    """A llama.cpp ``/completion`` body with its wire rules turned into KoboldCpp's.

    - ``samplers`` (names, in order) becomes ``sampler_order``, the repetition penalty
      first (llama.cpp applies its penalties before the chain);
    - ``repeat_last_n``: 0 turns the penalties off, -1 is the whole ``context``;
    - ``dry_penalty_last_n``: 0 turns DRY off (-1, the whole context, is KoboldCpp's 0);
    - ``logit_bias`` entries ``[id, false]`` ban the token (``custom_token_bans``);
    - ``n_predict`` -1 (until the end) leaves the length to the server's default.

    Raises:
        SamplerError: ``samplers`` is not a list of known names.
    """
    out = dict(fields)
    names = out.pop("samplers", None)
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SamplerError("samplers", names, "must be a list of sampler names")
        unknown = [n for n in names
                   if n not in LLAMACPP_SAMPLER_IDS and n not in LLAMACPP_FIXED_PLACE]
        if unknown:
            raise SamplerError("samplers", names, f"unknown sampler {unknown[0]!r}; known: "
                               f"{', '.join([*LLAMACPP_SAMPLER_IDS, *LLAMACPP_FIXED_PLACE])}")
        ids = [LLAMACPP_SAMPLER_IDS[n] for n in names if n in LLAMACPP_SAMPLER_IDS]
        out["sampler_order"] = list(dict.fromkeys([6, *ids]))
    last_n = out.get("repeat_last_n")
    if last_n == 0 and not isinstance(last_n, bool):
        for name in ("repeat_penalty", "repetition_penalty", "rep_pen"):
            out.pop(name, None)
        out.update(repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    elif last_n == -1 and not isinstance(last_n, bool):
        out["repeat_last_n"] = context
    if out.get("dry_penalty_last_n") == 0 and not isinstance(out["dry_penalty_last_n"], bool):
        out["dry_multiplier"] = 0.0
    bias = out.get("logit_bias")
    if isinstance(bias, list):
        banned = [item[0] for item in bias
                  if isinstance(item, list) and len(item) == 2 and item[1] is False]
        if banned:
            out["logit_bias"] = [item for item in bias
                                 if not (isinstance(item, list) and len(item) == 2
                                         and item[1] is False)]
            out["custom_token_bans"] = [*_as_list(out.get("custom_token_bans")), *banned]
    if out.get("n_predict") == -1 and not isinstance(out["n_predict"], bool):
        out.pop("n_predict")
    return out


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):  # textgen's "id,id"
        return [int(v) for v in value.split(",") if v.strip().lstrip("-").isdigit()]
    return list(value) if isinstance(value, list | tuple) else []


#: Fields whose wire value -1 means "off / whole context / random" (vLLM, TabbyAPI, ST).
_MINUS_ONE: dict[str, Any] = {"top_k": 0, "rep_pen_range": 0, "seed": None,
                              "dry_penalty_last_n": 0}
#: Fields whose wire value is a list (kept as tuples in the settings).
_SEQUENCES = ("sampler_order", "sampler_priority", "dry_sequence_breakers", "custom_token_bans",
              "banned_strings")

#: Wire fields that turn on a sampler this package does not implement, with the value that
#: means "off". SillyTavern sends them all, normally off.
UNSUPPORTED_OFF: dict[str, Any] = {
    "epsilon_cutoff": 0, "eta_cutoff": 0, "skew": 0, "adaptive_target": 0,
    "encoder_repetition_penalty": 1, "no_repeat_ngram_size": 0, "penalty_alpha": 0,
    "guidance_scale": 1, "negative_prompt": "",
    # OpenAI's echo (the prompt repeated in the reply; SillyTavern never asks for it).
    "echo": False,
    "min_tokens": 0, "min_length": 0,
}


def settings_from_fields(fields: Mapping[str, Any], base: SamplerSettings,
                         dialect: str) -> SamplerSettings:
    """Settings for one request: ``base`` overridden by the sampler fields in ``fields``.

    Args:
        fields: A request body (any mapping; unknown keys are ignored).
        base: The server's settings; fields absent from the request keep these values.
        dialect: ``"textgen"`` (OpenAI and text-generation-webui APIs), ``"koboldcpp"``
            (KoboldCpp/KoboldAI APIs) or ``"llamacpp"`` (llama.cpp's server, after
            ``llamacpp_fields``); picks alias precedence and sampler semantics
            (``WIRE_DIALECTS``).

    Returns:
        Validated settings with ``dialect`` set.

    Raises:
        SamplerError: A value has the wrong type, is NaN/inf or out of range; ``field`` is
            the wire name the request used.
    """
    if dialect not in WIRE_DIALECTS:
        raise SamplerError("dialect", dialect, f"must be one of {', '.join(WIRE_DIALECTS)}")
    aliases = _ALIASES[dialect]
    changes: dict[str, Any] = {"dialect": WIRE_DIALECTS[dialect]}
    used: dict[str, str] = {}  # field -> the wire name its value came from
    for field, names in aliases.items():
        found = _pick(fields, field, names, dialect)
        if found is not None:
            used[field], changes[field] = found
    grammar = grammar_from_fields(fields)
    if grammar is not None:
        used["grammar"], changes["grammar"] = grammar.field, grammar
        # The soft landing forces closing characters the grammar may not allow: off with
        # a grammar (the preset's default); a request that turns it on is refused.
        if "soft_landing" not in changes:
            changes["soft_landing"] = False
    if dialect == "textgen" and fields.get("temperature_last") is not None:
        used["sampler_priority"] = "sampler_priority"
        changes["sampler_priority"] = _apply_temperature_last(
            fields["temperature_last"], changes.get("sampler_priority", base.sampler_priority))
    try:
        return base.replace(**changes)
    except SamplerError as error:
        raise SamplerError(used.get(error.field, error.field), error.value, error.reason) \
            from None


#: Constraint fields, every dialect alike (SillyTavern 1.12.6 sends ``grammar_string`` to
#: every Text Completion type, the same text as ``grammar`` to KoboldCpp and llama.cpp,
#: ``json_schema`` to TabbyAPI and llama.cpp, ``guided_grammar``/``guided_json`` to
#: Aphrodite: ``public/scripts/textgen-settings.js`` ``getTextGenGenerationData``).
GBNF_FIELDS = ("grammar", "grammar_string", "guided_grammar")
SCHEMA_FIELDS = ("json_schema", "guided_json")
CHOICE_FIELDS = ("guided_choice",)
REFUSED_CONSTRAINTS = {"guided_regex": "regular-expression constraints are not supported; "
                                       "send a GBNF grammar (grammar) or a JSON schema "
                                       "(json_schema) instead"}
#: OpenAI's ``response_format`` (``{"type": "json_schema", "json_schema": {"schema": ...}}``
#: or ``{"type": "json_object"}``, as llama.cpp's server reads it); ``text`` is no constraint.
RESPONSE_FORMAT = "response_format"
CONSTRAINT_FIELDS = (*GBNF_FIELDS, *SCHEMA_FIELDS, *CHOICE_FIELDS, *REFUSED_CONSTRAINTS,
                     RESPONSE_FORMAT)


def constraint_fields(fields: Mapping[str, Any]) -> list[str]:
    """The constraint fields ``fields`` sets to something (SillyTavern sends them empty,
    ``""`` and ``{}``, when they are off)."""
    found = [name for name in CONSTRAINT_FIELDS if fields.get(name) not in (None, "", {}, [])]
    kind = fields.get(RESPONSE_FORMAT)
    if isinstance(kind, Mapping) and kind.get("type") in (None, "text"):
        found.remove(RESPONSE_FORMAT)
    return found


def grammar_from_fields(fields: Mapping[str, Any]) -> Grammar | None:
    """The one grammar a request asks for, or None.

    GBNF fields are taken as they are (equal texts under several names count once); a JSON
    schema is converted by llama-cpp-python's ``json_schema_to_gbnf`` (the converter
    llama.cpp's server uses, ported); ``guided_choice`` (a list of strings) becomes the
    alternation of those literals.

    Raises:
        SamplerError: Two different constraints, a value of the wrong type, a schema the
            converter refuses, ``guided_regex``; the field named.
    """
    found: dict[str, Grammar] = {}
    for name in constraint_fields(fields):
        if name in REFUSED_CONSTRAINTS:
            raise SamplerError(name, fields[name], REFUSED_CONSTRAINTS[name])
        value = fields[name]
        if name in GBNF_FIELDS:
            if not isinstance(value, str):
                raise SamplerError(name, value, "must be a GBNF grammar (a string)")
            grammar = Grammar(value, name)
        elif name in SCHEMA_FIELDS:
            grammar = Grammar(schema_gbnf(name, value), name)
        elif name == RESPONSE_FORMAT:
            grammar = Grammar(schema_gbnf(name, _response_schema(value)), name)
        else:
            grammar = Grammar(_choice_gbnf(name, value), name)
        if not any(g.gbnf == grammar.gbnf for g in found.values()):
            found[name] = grammar
    if len(found) > 1:
        first, second = list(found)[:2]
        raise SamplerError(second, "...", f"{first} and {second} are both set to different "
                           "constraints; send one of them")
    return next(iter(found.values()), None)


def schema_gbnf(name: str, value: Any) -> str:
    """GBNF for a JSON schema (an object, or its JSON text) via llama-cpp-python.

    Raises:
        SamplerError: Not a schema, too long, or refused by the converter (``name`` is
            the field named).
    """
    if isinstance(value, str):
        if len(value) > MAX_GRAMMAR_CHARS:
            raise SamplerError(name, "...", f"at most {MAX_GRAMMAR_CHARS} characters")
        try:
            value = json.loads(value)
        except ValueError as error:
            raise SamplerError(name, "...", f"is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise SamplerError(name, value, "must be a JSON schema (an object)")
    text = json.dumps(value)
    if len(text) > MAX_GRAMMAR_CHARS:
        raise SamplerError(name, "...", f"at most {MAX_GRAMMAR_CHARS} characters of schema")
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:
        raise SamplerError(name, "...", "JSON schemas need llama-cpp-python (the llama.cpp "
                           "backend); fix: run make setup") from None
    try:
        return str(json_schema_to_gbnf(text))
    except Exception as error:  # the converter's own checks raise anything
        raise SamplerError(name, "...", "llama-cpp-python cannot turn this schema into a "
                           f"grammar: {type(error).__name__}: {error}") from None


def _response_schema(value: Any) -> Any:
    """The JSON schema of an OpenAI ``response_format``."""
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = value.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        if isinstance(schema, dict):
            return schema
        raise SamplerError(RESPONSE_FORMAT, value, 'must be {"type": "json_schema", '
                           '"json_schema": {"schema": {...}}}')
    raise SamplerError(RESPONSE_FORMAT, value, "type must be text, json_object or json_schema")


def _choice_gbnf(name: str, value: Any) -> str:
    """``root ::= "a" | "b"`` for vLLM's ``guided_choice`` list of strings."""
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, str) and v for v in value):
        raise SamplerError(name, value, "must be a list of non-empty strings")
    return "root ::= " + " | ".join(_gbnf_literal(v) for v in value)


def _gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (its escapes: ``\\"``, ``\\\\``, ``\\uXXXX``...)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def _pick(fields: Mapping[str, Any], field: str, names: tuple[str, ...],
          dialect: str) -> tuple[str, Any] | None:
    """(wire name, value) for ``field``, or None when the request does not set it."""
    present = [(name, fields[name]) for name in names if fields.get(name) is not None]
    if not present:
        return None
    if field == "rep_pen" and dialect == "koboldcpp" and len(present) > 1:
        # KoboldCpp: rep_pen = max(repeat_penalty, repetition_penalty, rep_pen).
        numbers = [(n, v) for n, v in present if _is_number(v)]
        if len(numbers) == len(present):
            return max(numbers, key=lambda item: item[1])
    name, value = present[0]
    if field in _MINUS_ONE and _is_number(value) and value == -1:
        value = _MINUS_ONE[field]
    if field in _SEQUENCES and isinstance(value, list):
        value = tuple(value)
    return name, value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _apply_temperature_last(flag: Any, priority: Any) -> tuple[str, ...] | None:
    """text-generation-webui's ``temperature_last``: move the temperature samplers last.

    ``False`` means the given order, or text-generation-webui's own default (temperature
    early) when the request gives none.
    """
    if not isinstance(flag, bool):
        raise SamplerError("temperature_last", flag, "must be true or false")
    names = check_sampler_priority(priority)
    if not flag:
        return names if names is not None else TEXTGEN_DEFAULT_PRIORITY
    if names is None:
        return None  # None already means temperature last
    return (*(n for n in names if n not in TEXTGEN_TEMPERATURE_NAMES),
            *(n for n in names if n in TEXTGEN_TEMPERATURE_NAMES))


def unsupported_fields(fields: Mapping[str, Any]) -> list[str]:
    """Wire fields in ``fields`` that ask for a sampler this package does not implement.

    Returns:
        Their names, in request order (values equal to "off" are not listed).
    """
    return [name for name, value in fields.items()
            if name in UNSUPPORTED_OFF and value is not None and value != UNSUPPORTED_OFF[name]]


#: Every sampler with its settings fields and its place in each dialect's order: the
#: text-generation-webui ``sampler_priority`` name and the KoboldCpp ``sampler_order`` id
#: (or where KoboldCpp runs it when it has no id). Shown by ``limamono samplers``.
CATALOG: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("logit bias / token bans", ("logit_bias", "custom_token_bans"), "(first)", "(first)"),
    ("repetition penalty", ("rep_pen", "rep_pen_range", "rep_pen_slope"),
     "repetition_penalty", "6"),
    ("presence / frequency penalty", ("presence_penalty", "frequency_penalty"),
     "presence_penalty, frequency_penalty", "6 (presence only)"),
    ("DRY", ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
             "dry_sequence_breakers"), "dry", "(before the order)"),
    ("temperature", ("temperature",), "temperature", "5"),
    ("dynamic temperature", ("dynamic_temperature", "dynatemp_low", "dynatemp_high",
                             "dynatemp_range", "dynatemp_exponent"),
     "dynamic_temperature", "5"),
    ("quadratic smoothing", ("smoothing_factor", "smoothing_curve"), "quadratic_sampling",
     "5 (after temperature)"),
    ("top-nσ", ("top_n_sigma",), "top_n_sigma", "5 (after temperature)"),
    ("top-k", ("top_k",), "top_k", "0"),
    ("top-p", ("top_p",), "top_p", "2"),
    ("typical-p", ("typical",), "typical_p", "4"),
    ("tail-free", ("tfs",), "tfs", "3"),
    ("top-a", ("top_a",), "top_a", "1"),
    ("min-p", ("min_p",), "min_p", "2 (after top-p)"),
    ("min_keep", ("min_keep",), "(every truncation)", "(every truncation)"),
    ("mirostat v1/v2", ("mirostat", "mirostat_tau", "mirostat_eta"), "mirostat",
     "(replaces the order)"),
    ("XTC", ("xtc_threshold", "xtc_probability"), "xtc", "(after the order)"),
    ("ban EOS", ("ban_eos_token",), "(first)", "(first)"),
    ("banned strings (backtracking)", ("banned_strings",), "(engine)", "(engine)"),
    ("grammar / JSON schema", ("grammar",), "(first; llama.cpp only)",
     "(first; llama.cpp only)"),
    ("soft landing (limamono's own)", ("soft_landing",), "(after the bans)",
     "(after the bans)"),
    ("seed", ("seed",), "-", "-"),
    ("order", ("sampler_priority", "sampler_order"), "sampler_priority", "sampler_order"),
)


def wire_names(field: str, dialect: str) -> tuple[str, ...]:
    """The wire names a dialect reads for a settings field, its preferred one first."""
    if field == "grammar":  # every dialect reads every constraint field (grammar_from_fields)
        return tuple(n for n in CONSTRAINT_FIELDS if n not in REFUSED_CONSTRAINTS)
    return _ALIASES.get(dialect, TEXTGEN_ALIASES).get(field, ())


_ALIASES = {"textgen": TEXTGEN_ALIASES, "koboldcpp": KOBOLDCPP_ALIASES,
            "llamacpp": LLAMACPP_ALIASES}
