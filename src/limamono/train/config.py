"""The training config: one typed dataclass whose defaults are the card's recipe (SPEC §7).

Values come from three places, later ones winning: these defaults, a YAML file, and
``--key value`` pairs on the command line. Every value is coerced to its field's type
(so ``learning_rate: 2e-4``, which YAML 1.1 reads as a string, is a float), and every
problem (unknown keys with the closest known one, wrong types, out-of-range values) is
collected before anything is loaded, then reported together.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.util import untrusted
from limamono.util.untrusted import quote

#: The card's targets: every linear projection of a Llama/Mistral block.
ALL_LINEAR: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj")
OVERFLOW = ("window", "truncate", "drop", "error")
END_OF_TURN = ("header", "eos")
BF16 = ("auto", "true", "false")
ADAPTER_DTYPES = ("fp32", "bf16")
#: What a run trains: supervised fine-tuning, or preference training with TRL's trainers.
METHODS = ("sft", "dpo", "orpo")
#: Where the Trainer sends its logs (transformers' integrations of the same names).
REPORT_TO = ("tensorboard", "wandb", "none")
#: Largest integer any setting takes (a C int; nothing real comes near it).
MAX_INT = 2**31 - 1
#: transformers 5.24's ``OptimizerNames`` and ``SchedulerType`` values, copied so that
#: validating a config does not import transformers (seconds on a small machine).
OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit",
    "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
    "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor",
    "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw")
SCHEDULERS: tuple[str, ...] = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
    "cosine_warmup_with_min_lr", "warmup_stable_decay")


class ConfigError(ValueError):
    """An invalid training config; ``problems`` lists every one found."""

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"{source}: {self.problems[0]}")
            return
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  - "
                         + "\n  - ".join(self.problems))


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults reproduce the card's Axolotl recipe.

    Attributes:
        data: a dataset folder (built on the fly into ``output_dir/data``) or a folder
            written by ``limamono data build``.
        model: base model: ``smollm2-135m`` (embedded), an HF folder or a cached hub id.
        output_dir: where checkpoints, the adapter, plots and the manifest go.
        val: eval fraction when ``data`` is built on the fly.
        overflow: over-long conversations when building (window, truncate, drop, error).
        end_of_turn: trained end of a character turn when building (header or eos).
        window_overlap: context turns repeated at the start of a window when building.
        length_bounds: word bounds of the length labels when building.
        trigger: trigger phrase key or text when building.
        adapter: ``lora``, or Axolotl's ``qlora`` (the same LoRA on a 4-bit base; like
            Axolotl, it requires ``load_in_4bit: true``).
        lora_r: LoRA rank. lora_alpha: LoRA scale numerator. lora_dropout: dropout on the
            LoRA input.
        lora_target_modules: module names that get LoRA (default: all linear projections).
        sequence_len: longest sample in tokens; with ``pad_to_sequence_len`` every batch is
            padded to it (constant memory, as Axolotl does).
        sample_packing: must stay false (the card's recipe; packing is not implemented).
        pad_to_sequence_len: pad to ``sequence_len`` (true) or to the longest in the batch.
        micro_batch_size: samples per device per step.
        gradient_accumulation_steps: micro batches per optimizer step.
        num_epochs: passes over the training samples.
        max_steps: stop after this many optimizer steps (0: run ``num_epochs``).
        optimizer: a transformers optimizer name (``adamw_torch``).
        lr_scheduler: a transformers scheduler name (``cosine``).
        learning_rate: peak learning rate. weight_decay: AdamW decay.
        warmup_steps: linear warmup steps; None means Axolotl's default rule,
            ``min(int(0.03 * total_steps), 100)`` (the card does not set warmup).
        train_on_inputs: train every token, not only the character's text.
        bf16: ``auto`` (bf16 where the device supports it), ``true`` or ``false`` (fp32).
        load_in_8bit: 8-bit base weights where CUDA and bitsandbytes exist.
        load_in_4bit: QLoRA: the base weights in 4-bit NF4 with double quantization
            (bitsandbytes, CPU or CUDA), prepared with PEFT's k-bit preparation; the
            compute dtype follows ``bf16``. Setting it turns the default
            ``load_in_8bit`` off; both set true is refused.
        report_to: where the training logs go besides loss.png and the manifest:
            ``tensorboard`` (event files in ``output_dir/tensorboard``), ``wandb``
            (offline unless ``WANDB_MODE`` or ``WANDB_API_KEY`` is set) or ``none``.
        gradient_checkpointing: trade compute for memory.
        method: ``sft`` (the card's recipe), or preference training on a preference set
            (``data`` written by ``limamono data prefs``): ``dpo`` (TRL's DPOTrainer; the
            reference is ``sft_adapter`` as it was before the run, or the base model
            without one) or ``orpo`` (TRL's ORPOTrainer; no reference).
        sft_adapter: the SFT adapter folder a preference run starts from (its LoRA shape,
            not ``lora_r``/``lora_alpha``/``lora_target_modules``, is used); empty: a new
            LoRA on the base model.
        beta: DPO's beta (how far the policy may move from the reference) or ORPO's lambda
            (the weight of the odds-ratio term), TRL's ``beta`` for both.
        seed: seed of data order, dropout and initialisation.
        eval_steps: also evaluate every N steps (0: only at the end of each epoch).
        save_steps: checkpoint every N steps (0: at the end of each epoch).
        save_total_limit: keep only the newest N checkpoints (0: keep all).
        logging_steps: log the training loss every N steps.
        adapter_dtype: dtype of the saved adapter weights (``fp32`` or ``bf16``).
        progress: show the progress bar.
    """

    data: str = ""
    model: str = "smollm2-135m"
    output_dir: str = "runs/limamono"
    val: float = 0.05
    overflow: str = "window"
    end_of_turn: str = "header"
    window_overlap: int = 2
    length_bounds: list[int] = field(default_factory=lambda: list(fmt.DEFAULT_LENGTH_BOUNDS))
    trigger: str = fmt.DEFAULT_TRIGGER
    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.5
    lora_target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    sequence_len: int = 4096
    sample_packing: bool = False
    pad_to_sequence_len: bool = True
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    num_epochs: int = 3
    max_steps: int = 0
    optimizer: str = "adamw_torch"
    lr_scheduler: str = "cosine"
    learning_rate: float = 2e-4
    weight_decay: float = 0.1
    warmup_steps: int | None = None
    train_on_inputs: bool = False
    bf16: str = "auto"
    load_in_8bit: bool = True
    load_in_4bit: bool = False
    report_to: str = "tensorboard"
    gradient_checkpointing: bool = False
    method: str = "sft"
    sft_adapter: str = ""
    beta: float = 0.1
    seed: int = 42
    eval_steps: int = 0
    save_steps: int = 0
    save_total_limit: int = 0
    logging_steps: int = 1
    adapter_dtype: str = "fp32"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (for manifests and exports)."""
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (str inputs from the CLI or YAML 1.1 included).

    Raises:
        TypeError: it cannot be read as that type.
    """
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0])
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {quote(value)}")
        return [_coerce(v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise TypeError(f"expected true or false, got {quote(value)}")
    if hint is int:
        number = _number(value, "an integer")
        if int(number) != number:
            raise TypeError(f"expected an integer, got {quote(value)}")
        if abs(number) > MAX_INT:
            raise TypeError(f"{quote(value)} is too large (at most {MAX_INT})")
        return int(number)
    if hint is float:
        return float(_number(value, "a number"))
    if hint is str:
        if isinstance(value, bool):  # YAML reads `bf16: true` as a bool
            return str(value).lower()
        if not isinstance(value, str | int | float):
            raise TypeError(f"expected text, got {quote(value)}")
        return str(value)
    raise TypeError(f"unsupported field type {hint!r}")  # pragma: no cover


def _number(value: Any, kind: str) -> int | float:
    """A finite int or float from a number or its text (``.inf``, ``nan``, ``1e400`` refused).

    Raises:
        TypeError: naming ``kind``, the expected type.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise TypeError(f"expected {kind}, got {quote(value)}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError:
        raise TypeError(f"expected {kind}, got {quote(value)}") from None
    if not math.isfinite(number):
        raise TypeError(f"expected {kind}, got {quote(value)} (not a finite number)")
    return number


def _range_problems(c: TrainConfig) -> list[str]:
    checks: list[tuple[bool, str]] = [
        (bool(c.data), "data: required; fix: set `data: DIR` (a dataset folder or a built one)"),
        (c.adapter in ("lora", "qlora"), "adapter: 'lora' or 'qlora' (Axolotl's name for "
         f"LoRA on a 4-bit base), got {quote(c.adapter)}"),
        (c.adapter != "qlora" or c.load_in_4bit, "adapter: qlora needs load_in_4bit: true "
         "(Axolotl's rule: QLoRA is LoRA on a 4-bit base); fix: set load_in_4bit: true, or "
         "adapter: lora"),
        (c.lora_r >= 1, f"lora_r: must be >= 1, got {c.lora_r}"),
        (c.lora_alpha > 0, f"lora_alpha: must be > 0, got {c.lora_alpha}"),
        (0 <= c.lora_dropout < 1, f"lora_dropout: must be in [0, 1), got {c.lora_dropout}"),
        (bool(c.lora_target_modules), "lora_target_modules: needs at least one module name"),
        (c.sequence_len >= 16, f"sequence_len: must be >= 16, got {c.sequence_len}"),
        (not c.sample_packing, "sample_packing: not implemented (the card trains without "
         "it); fix: set false"),
        (c.micro_batch_size >= 1, f"micro_batch_size: must be >= 1, got {c.micro_batch_size}"),
        (c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps: must be >= 1, got "
         f"{c.gradient_accumulation_steps}"),
        (c.num_epochs >= 1, f"num_epochs: must be >= 1, got {c.num_epochs}"),
        (c.max_steps >= 0, f"max_steps: must be >= 0, got {c.max_steps}"),
        (c.learning_rate > 0, f"learning_rate: must be > 0, got {c.learning_rate}"),
        (c.weight_decay >= 0, f"weight_decay: must be >= 0, got {c.weight_decay}"),
        (c.warmup_steps is None or c.warmup_steps >= 0,
         f"warmup_steps: must be >= 0, got {c.warmup_steps}"),
        (0 <= c.val < 1, f"val: must be in [0, 1), got {c.val}"),
        (c.window_overlap >= 0, f"window_overlap: must be >= 0, got {c.window_overlap}"),
        (c.eval_steps >= 0, f"eval_steps: must be >= 0, got {c.eval_steps}"),
        (c.save_steps >= 0, f"save_steps: must be >= 0, got {c.save_steps}"),
        (c.save_total_limit >= 0, f"save_total_limit: must be >= 0, got {c.save_total_limit}"),
        (c.logging_steps >= 1, f"logging_steps: must be >= 1, got {c.logging_steps}"),
        (not (c.load_in_4bit and c.load_in_8bit), "load_in_4bit and load_in_8bit: both "
         "are true, but the base model loads in one precision; fix: set load_in_8bit: false "
         "for QLoRA (4-bit), or load_in_4bit: false"),
    ]
    problems = [message for ok, message in checks if not ok]
    if c.data and not Path(c.data).exists():
        problems.append(f"data: {c.data}: no such folder; fix: point it at a dataset folder "
                        "or the output of `limamono data build`")
    problems += _method_problems(c)
    for name, value, allowed in (
            ("overflow", c.overflow, OVERFLOW), ("end_of_turn", c.end_of_turn, END_OF_TURN),
            ("bf16", c.bf16, BF16), ("adapter_dtype", c.adapter_dtype, ADAPTER_DTYPES),
            ("report_to", c.report_to, REPORT_TO), ("method", c.method, METHODS),
            ("optimizer", c.optimizer, OPTIMIZERS), ("lr_scheduler", c.lr_scheduler, SCHEDULERS)):
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(allowed[:8]) + (", ..." if len(allowed) > 8 else "")
            problems.append(f"{name}: {quote(value)} is not one of {shown}{hint}")
    try:
        fmt.length_for_words(0, c.length_bounds)
    except ValueError as exc:
        problems.append(f"length_bounds: {exc}")
    return problems


def _method_problems(c: TrainConfig) -> list[str]:
    """A preference run needs a preference set (and an SFT run must not get one)."""
    from limamono.dataset.folders import is_prefs

    problems = []
    if not c.beta > 0:
        problems.append(f"beta: must be > 0, got {c.beta}")
    if c.method == "sft":
        if c.sft_adapter:
            problems.append("sft_adapter: only a preference run (method: dpo or orpo) starts "
                            "from an SFT adapter; fix: remove it or set method")
        if c.data and is_prefs(c.data):
            problems.append(f"data: {c.data} is a preference set (limamono data prefs); fix: "
                            "set method: dpo or orpo, or point data at conversations")
        return problems
    if c.data and Path(c.data).exists() and not is_prefs(c.data):
        problems.append(f"data: method {c.method} trains on a preference set, and {c.data} is "
                        "not one; fix: write one with `limamono data prefs ... -o DIR`")
    if c.sft_adapter and not (Path(c.sft_adapter) / "adapter_config.json").is_file():
        problems.append(f"sft_adapter: {c.sft_adapter}: not an adapter folder (no "
                        "adapter_config.json); fix: point it at a run's adapter/ folder")
    return problems


def make_config(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a config from ``key -> value`` (hyphens in keys allowed).

    Raises:
        ConfigError: listing every unknown key, wrong type and out-of-range value.
    """
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{_key_text(raw_key)}: unknown key{hint}")
            continue
        try:
            kwargs[key] = _coerce(value, _HINTS[key])
        except TypeError as exc:
            problems.append(f"{key}: {exc}")
    if kwargs.get("load_in_4bit") is True and "load_in_8bit" not in kwargs:
        kwargs["load_in_8bit"] = False  # QLoRA replaces the recipe's 8-bit default
    if problems:
        # Report type problems together with range problems of the values that did parse.
        config = TrainConfig(**kwargs)
        raise ConfigError(problems + _range_problems(config), source)
    config = TrainConfig(**kwargs)
    problems = _range_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def _key_text(key: Any) -> str:
    text = str(key)
    return text if len(text) <= untrusted.QUOTE_CHARS and text.isprintable() else quote(text)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--lora-r", "16", "--bf16=false", "--train-on-inputs"]`` -> a dict of strings.

    A flag followed by another flag (or nothing) means ``true``.

    Raises:
        ConfigError: an argument is not a ``--key``.
    """
    out: dict[str, Any] = {}
    problems = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            problems.append(f"{quote(arg)}: expected --key value")
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        out[key] = value
        i += 1
    if problems:
        raise ConfigError(problems, "command line")
    return out


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None
                ) -> TrainConfig:
    """Defaults < the YAML file at ``path`` < ``overrides``; relative ``data``,
    ``output_dir`` and ``sft_adapter`` in the file are resolved against the file's folder.

    Raises:
        ConfigError: the file is unreadable or not a mapping, or any value is invalid.
    """
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = untrusted.read_text(path, untrusted.MAX_YAML_BYTES, "YAML file")
            loaded = untrusted.load_yaml(text)
        except OSError as exc:
            raise ConfigError([f"cannot read: {exc.strerror or exc}"], source) from None
        except untrusted.UntrustedError as exc:
            raise ConfigError([str(exc)], source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(["expected a mapping of key: value"], source)
        for key in ("data", "output_dir", "sft_adapter"):
            if isinstance(loaded.get(key), str) and loaded[key] \
                    and not Path(loaded[key]).is_absolute():
                loaded[key] = str(path.parent / loaded[key])
        values.update(loaded)
    values.update({k.replace("-", "_"): v for k, v in (overrides or {}).items()})
    return make_config(values, source)
