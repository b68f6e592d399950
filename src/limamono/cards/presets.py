"""SillyTavern presets generated from the format's constants and the sampler presets.

SillyTavern builds a prompt from an instruct template (turn prefixes and suffixes), a
context template (the Handlebars "story string" holding the trigger and the sheet) and a
text-completion preset (samplers). The values here are derived from ``limamono.core.format``, so
the prompt SillyTavern sends equals ``format.render(..., open_response=True)`` apart from the
history-turn length modifiers SillyTavern cannot know. Facts about SillyTavern (field names,
the Handlebars newline trap, why ``wrap`` must be off) come from the presets verified in a
real SillyTavern 1.12.6 (``shared/testdata/sillytavern/limamono-presets/README.md``).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from limamono.cards.sheet import PERSONALITY_PREFIX
from limamono.core import format as fmt
from limamono.core import policy
from limamono.util import atomic

PRESET_NAME = "Limamono"

#: SillyTavern's text-completion settings with their neutral ("off") values. The Limamono
#: sampler values are laid over these; the key set is SillyTavern's `setting_names`.
_NEUTRAL_TEXTGEN: dict[str, Any] = {
    "temp": 1.0, "temperature_last": True, "top_p": 1, "top_k": 0, "top_a": 0, "tfs": 1,
    "epsilon_cutoff": 0, "eta_cutoff": 0, "typical_p": 1, "min_p": 0, "rep_pen": 1,
    "rep_pen_range": 0, "rep_pen_decay": 0, "rep_pen_slope": 1, "no_repeat_ngram_size": 0,
    "penalty_alpha": 0, "num_beams": 1, "length_penalty": 1, "min_length": 0,
    "encoder_rep_pen": 1, "freq_pen": 0, "presence_pen": 0, "skew": 0, "do_sample": True,
    "early_stopping": False, "dynatemp": False, "min_temp": 0, "max_temp": 2,
    "dynatemp_exponent": 1, "smoothing_factor": 0, "smoothing_curve": 1,
    "dry_allowed_length": 2, "dry_multiplier": 0, "dry_base": 1.75,
    "dry_sequence_breakers": json.dumps(["\n", ":", '"', "*"]), "dry_penalty_last_n": 0,
    "xtc_threshold": 0.1, "xtc_probability": 0, "add_bos_token": True,
    "ban_eos_token": False, "skip_special_tokens": True, "mirostat_mode": 0,
    "mirostat_tau": 5, "mirostat_eta": 0.1, "guidance_scale": 1, "negative_prompt": "",
    "grammar_string": "", "json_schema": {}, "banned_tokens": "",
    # text-generation-webui priority, with temperature moved last (temperature_last).
    "sampler_priority": ["temperature", "dynamic_temperature", "quadratic_sampling", "top_k",
                         "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a",
                         "min_p", "mirostat"],
    "samplers": ["top_k", "tfs_z", "typical_p", "top_p", "min_p", "temperature"],
    "sampler_order": [6, 0, 1, 3, 4, 2, 5], "ignore_eos_token": False,
    "spaces_between_special_tokens": True, "speculative_ngram": False, "logit_bias": [],
    "seed": -1,
}


def instruct_preset() -> dict[str, Any]:
    """The instruct template: turn headers and separators from ``limamono.core.format``.

    The labels are the ``sillytavern`` prompt policy's (``limamono.core.policy``): history
    character turns get the plain header and only the open turn the response length
    (SillyTavern has one ``last_output_sequence``); user turns always ``tiny``.
    ``wrap`` is off: it is the only way SillyTavern sends a bare ``###`` stop string, and the
    sequences carry their own newlines instead.
    """
    return {
        "name": PRESET_NAME,
        "input_sequence": fmt.header("user", policy.SILLYTAVERN_INPUT_LENGTH) + "\n",
        "input_suffix": fmt.BLOCK_SEP,
        "first_input_sequence": "",
        "last_input_sequence": "",
        "output_sequence": fmt.header("char", policy.SILLYTAVERN_HISTORY_RESPONSE_LENGTH) + "\n",
        "output_suffix": fmt.BLOCK_SEP,
        "first_output_sequence": "",
        "last_output_sequence": fmt.header("char", policy.SILLYTAVERN_OPEN_RESPONSE_LENGTH)
        + "\n",
        "system_sequence": fmt.INSTRUCTION + "\n",
        "system_suffix": fmt.BLOCK_SEP,
        "last_system_sequence": "",
        "system_sequence_prefix": "",
        "system_sequence_suffix": "",
        "system_same_as_user": False,
        "stop_sequence": fmt.HEADER_STOP,
        "user_alignment_message": "",
        "wrap": False,
        "macro": True,
        "names_behavior": "always",
        "activation_regex": "",
        "skip_examples": False,
    }


def story_string(trigger: str = fmt.DEFAULT_TRIGGER) -> str:
    """The context template's Handlebars story string: trigger, Instruction block, sheet.

    The sheet is laid out as the chat route builds it from SillyTavern's Chat Completion
    messages (``limamono.server.stchat``) and as ``cards.sheet`` converts a card: the name,
    a ``Personality:`` line, then World Info (before), the persona, the description, World
    Info (after), in SillyTavern's prompt-manager order, and the ``Scenario:`` line last.
    Every field SillyTavern 1.12.6 checks is present (``validateStoryString`` in
    ``public/scripts/power-user.js`` warns about a missing ``{{personality}}``,
    ``{{persona}}``, ``{{wiBefore}}``, ``{{wiAfter}}``).

    Each optional part begins with its own newline *inside* the ``{{#if}}``: SillyTavern's
    Handlebars drops a newline that follows a ``{{/if}}`` standing alone on its line, which
    would lose the blank line before the first ``### Response:``.
    """
    phrase = fmt.TRIGGERS.get(trigger, trigger)
    parts = "".join(f"{{{{#if {key}}}}}\n{prefix}{{{{{key}}}}}{{{{/if}}}}" for key, prefix in (
        ("personality", PERSONALITY_PREFIX), ("wiBefore", ""), ("persona", ""),
        ("description", ""), ("wiAfter", ""), ("scenario", fmt.SCENARIO_PREFIX)))
    return f"{phrase}{fmt.BLOCK_SEP}{fmt.INSTRUCTION}\n{{{{char}}}}{parts}{fmt.BLOCK_SEP}"


def context_preset(trigger: str = fmt.DEFAULT_TRIGGER) -> dict[str, Any]:
    """The context template (story string and the switches that keep the prompt exact)."""
    return {
        "name": PRESET_NAME,
        "story_string": story_string(trigger),
        "example_separator": "",
        "chat_start": "",
        "use_stop_strings": False,
        "names_as_stop_strings": True,
        "allow_jailbreak": False,
        "always_force_name2": True,
        "trim_sentences": False,
        "single_line": False,
    }


def textgen_preset(preset: str = "limamono") -> dict[str, Any]:
    """The text-completion preset: SillyTavern's settings with the sampler preset's values."""
    from limamono.samplers import get_preset

    s = get_preset(preset)
    values = dict(_NEUTRAL_TEXTGEN)
    values.update({
        "temp": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "top_a": s.top_a,
        "tfs": s.tfs, "typical_p": s.typical, "min_p": s.min_p, "rep_pen": s.rep_pen,
        "rep_pen_range": s.rep_pen_range, "rep_pen_slope": s.rep_pen_slope,
        "freq_pen": s.frequency_penalty, "presence_pen": s.presence_penalty,
        "sampler_order": list(s.sampler_order),
        "seed": -1 if s.seed is None else s.seed,
        "dry_multiplier": s.dry_multiplier, "dry_base": s.dry_base,
        "dry_allowed_length": s.dry_allowed_length,
        "dry_penalty_last_n": s.dry_penalty_last_n,
        "dry_sequence_breakers": json.dumps(list(s.dry_sequence_breakers)),
        "xtc_threshold": s.xtc_threshold, "xtc_probability": s.xtc_probability,
        "smoothing_factor": s.smoothing_factor, "smoothing_curve": s.smoothing_curve,
        "mirostat_mode": s.mirostat, "mirostat_tau": s.mirostat_tau,
        "mirostat_eta": s.mirostat_eta,
    })
    return {"name": PRESET_NAME, **values}


def master_preset(trigger: str = fmt.DEFAULT_TRIGGER, preset: str = "limamono") -> dict[str, Any]:
    """The one-file "master import" holding all three presets."""
    return {"instruct": instruct_preset(), "context": context_preset(trigger),
            "preset": textgen_preset(preset)}


def export(directory: str | Path, trigger: str = fmt.DEFAULT_TRIGGER,
           preset: str = "limamono") -> list[Path]:
    """Write the SillyTavern presets and the HF chat template into ``directory``.

    Returns the written paths. Every file's text is made first, so a bad ``trigger`` or
    ``preset`` fails before anything (the folder included) is created; each file is then
    written atomically (temp file + rename).

    Raises:
        ValueError: an unknown trigger or preset.
        OSError: the folder cannot be created or written.
    """
    out = Path(directory)
    texts = {name: json.dumps(data, indent=4) + "\n" for name, data in {
        f"{PRESET_NAME}.instruct.json": instruct_preset(),
        f"{PRESET_NAME}.context.json": context_preset(trigger),
        f"{PRESET_NAME}.textgen.json": textgen_preset(preset),
        f"{PRESET_NAME}.master.json": master_preset(trigger, preset),
    }.items()}
    texts["chat_template.jinja"] = fmt.chat_template(trigger)
    if "\0" in str(out):
        raise OSError(errno.EINVAL, "the path holds a NUL byte")
    out.mkdir(parents=True, exist_ok=True)
    return [atomic.write_text(out / name, text) for name, text in texts.items()]
