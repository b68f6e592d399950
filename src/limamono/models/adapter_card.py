"""The adapter's card: ``limamono.json``, written by training, read when an adapter is loaded.

Training records the trigger, the stop strings, the length bounds and the sampler preset an
adapter was trained with (``limamono.train.run.adapter_metadata``). Loading the adapter
makes them the defaults of chat, serve and eval (:func:`resolve`): an option the user gave
explicitly still wins, with a note saying so; an adapter without a card keeps the project's
defaults. A card from a newer version is read as far as it is understood, with a note.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.core.policy import DEFAULT_POLICY, POLICIES, PromptPolicy

__all__ = ["AdapterCard", "AdapterCardError", "Defaults", "PromptPolicy", "defaults", "read_card",
           "resolve"]

CARD_FILE = "limamono.json"
DEFAULT_PRESET = "limamono"


class AdapterCardError(ValueError):
    """A ``limamono.json`` that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class AdapterCard:
    """What an adapter says about how to prompt and sample it.

    Attributes:
        path: the ``limamono.json`` file.
        trigger: ``card``, ``preset`` or the literal trigger phrase.
        stop_strings: stop strings besides the user's line.
        length_bounds: the word bounds of the length labels it was trained with.
        policy: the prompt policy its training data followed (``training``).
        preset: the sampler preset's name.
        sampler_values: the preset's values as saved (None: use the name).
        notes: what was not understood (a newer card), to show the user.
    """

    path: Path
    trigger: str = fmt.DEFAULT_TRIGGER
    stop_strings: tuple[str, ...] = (fmt.HEADER_STOP,)
    length_bounds: tuple[int, ...] = fmt.DEFAULT_LENGTH_BOUNDS
    policy: str = DEFAULT_POLICY
    preset: str = DEFAULT_PRESET
    sampler_values: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())

    def prompt_policy(self, name: str | None = None, trigger: str | None = None) -> PromptPolicy:
        """The card's prompt policy (``name``/``trigger`` given: those instead)."""
        return PromptPolicy(name or self.policy, trigger or self.trigger, self.length_bounds,
                            self.stop_strings)

    def sampler_settings(self) -> Any:
        """The card's sampler settings: the saved values, else the named preset.

        A setting newer than the card (``soft_landing`` on cards written before it) takes
        the named preset's value, so ``limamono`` cards get what the preset has today.
        """
        from limamono.samplers import SamplerError, SamplerSettings, get_preset

        try:
            preset = get_preset(self.preset)
        except SamplerError:
            preset = None
        if self.sampler_values is not None:
            newer = {k: v for k, v in dataclasses.asdict(preset).items()
                     if k not in self.sampler_values} if preset is not None else {}
            try:
                return SamplerSettings(**{**newer, **self.sampler_values})
            except (TypeError, ValueError):
                pass  # values from another version: the preset by name
        return get_preset(self.preset)


def read_card(adapter_dir: str | Path | None) -> AdapterCard | None:
    """The card of an adapter folder; None when there is no adapter or it has no card.

    Raises:
        AdapterCardError: the file is not JSON, or a known field has a wrong value.
    """
    if adapter_dir is None:
        return None
    path = Path(adapter_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterCardError(f"{path}: cannot be read ({exc}); fix: restore it from the "
                               "training output, or delete it to use the defaults") from None
    if not isinstance(data, dict):
        raise AdapterCardError(f"{path}: must hold a JSON object")
    return _card(path, data)


def _card(path: Path, data: dict[str, Any]) -> AdapterCard:
    notes = []
    version = data.get("format_version")
    if version not in (None, fmt.FORMAT_VERSION):
        notes.append(f"{path}: prompt format {version!r} is newer than this limamono's "
                     f"{fmt.FORMAT_VERSION!r}; prompts may differ from its training data")

    def pick(key: str, default: Any, check: Any) -> Any:
        if key not in data or data[key] is None:
            return default
        value = data[key]
        if not check(value):
            raise AdapterCardError(f"{path}: field {key!r} has an unusable value {value!r}; "
                                   "fix: correct or delete it")
        return value

    trigger = pick("trigger", fmt.DEFAULT_TRIGGER,
                   lambda v: isinstance(v, str) and v.strip() and "\n" not in v)
    if trigger not in fmt.TRIGGERS and isinstance(data.get("trigger_text"), str):
        trigger = data["trigger_text"]
    stops = pick("stop_strings", [fmt.HEADER_STOP],
                 lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v))
    bounds = pick("length_bounds", list(fmt.DEFAULT_LENGTH_BOUNDS),
                  lambda v: isinstance(v, list) and _bounds_ok(v))
    policy = pick("prompt_policy", DEFAULT_POLICY, lambda v: v in POLICIES)
    preset = data.get("sampler_preset") or {}
    if not isinstance(preset, dict):
        raise AdapterCardError(f"{path}: field 'sampler_preset' must be an object")
    name = preset.get("name") or DEFAULT_PRESET
    values = preset.get("values") if isinstance(preset.get("values"), dict) else None
    return AdapterCard(path, trigger, tuple(stops), tuple(bounds), policy, str(name), values,
                       tuple(notes))


def _bounds_ok(bounds: list[Any]) -> bool:
    try:
        fmt.length_for_words(0, bounds)
    except (TypeError, ValueError):
        return False
    return True


def resolve(option: str, given: Any, card_value: Any, default: Any,
            notes: list[str]) -> Any:
    """One setting: the explicit option, else the card's, else the project default.

    Args:
        option: the option's name, e.g. ``--preset``, for the note.
        given: the value the user gave (None: not given).
        card_value: the adapter card's value (None: no card).
        default: the project's default.
        notes: a note is appended when the option overrides a different card value.
    """
    if given is not None:
        if card_value is not None and given != card_value:
            notes.append(f"{option} {given} overrides the adapter's {card_value}")
        return given
    return card_value if card_value is not None else default


@dataclass(frozen=True)
class Defaults:
    """What chat, serve and eval use: the options, else the adapter's card, else defaults.

    Attributes:
        policy: the prompt policy (name, trigger, bounds, stop strings).
        samplers: the sampler settings.
        preset: the preset's name (for display).
        notes: what the user should read (overrides, a newer card).
    """

    policy: PromptPolicy
    samplers: Any
    preset: str
    notes: tuple[str, ...]


def defaults(adapter_dir: str | Path | None, preset: str | None = None,
             policy: str | None = None, trigger: str | None = None) -> Defaults:
    """The prompt policy and samplers for an adapter and the options given explicitly.

    Args:
        adapter_dir: the resolved adapter folder (None: the bare base model).
        preset: ``--preset`` when given.
        policy: ``--policy`` when given.
        trigger: ``--trigger`` when given.

    Raises:
        AdapterCardError: the card cannot be read.
        ValueError: an unknown preset, policy or trigger (the message names it).
    """
    from limamono.samplers import SamplerError, get_preset

    card = read_card(adapter_dir)
    notes = list(card.notes) if card else []
    name = resolve("--policy", policy, card.policy if card else None, DEFAULT_POLICY, notes)
    phrase = resolve("--trigger", trigger, card.trigger if card else None,
                     fmt.DEFAULT_TRIGGER, notes)
    chosen = resolve("--preset", preset, card.preset if card else None, DEFAULT_PRESET, notes)
    prompt_policy = PromptPolicy(name, phrase,
                                 card.length_bounds if card else fmt.DEFAULT_LENGTH_BOUNDS,
                                 card.stop_strings if card else (fmt.HEADER_STOP,))
    try:
        samplers = (card.sampler_settings() if card and preset is None
                    else get_preset(chosen))
    except SamplerError as exc:
        raise ValueError(str(exc)) from None
    return Defaults(prompt_policy, samplers, chosen, tuple(notes))
