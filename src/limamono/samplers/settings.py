"""Sampler settings: the one typed, validated config for every sampler, and the named presets.

Field names are the wire names SillyTavern sends (``tfs``, ``rep_pen_range``, ``min_p``...),
so a request body maps onto this class with few aliases (see ``limamono.samplers.wire``).
This module needs no torch, so the CLI and the server schemas can import it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["textgen", "koboldcpp"]
DIALECTS: tuple[str, ...] = ("textgen", "koboldcpp")

#: KoboldCpp sampler ids (``expose.h``). Id 2 runs top-p and then min-p.
KOBOLDCPP_SAMPLERS: dict[int, str] = {
    0: "top_k", 1: "top_a", 2: "top_p", 3: "tfs", 4: "typical", 5: "temperature", 6: "rep_pen",
}
#: KoboldCpp's and SillyTavern's default order: rep-pen first, temperature last.
KOBOLDCPP_DEFAULT_ORDER: tuple[int, ...] = (6, 0, 1, 3, 4, 2, 5)

#: text-generation-webui's default ``sampler_priority``: the API's default is the neutral
#: preset's (``modules/presets.py``, top-nσ before temperature; ``sampler_hijack.py``'s own
#: fallback lists it after quadratic sampling). Every name here is accepted on the wire, the
#: ones in ``TEXTGEN_IMPLEMENTED`` are run.
TEXTGEN_DEFAULT_PRIORITY: tuple[str, ...] = (
    "repetition_penalty", "presence_penalty", "frequency_penalty", "dry", "top_n_sigma",
    "temperature", "dynamic_temperature", "quadratic_sampling", "top_k", "top_p", "typical_p",
    "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "adaptive_p", "mirostat", "xtc",
    "encoder_repetition_penalty", "no_repeat_ngram",
)
#: The text-generation-webui names this package implements. The three classic penalties
#: always run first in the textgen dialect; every other implemented name runs in order.
TEXTGEN_IMPLEMENTED: frozenset[str] = frozenset(
    {"temperature", "top_k", "top_p", "typical_p", "tfs", "top_a", "min_p", "dry",
     "dynamic_temperature", "quadratic_sampling", "top_n_sigma", "mirostat", "xtc"})
#: The names text-generation-webui accepts that this package does not run, with the reason
#: (shown by ``limamono samplers`` and docs/SILLYTAVERN.md).
TEXTGEN_NOT_IMPLEMENTED: dict[str, str] = {
    "epsilon_cutoff": "not implemented (SillyTavern sends it off by default)",
    "eta_cutoff": "not implemented (SillyTavern sends it off by default)",
    "adaptive_p": "not implemented (new in text-generation-webui 2026; not sent by "
                  "SillyTavern 1.12)",
    "encoder_repetition_penalty": "encoder-decoder models only; limamono serves causal LMs",
    "no_repeat_ngram": "not implemented (a hard n-gram ban; DRY is its soft replacement)",
}
#: Names that ``temperature_last`` moves to the end (text-generation-webui does the same).
TEXTGEN_TEMPERATURE_NAMES: tuple[str, ...] = (
    "temperature", "dynamic_temperature", "quadratic_sampling")
#: Our textgen order when ``sampler_priority`` is None: the default with temperature last,
#: as the published Limamono preset sets ``temperature_last: true``.
TEXTGEN_TEMPERATURE_LAST: tuple[str, ...] = (
    *(n for n in TEXTGEN_DEFAULT_PRIORITY if n not in TEXTGEN_TEMPERATURE_NAMES),
    *TEXTGEN_TEMPERATURE_NAMES,
)

#: Smallest non-zero temperature: below it the scaled logits can overflow float32 (and the
#: draw is greedy anyway); 0 itself means greedy.
MIN_TEMPERATURE = 1e-3
#: Repetition-penalty bounds: beyond them a penalised logit can overflow float32.
REP_PEN_RANGE = (0.01, 100.0)

#: Largest seed a ``torch.Generator`` accepts.
MAX_SEED = 2**64 - 1

#: text-generation-webui's and KoboldCpp's default DRY sequence breakers.
DRY_DEFAULT_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")
#: Largest absolute logit bias (KoboldCpp clamps to +-100; OpenAI allows the same range).
MAX_LOGIT_BIAS = 100.0
#: Most banned strings in one request, and the longest one (characters).
MAX_BANNED_STRINGS, MAX_BANNED_CHARS = 256, 200
#: Most DRY breakers in one request, and the longest one (KoboldCpp takes 24 and cuts each
#: to 40 characters; text-generation-webui has no bound).
MAX_BREAKERS, MAX_BREAKER_CHARS = 64, 200
#: Most alternatives reported per token (OpenAI's ``top_logprobs`` limit).
MAX_LOGPROBS = 20


#: Longest grammar accepted (characters): llama.cpp parses it on every request and stream.
MAX_GRAMMAR_CHARS = 64 * 1024
#: Deepest nesting of groups in a grammar: llama.cpp's parser recurses once per level and
#: overflows a thread's stack near 30 000 (measured: a segmentation fault, not an error).
MAX_GRAMMAR_DEPTH = 256


@dataclass(frozen=True)
class Grammar:
    """A constraint on the reply: a GBNF grammar (llama.cpp's format, start rule ``root``).

    Attributes:
        gbnf: The grammar text (a JSON schema or a choice list already converted).
        field: The wire field it came from, named in every error about it.
    """

    gbnf: str
    field: str = "grammar"


class SamplerError(ValueError):
    """A sampler setting is invalid; ``field`` is its wire name, ``value`` what was given."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value
        #: The message without the ``field=value:`` prefix (to re-raise under an alias).
        self.reason = reason


def check_float(field: str, value: Any, low: float, high: float = math.inf) -> float:
    """Return ``value`` as a float after checking type, finiteness and range.

    Args:
        field: The wire name, for the error.
        value: What was given.
        low: Smallest allowed value.
        high: Largest allowed value (inclusive; ``inf`` for none).

    Raises:
        SamplerError: Not a real number, NaN/inf, or out of range (the message says the range).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SamplerError(field, value, f"must be a number, got {type(value).__name__}")
    number = float(value)
    allowed = f"[{low:g}, {high:g}{')' if math.isinf(high) else ']'}"
    if not math.isfinite(number):
        raise SamplerError(field, value, f"must be a finite number in {allowed}")
    if number < low or number > high:
        raise SamplerError(field, value, f"out of range; allowed {allowed}")
    return number


def check_int(field: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int after checking type and range.

    Whole floats (``2048.0``, as JSON numbers from some clients) are accepted.

    Raises:
        SamplerError: Not a whole number, or out of range (the message says the range).
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplerError(field, value, f"must be a whole number, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f", at most {high}"
        raise SamplerError(field, value, f"out of range; allowed at least {low}{upper}")
    return value


def check_sampler_order(value: Any) -> tuple[int, ...]:
    """Validate a KoboldCpp ``sampler_order``: distinct known ids (a subset is allowed).

    Raises:
        SamplerError: Not a list of ints, empty, an unknown id, or a repeated id.
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise SamplerError("sampler_order", value, "must be a list of sampler ids 0-6")
    if not value:
        raise SamplerError("sampler_order", value, "must not be empty; KoboldCpp's default is "
                           f"{list(KOBOLDCPP_DEFAULT_ORDER)}")
    ids = tuple(check_int("sampler_order", item, 0, 6) for item in value)
    if len(set(ids)) != len(ids):
        raise SamplerError("sampler_order", value, "lists a sampler id twice")
    return ids


def check_sampler_priority(value: Any) -> tuple[str, ...] | None:
    """Validate a text-generation-webui ``sampler_priority``: distinct known names, or None.

    A string is split on commas and newlines, as text-generation-webui does.

    Raises:
        SamplerError: Not a list of names, an unknown name, or a repeated name.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
        raise SamplerError("sampler_priority", value, "must be a list of sampler names")
    names = tuple(value)
    unknown = [n for n in names if n not in TEXTGEN_DEFAULT_PRIORITY]
    if unknown:
        raise SamplerError("sampler_priority", value, f"unknown name(s) {unknown}; known: "
                           f"{', '.join(TEXTGEN_DEFAULT_PRIORITY)}")
    if len(set(names)) != len(names):
        raise SamplerError("sampler_priority", value, "lists a sampler name twice")
    return names


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampler setting, under the wire names SillyTavern sends.

    Each default turns its sampler off, except temperature (1.0, which is a no-op anyway).

    Attributes:
        temperature: Divides the logits; 0 means greedy. 0, or at least 0.001.
        top_k: Keep the k most likely tokens; 0 is off.
        top_p: Keep the smallest set with probability mass >= top_p; 1 is off. Range [0, 1].
        min_p: Keep tokens with p >= min_p * p_max; 0 is off. Range [0, 1].
        typical: Typical-p (locally typical sampling) mass; 1 is off. Range [0, 1].
        top_a: Keep tokens with p >= top_a * p_max**2; 0 is off. Range [0, 1].
        tfs: Tail-free sampling z; 1 is off. Range [0, 1].
        rep_pen: Repetition penalty: a positive logit of a token in the window is divided by
            it, a negative one multiplied; 1 is off. Range [0.01, 100].
        rep_pen_range: Window of the last N context tokens (prompt + output). textgen: 0 is
            the whole context; koboldcpp: 0 counts as 1, as KoboldCpp clamps it.
        rep_pen_slope: KoboldCpp only: the older half of the window gets the penalty
            ``1 + (rep_pen - 1) * slope``; values outside (0, 1] mean 1 (flat), as in KoboldCpp.
        presence_penalty: Subtracted once from each token in the window. Range [-2, 2].
        frequency_penalty: Subtracted per occurrence in the window. Range [-2, 2].
        seed: Seed of the random generator; None is random (the wire's -1).
        dialect: Whose semantics to follow: TFS variant, rep-pen range/slope rules, order.
        sampler_order: KoboldCpp sampler ids, used in the koboldcpp dialect.
        sampler_priority: text-generation-webui names, used in the textgen dialect; None is
            the default order with temperature last.
        dry_multiplier: DRY ("don't repeat yourself"): a token that would extend a repeat of
            length L >= ``dry_allowed_length`` loses ``multiplier * base**(L - allowed)``
            from its logit; 0 is off.
        dry_base: DRY's growth per extra repeated token. Range [0, 100].
        dry_allowed_length: Repeats up to this length go unpenalised. At least 1.
        dry_penalty_last_n: KoboldCpp: DRY's window (0 is the whole context). The textgen
            dialect uses ``rep_pen_range`` instead, as text-generation-webui does.
        dry_sequence_breakers: Strings that end a repeat (as text; tokenised per model).
        xtc_threshold: XTC: tokens at or above this probability are "top choices".
        xtc_probability: XTC: the chance, per token, to remove every top choice but the
            least likely one; 0 is off.
        top_n_sigma: Keep tokens whose logit is within n standard deviations of the top
            one; 0 is off (KoboldCpp's ``nsigma``).
        min_keep: Truncation samplers never leave fewer than this many tokens (0 or 1: one).
        smoothing_factor: Quadratic sampling: ``l' = max - k*f*d**2 + s*f*d**3`` with
            ``d = l - max``; 0 is off.
        smoothing_curve: The cubic part of quadratic sampling (1 is a pure quadratic).
        dynamic_temperature: textgen: scale by a temperature between ``dynatemp_low`` and
            ``dynatemp_high`` chosen by the normalised entropy.
        dynatemp_low: textgen dynamic temperature, lower end.
        dynatemp_high: textgen dynamic temperature, upper end.
        dynatemp_range: KoboldCpp: dynamic temperature in ``temperature +- range``; 0 is off.
        dynatemp_exponent: Dynamic temperature: the exponent on the normalised entropy.
        mirostat: 0 off, 1 (Mirostat v1) or 2 (v2); replaces the truncation samplers with a
            feedback loop aiming at surprise ``mirostat_tau``.
        mirostat_tau: Target surprise in bits.
        mirostat_eta: Learning rate of the feedback loop.
        logit_bias: (token id, bias) pairs added to the logits first. Bias in [-100, 100].
        custom_token_bans: Token ids that are never sampled.
        ban_eos_token: Never sample an end-of-sequence token (the reply runs to its length
            or a stop string); needs the model's vocabulary to know its EOS ids.
        banned_strings: Phrases that never appear in the output (case-insensitive): the
            engine rewinds and resamples when one is generated (KoboldCpp/TabbyAPI's
            ``banned_strings``).
        logprobs: Report each generated token's log-probability and the ``logprobs`` most
            likely alternatives (at most 20); None: do not.
        grammar: The reply must match this GBNF grammar (``limamono.samplers.wire`` maps
            ``grammar``, ``grammar_string``, ``json_schema`` and the ``guided_*`` fields to
            it); None: free text. Only the llama.cpp engine runs it, as a mask before the
            chain; it cannot be combined with ``soft_landing`` or ``ban_eos_token``.
        soft_landing: As a reply nears its token budget, favour ending at a sentence end
            with its dialogue or thought closed, and force the closing characters in the
            last tokens (``limamono.engine.landing``); no effect before that window. On in
            the ``limamono`` presets.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical: float = 1.0
    top_a: float = 0.0
    tfs: float = 1.0
    rep_pen: float = 1.0
    rep_pen_range: int = 0
    rep_pen_slope: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    dialect: Dialect = "textgen"
    sampler_order: tuple[int, ...] = KOBOLDCPP_DEFAULT_ORDER
    sampler_priority: tuple[str, ...] | None = None
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 0
    dry_sequence_breakers: tuple[str, ...] = DRY_DEFAULT_BREAKERS
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0
    top_n_sigma: float = 0.0
    min_keep: int = 0
    smoothing_factor: float = 0.0
    smoothing_curve: float = 1.0
    dynamic_temperature: bool = False
    dynatemp_low: float = 1.0
    dynatemp_high: float = 1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: tuple[tuple[int, float], ...] = ()
    custom_token_bans: tuple[int, ...] = ()
    ban_eos_token: bool = False
    banned_strings: tuple[str, ...] = ()
    logprobs: int | None = None
    soft_landing: bool = False
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        """Validate every field and normalise numbers and sequences to their declared types."""
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> SamplerSettings:
        """A copy with ``changes`` applied and validated.

        Raises:
            SamplerError: A changed value is invalid, or a name is not a field.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in fields:
                raise SamplerError(name, changes[name], f"not a sampler setting; known: "
                                   f"{', '.join(sorted(fields))}")
        return dataclasses.replace(self, **changes)

    @property
    def greedy(self) -> bool:
        """Whether sampling picks the most likely token (temperature 0 or top-k 1)."""
        return self.temperature == 0 or self.top_k == 1


def _validated(s: SamplerSettings) -> dict[str, Any]:
    """The checked, type-normalised value of every field (raises SamplerError)."""
    if s.dialect not in DIALECTS:
        raise SamplerError("dialect", s.dialect, f"must be one of {', '.join(DIALECTS)}")
    seed = None if s.seed is None else check_int("seed", s.seed, 0, MAX_SEED)
    temperature = check_float("temperature", s.temperature, 0.0)
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise SamplerError("temperature", s.temperature, f"must be 0 (greedy) or at least "
                           f"{MIN_TEMPERATURE:g}; smaller values overflow the scaled logits")
    return {
        "temperature": temperature,
        "top_k": check_int("top_k", s.top_k, 0),
        "top_p": check_float("top_p", s.top_p, 0.0, 1.0),
        "min_p": check_float("min_p", s.min_p, 0.0, 1.0),
        "typical": check_float("typical", s.typical, 0.0, 1.0),
        "top_a": check_float("top_a", s.top_a, 0.0, 1.0),
        "tfs": check_float("tfs", s.tfs, 0.0, 1.0),
        "rep_pen": check_float("rep_pen", s.rep_pen, *REP_PEN_RANGE),
        "rep_pen_range": check_int("rep_pen_range", s.rep_pen_range, 0),
        "rep_pen_slope": check_float("rep_pen_slope", s.rep_pen_slope, 0.0),
        "presence_penalty": check_float("presence_penalty", s.presence_penalty, -2.0, 2.0),
        "frequency_penalty": check_float("frequency_penalty", s.frequency_penalty, -2.0, 2.0),
        "seed": seed,
        "sampler_order": check_sampler_order(s.sampler_order),
        "sampler_priority": check_sampler_priority(s.sampler_priority),
        **_validated_extras(s),
    }


def _validated_extras(s: SamplerSettings) -> dict[str, Any]:
    """The checked values of the roleplay samplers (DRY, XTC, mirostat, biases, bans...)."""
    for flag in ("dynamic_temperature", "ban_eos_token", "soft_landing"):
        if not isinstance(getattr(s, flag), bool):
            raise SamplerError(flag, getattr(s, flag), "must be true or false")
    return {
        "dry_multiplier": check_float("dry_multiplier", s.dry_multiplier, 0.0, 100.0),
        "dry_base": check_float("dry_base", s.dry_base, 0.0, 100.0),
        "dry_allowed_length": check_int("dry_allowed_length", s.dry_allowed_length, 1),
        "dry_penalty_last_n": check_int("dry_penalty_last_n", s.dry_penalty_last_n, 0),
        "dry_sequence_breakers": check_breakers(s.dry_sequence_breakers),
        "xtc_threshold": check_float("xtc_threshold", s.xtc_threshold, 0.0, 1.0),
        "xtc_probability": check_float("xtc_probability", s.xtc_probability, 0.0, 1.0),
        "top_n_sigma": check_float("top_n_sigma", s.top_n_sigma, 0.0),
        "min_keep": check_int("min_keep", s.min_keep, 0),
        "smoothing_factor": check_float("smoothing_factor", s.smoothing_factor, 0.0),
        "smoothing_curve": check_float("smoothing_curve", s.smoothing_curve, 0.0, 10.0),
        "dynatemp_low": check_float("dynatemp_low", s.dynatemp_low, 0.0),
        "dynatemp_high": check_float("dynatemp_high", s.dynatemp_high, 0.0),
        "dynatemp_range": check_float("dynatemp_range", s.dynatemp_range, 0.0),
        "dynatemp_exponent": check_float("dynatemp_exponent", s.dynatemp_exponent, 0.0),
        "mirostat": check_int("mirostat", s.mirostat, 0, 2),
        "mirostat_tau": check_float("mirostat_tau", s.mirostat_tau, 0.0),
        "mirostat_eta": check_float("mirostat_eta", s.mirostat_eta, 0.0),
        "logit_bias": check_logit_bias(s.logit_bias),
        "custom_token_bans": check_token_ids("custom_token_bans", s.custom_token_bans),
        "banned_strings": check_banned_strings(s.banned_strings),
        "logprobs": None if s.logprobs is None else check_int("logprobs", s.logprobs, 0,
                                                              MAX_LOGPROBS),
        "grammar": check_grammar(s),
    }


def check_grammar(s: SamplerSettings) -> Grammar | None:
    """The settings' grammar, checked for size and nesting (llama.cpp parses it later) and
    against the settings it cannot be combined with.

    Raises:
        SamplerError: Not a :class:`Grammar`, empty, too long or too deeply nested; or
            ``soft_landing`` (its forced closing characters would break the grammar) or
            ``ban_eos_token`` (the reply must end when the grammar is complete) is on.
    """
    grammar = s.grammar
    if grammar is None:
        return None
    if not isinstance(grammar, Grammar) or not isinstance(grammar.gbnf, str):
        raise SamplerError("grammar", grammar, "must be a GBNF grammar")
    field, text = grammar.field, grammar.gbnf
    if not text.strip():
        raise SamplerError(field, text, "is empty; leave the field out for free text")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise SamplerError(field, f"<{len(text)} characters>", f"at most {MAX_GRAMMAR_CHARS} "
                           "characters of grammar are allowed")
    if "\0" in text or (not text.isascii() and not _utf8(text)):
        raise SamplerError(field, "...", "holds a NUL or a lone surrogate (not UTF-8 text)")
    depth = grammar_depth(text)
    if depth > MAX_GRAMMAR_DEPTH:
        raise SamplerError(field, f"<{len(text)} characters>", f"groups nested {depth} deep; "
                           f"at most {MAX_GRAMMAR_DEPTH} levels are allowed")
    for flag in ("soft_landing", "ban_eos_token"):
        if getattr(s, flag):
            why = ("its forced closing characters would break the grammar"
                   if flag == "soft_landing" else "the reply ends when the grammar is complete")
            raise SamplerError(flag, True, f"cannot be combined with a grammar ({field}): "
                               f"{why}; fix: send {flag}: false or leave {field} empty")
    return grammar


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def grammar_depth(text: str) -> int:
    """The deepest nesting of ``(`` groups in GBNF ``text``, outside quoted literals,
    character classes and comments (a bound check, not a parser; linear time)."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def check_strings(field: str, value: Any, json_string: bool = False) -> tuple[str, ...]:
    """A list of strings; with ``json_string``, also a JSON array in a string, or a
    comma-separated list of JSON strings (text-generation-webui's ``dry_sequence_breakers``).

    Raises:
        SamplerError: Not a list of strings (or unparsable JSON).
    """
    if json_string and isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text if text.startswith("[") else f"[{text}]")
        except ValueError as error:
            raise SamplerError(field, value, f"must be a list of strings or a JSON array of "
                               f"strings ({error.args[0]})") from None
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) \
            or not all(isinstance(item, str) for item in value):
        raise SamplerError(field, value, "must be a list of strings")
    return tuple(value)


def _bounded(field: str, items: tuple[str, ...], most: int, chars: int,
             what: str) -> tuple[str, ...]:
    """``items`` unchanged, or a SamplerError naming ``field`` when there are more than
    ``most`` of them or one is longer than ``chars`` characters."""
    if len(items) > most:
        raise SamplerError(field, f"<{len(items)} strings>", f"at most {most} {what} are allowed")
    for i, item in enumerate(items):
        if len(item) > chars:
            raise SamplerError(f"{field}[{i}]", item[:40] + "...",
                               f"longer than {chars} characters")
    return items


def check_breakers(value: Any) -> tuple[str, ...]:
    """DRY sequence breakers: at most ``MAX_BREAKERS`` strings of ``MAX_BREAKER_CHARS``
    characters (each one costs a scan of the vocabulary in the KoboldCpp dialect)."""
    breakers = check_strings("dry_sequence_breakers", value, json_string=True)
    return _bounded("dry_sequence_breakers", breakers, MAX_BREAKERS, MAX_BREAKER_CHARS,
                    "breakers")


def check_banned_strings(value: Any) -> tuple[str, ...]:
    """Banned phrases: non-empty strings, at most ``MAX_BANNED_STRINGS`` of
    ``MAX_BANNED_CHARS`` characters; empty entries are dropped, as KoboldCpp does."""
    phrases = tuple(p for p in check_strings("banned_strings", value) if p.strip())
    return _bounded("banned_strings", phrases, MAX_BANNED_STRINGS, MAX_BANNED_CHARS, "phrases")


def check_token_ids(field: str, value: Any) -> tuple[int, ...]:
    """Token ids: a list of whole numbers >= 0, or a string ``"id,id"`` (textgen's form)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise SamplerError(field, value, "must be comma-separated token ids")
        value = [int(p) for p in parts]
    if not isinstance(value, list | tuple):
        raise SamplerError(field, value, "must be a list of token ids")
    return tuple(sorted({check_int(field, item, 0) for item in value}))


def check_logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """Logit biases in OpenAI's shape ``{"id": bias}`` (string or integer keys) or as a
    list of ``[id, bias]`` pairs or ``{"key"/"token_id": id, "value"/"bias": bias}`` objects.

    Raises:
        SamplerError: A key that is not a token id, or a bias outside [-100, 100].
    """
    if value is None:
        return ()
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        pairs = [_bias_pair(item) for item in value]
    else:
        raise SamplerError("logit_bias", value, 'must be an object {"token id": bias}')
    out: dict[int, float] = {}
    for key, bias in pairs:
        field = f"logit_bias[{key!r}]"
        if isinstance(key, str) and key.strip().isdigit():
            key = int(key.strip())
        token = check_int(field, key, 0)
        out[token] = check_float(field, bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
    return tuple(sorted(out.items()))


def _bias_pair(item: Any) -> tuple[Any, Any]:
    if isinstance(item, list | tuple) and len(item) == 2:
        return item[0], item[1]
    if isinstance(item, dict):
        key = item.get("key", item.get("token_id", item.get("id")))
        bias = item.get("value", item.get("bias"))
        if key is not None and bias is not None:
            return key, bias
    raise SamplerError("logit_bias", item, "each entry must be [token id, bias]")


_CARD = SamplerSettings(temperature=1.0, tfs=0.85, rep_pen=1.11, rep_pen_range=2048,
                        top_p=1.0, top_k=0, soft_landing=True)

#: Named presets (the registry). ``limamono`` is the card's settings (SPEC §5) with the
#: soft landing on (not a sampler of the card's; ``soft_landing=False`` turns it off);
#: ``limamono-dry`` is NOT the card's: the card's settings plus DRY at the values SillyTavern
#: users commonly start from (multiplier 0.8, base 1.75, allowed length 2, the default
#: breakers, the whole context), for users who want less repetition than the card gives.
PRESETS: dict[str, SamplerSettings] = {
    "limamono": _CARD,
    "limamono-dry": _CARD.replace(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2,
                                  dry_penalty_last_n=0),
    "greedy": SamplerSettings(temperature=0.0),
}


def get_preset(name: str) -> SamplerSettings:
    """The preset called ``name``.

    Raises:
        SamplerError: Unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise SamplerError("preset", name, f"unknown preset; known: {', '.join(PRESETS)}") \
            from None
