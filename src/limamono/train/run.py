"""LoRA training on transformers' Trainer + PEFT, with the card's recipe as defaults.

``train(config)`` builds (or reads) the dataset, loads the base model, wraps it with LoRA,
trains with eval loss each epoch, writes atomic checkpoints, and finishes with:

    OUT/adapter/        standard PEFT adapter + limamono.json + tokenizer with chat template
    OUT/loss.png        train and eval loss curves
    OUT/manifest.json   config, data hash, library versions, seed and figures
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.train.checkpoints import (
    CHECKPOINTS_DIR,
    STAGING_DIR,
    AtomicCheckpoints,
    complete_checkpoints,
    resumable_checkpoint,
)
from limamono.train.config import ConfigError, TrainConfig
from limamono.train.data import RUN_DATA_DIR, PadCollator, TrainData, ensure_built, load_built
from limamono.train.outdir import claim

ADAPTER_DIR = "adapter"
MANIFEST = "manifest.json"
LOSS_PLOT = "loss.png"
TENSORBOARD_DIR = "tensorboard"
ADAPTER_META = "limamono.json"

Notify = Callable[[str], None]


@dataclass
class TrainResult:
    """Where a finished run put its outputs, and its manifest."""

    output_dir: Path
    adapter_dir: Path
    manifest: dict[str, Any]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def training_on_cpu_in_bf16() -> bool:
    """Whether bf16 autocast trains faster than fp32 on this CPU: only with AMX tiles.

    Measured for one LoRA step of the embedded model (docs/BENCHMARKS.md): without native
    bf16, autocast was about 6x slower than fp32; with AVX512-BF16 but no AMX, 1.5x slower
    (27.5 against 18.5 s per 2048-token step). AMX made bf16 prefill 3x faster than fp32,
    so there the matrix products win.
    """
    from limamono.models.resolve import detect_hardware

    return "amx_bf16" in detect_hardware().cpu_flags


def precision(config: TrainConfig, notify: Notify) -> tuple[bool, bool]:
    """``(bf16, load_in_8bit)`` for this machine; says aloud what the recipe cannot have."""
    import torch

    from limamono.models.resolve import choose_dtype

    cuda = torch.cuda.is_available()
    if config.bf16 == "auto":
        # The inference rule (bf16 only where it is native), narrowed for training on a CPU
        # (see training_on_cpu_in_bf16).
        choice = choose_dtype("auto")
        bf16 = choice.dtype == "bf16"
        reason = choice.reason
        if bf16 and not cuda and not training_on_cpu_in_bf16():
            bf16 = False
            reason = f"{reason}, but without AMX a bf16 training step measured slower"
        notify(f"bf16: auto means {'bf16' if bf16 else 'fp32'} here ({reason})")
    else:
        bf16 = config.bf16 == "true"
    eight_bit = False
    if config.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401

            has_bnb = True
        except ImportError:
            has_bnb = False
        eight_bit = cuda and has_bnb
        if not eight_bit:
            missing = "CUDA" if not cuda else "the bitsandbytes package"
            notify(f"load_in_8bit: {missing} is not available, so the base model is trained "
                   "in full precision (the LoRA recipe is otherwise unchanged)")
    return bf16, eight_bit


def require_4bit_backend() -> str:
    """Check that bitsandbytes can quantize to 4-bit NF4 here; return the device it will use.

    The check quantizes and restores one small block, because an importable bitsandbytes
    can still lack a library for this machine's device.

    Raises:
        ConfigError: naming ``load_in_4bit`` and the fix.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except Exception as exc:  # ImportError, or a RuntimeError from a broken native library
        raise ConfigError([
            f"load_in_4bit: needs the bitsandbytes package, which does not load here "
            f"({type(exc).__name__}: {exc}); fix: pip install 'bitsandbytes>=0.49' (one wheel "
            "carries the CPU and CUDA libraries), or set load_in_4bit: false"]) from None
    try:
        block = torch.linspace(-1, 1, 64 * 64, device=device).reshape(64, 64)
        packed, state = bnb_functional.quantize_4bit(block, quant_type="nf4",
                                                     compress_statistics=True)
        error = (bnb_functional.dequantize_4bit(packed, state).float() - block).abs().max()
    except Exception as exc:
        raise ConfigError([
            f"load_in_4bit: bitsandbytes {bitsandbytes.__version__} cannot quantize on this "
            f"machine's {device} ({type(exc).__name__}: {exc}); fix: install a bitsandbytes "
            "build for this device (pip install -U 'bitsandbytes>=0.49'), or set "
            "load_in_4bit: false"]) from None
    if not error < 0.2:  # NF4 steps near +-1 are about 0.28 apart: half of one, and margin
        raise ConfigError([
            f"load_in_4bit: bitsandbytes {bitsandbytes.__version__} on this machine's {device} "
            f"returns wrong values (error {float(error):.3g} on a test block); fix: reinstall "
            "bitsandbytes, or set load_in_4bit: false"])
    return device


def total_steps(config: TrainConfig, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run (Axolotl's count without packing)."""
    if config.max_steps:
        return config.max_steps
    per_step = config.micro_batch_size * config.gradient_accumulation_steps * world_size
    return math.ceil(n_train / per_step) * config.num_epochs


def warmup_steps(config: TrainConfig, n_train: int, world_size: int = 1) -> int:
    """The configured warmup, or Axolotl's default ``min(int(0.03 * total), 100)``."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return min(int(0.03 * total_steps(config, n_train, world_size)), 100)


def training_arguments(config: TrainConfig, staging: Path, has_eval: bool, bf16: bool,
                       warmup: int, bars: bool | None = None, args_class: Any = None,
                       **extra: Any) -> Any:
    """The ``TrainingArguments`` of a run (checkpoints go to ``staging`` first).

    ``bars``: tqdm progress bars on (default: ``config.progress``). ``args_class``: a
    subclass to build instead (TRL's ``DPOConfig``, ``ORPOConfig``), with ``extra`` fields.
    """
    from transformers import TrainingArguments

    every_steps = {"eval_strategy": "steps", "eval_steps": config.eval_steps}
    evaluation = (every_steps if config.eval_steps else {"eval_strategy": "epoch"}) \
        if has_eval else {"eval_strategy": "no"}
    saving = {"save_strategy": "steps", "save_steps": config.save_steps} if config.save_steps \
        else {"save_strategy": "epoch"}
    return (args_class or TrainingArguments)(
        output_dir=str(staging), per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs, max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=warmup, optim=config.optimizer,
        logging_steps=config.logging_steps, seed=config.seed, bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        # TensorBoard gets its callback from report_callbacks (its folder must not be the
        # staging folder); wandb is transformers' own integration.
        report_to="wandb" if config.report_to == "wandb" else "none",
        run_name=Path(config.output_dir).name or None,
        include_num_input_tokens_seen="non_padding",  # logs train_tokens_per_second
        use_cpu=not _has_cuda(),
        disable_tqdm=not (config.progress if bars is None else bars),
        remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=_has_cuda(), **evaluation,
        **saving, **extra)


def wandb_environment(environ: Mapping[str, str], out: Path) -> dict[str, str]:
    """The variables a wandb run needs set: offline unless the user configured otherwise.

    ``WANDB_MODE`` or ``WANDB_API_KEY`` in the environment is the user's choice and is kept;
    without either, the run is ``offline`` (no network call; ``wandb sync`` uploads it
    later). Files go to ``out`` unless ``WANDB_DIR`` says otherwise.
    """
    values = {"WANDB_DIR": str(out), "WANDB_PROJECT": "limamono"}
    if "WANDB_MODE" not in environ and "WANDB_API_KEY" not in environ:
        values["WANDB_MODE"] = "offline"
    return {k: v for k, v in values.items() if k not in environ}


def report_callbacks(config: TrainConfig, out: Path, notify: Notify) -> list[Any]:
    """Callbacks for ``report_to`` (TensorBoard events in ``out/tensorboard``); for wandb,
    sets its environment (see ``wandb_environment``).

    Raises:
        ConfigError: the chosen logger is not installed, naming the fix.
    """
    if config.report_to == "tensorboard":
        try:
            from transformers.integrations import TensorBoardCallback

            callback = TensorBoardCallback()
        except (ImportError, RuntimeError):
            raise ConfigError(["report_to: tensorboard is not installed; fix: pip install "
                               "tensorboard (limamono depends on it), or set report_to: "
                               "none"]) from None
        callback.logging_dir = str(out / TENSORBOARD_DIR)
        return [callback]
    if config.report_to == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(["report_to: wandb is not installed; fix: pip install wandb "
                               "(or pip install 'limamono[wandb]'), or set report_to: "
                               "tensorboard"])
        values = wandb_environment(os.environ, out)
        os.environ.update(values)
        if values.get("WANDB_MODE") == "offline":
            notify(f"report_to: wandb logs offline into {os.environ['WANDB_DIR']}; set "
                   "WANDB_MODE=online (after `wandb login`) to send runs, or upload this one "
                   "later with `wandb sync`")
    return []


def _line_progress(say: Notify) -> Any:
    from limamono.train.progress import LineProgress

    return LineProgress(say)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_base(path: Path, eight_bit: bool, bf16: bool, four_bit: bool = False,
              checkpointing: bool = False) -> Any:
    """The base model for training: fp32 master weights, 8-bit, or 4-bit NF4 (QLoRA).

    Quantized bases go through PEFT's k-bit preparation (norms and embeddings in fp32,
    input gradients on), with gradient checkpointing as the config says (as Axolotl does).
    4-bit is QLoRA's layout: NF4, double quantization of the block scales, and matrix
    products in bf16 where the run is bf16, else fp32.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not (eight_bit or four_bit):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                    local_files_only=True)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    if four_bit:
        compute = torch.bfloat16 if bf16 else torch.float32
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    else:
        compute = torch.bfloat16 if bf16 else torch.float16
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=compute, local_files_only=True)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)


def add_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap the model with the config's LoRA (r, alpha, dropout, target modules).

    Raises:
        ValueError: a target module name matches nothing in the model.
    """
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.lora_target_modules if m not in names]
    if missing:
        raise ValueError(f"lora_target_modules: {', '.join(missing)} not found in the model; "
                         "fix: use names of its linear layers (e.g. q_proj, v_proj)")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), bias="none",
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import torch
    import transformers

    from limamono import __version__

    return {"limamono": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def _sampler_preset() -> dict[str, Any]:
    try:
        from dataclasses import asdict

        from limamono.samplers import get_preset

        return {"name": "limamono", "values": asdict(get_preset("limamono"))}
    except (ImportError, KeyError, TypeError, ValueError):  # pragma: no cover - optional
        return {"name": "limamono", "values": None}


def adapter_metadata(config: TrainConfig) -> dict[str, Any]:
    """What ``limamono.json`` in the adapter folder holds."""
    return {"format_version": fmt.FORMAT_VERSION, "trigger": config.trigger,
            "trigger_text": fmt.TRIGGERS.get(config.trigger, config.trigger),
            "end_of_turn": config.end_of_turn, "stop_strings": [fmt.HEADER_STOP],
            "sampler_preset": _sampler_preset(), "length_bounds": list(config.length_bounds),
            "prompt_policy": "training",  # how its samples were labelled (limamono.core.policy)
            "base_model": config.model, "training": config.to_dict()}


def save_adapter(model: Any, tokenizer: Any, config: TrainConfig, target: Path) -> Path:
    """Write the final adapter folder atomically (temp folder, then rename)."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    _record_base(tmp / "adapter_config.json", config.model)
    if config.adapter_dtype == "bf16":
        _cast_adapter(tmp / "adapter_model.safetensors")
    tokenizer.chat_template = fmt.chat_template(config.trigger)
    tokenizer.save_pretrained(str(tmp))
    _template_in_config(tmp / "tokenizer_config.json", tokenizer.chat_template)
    (tmp / ADAPTER_META).write_text(json.dumps(adapter_metadata(config), indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _record_base(path: Path, model: str) -> None:
    """Record the embedded model's hub id as the base, not this machine's cache folder."""
    from limamono.models.resolve import DEFAULT_MODEL, EMBEDDED_HUB_ID

    if model != DEFAULT_MODEL:
        return
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = EMBEDDED_HUB_ID
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _cast_adapter(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _template_in_config(path: Path, template: str) -> None:
    """Also keep the chat template inside tokenizer_config.json, where older transformers
    and vLLM look for it (transformers 5 writes it to chat_template.jinja)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["chat_template"] = template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def plot_losses(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Train loss per logged step and eval loss per evaluation, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figures(history: Sequence[dict[str, Any]], state: Any, seconds: float,
             model: Any) -> dict[str, Any]:
    train = [[h["step"], h["loss"]] for h in history if "loss" in h]
    evals = [[h["step"], h.get("epoch"), h["eval_loss"]] for h in history if "eval_loss" in h]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"steps": state.global_step, "epochs": state.epoch, "seconds": round(seconds, 2),
            "train_loss": train, "eval_loss": evals,
            "final_train_loss": train[-1][1] if train else None,
            "final_eval_loss": evals[-1][2] if evals else None,
            "trainable_params": trainable,
            "total_params": sum(p.numel() for p in model.parameters())}


def prepare(config: TrainConfig, notify: Notify) -> tuple[Any, Any, TrainData]:
    """Resolve the model, load its tokenizer and the run's data (nothing heavy yet)."""
    from transformers import AutoTokenizer

    from limamono.models.resolve import resolve_model

    spec = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    built = ensure_built(config, tokenizer, Path(config.output_dir) / RUN_DATA_DIR, notify)
    return spec, tokenizer, load_built(built, config, tokenizer)


class NoSpaceError(OSError):
    """The disk filled up while a run wrote its files; what was complete before is kept."""


def _folder_bytes(path: Path | None) -> int:
    if path is None or not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def out_of_space(exc: BaseException, folder: Path, needed: int = 0) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, means the disk is full.

    An ``OSError`` says so (ENOSPC), but ``torch.save`` reports a short write only as
    ``RuntimeError: [enforce fail at inline_container.cc]``; then the free space decides:
    less than ``needed`` bytes (the size of what was being written) or 1 MiB.
    """
    import errno

    link: BaseException | None = exc
    while link is not None:
        if (isinstance(link, OSError) and link.errno == errno.ENOSPC) \
                or "No space left" in str(link):
            return True
        link = link.__cause__ or link.__context__
    if not isinstance(exc, RuntimeError | OSError):
        return False
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return False
    return free < max(needed, 1 << 20)


def start_run(config: TrainConfig, resume: bool, force: bool,
              say: Notify) -> tuple[Path, Any, list[Any]]:
    """What every run does first: check the 4-bit backend (its error names the fix), claim
    ``output_dir`` on the main process, and set up the ``report_to`` callbacks.

    Returns:
        The output folder, accelerate's ``PartialState`` and the logging callbacks.
    """
    if config.load_in_4bit:
        require_4bit_backend()  # before anything is built or loaded
    out = Path(config.output_dir)
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        claim(config, resume=resume, force=force, notify=say)
    state.wait_for_everyone()
    return out, state, report_callbacks(config, out, say)


def save_adapter_or_say_no_space(model: Any, tokenizer: Any, config: TrainConfig, out: Path,
                                 needed: int) -> None:
    """``save_adapter`` into ``out/adapter``; a full disk is a :class:`NoSpaceError` naming
    ``out`` (the half-written adapter is removed, the checkpoints are kept)."""
    adapter_dir = out / ADAPTER_DIR
    try:
        save_adapter(model, tokenizer, config, adapter_dir)
    except Exception as exc:
        if not out_of_space(exc, out, needed):
            raise
        shutil.rmtree(adapter_dir.with_name(f".{adapter_dir.name}.tmp"), ignore_errors=True)
        raise _no_space(out, "the adapter") from exc


def _no_space(out: Path, what: str) -> NoSpaceError:
    import errno

    kept = complete_checkpoints(out / CHECKPOINTS_DIR)
    intact = f"the previous checkpoint {kept[-1].name} is intact" if kept else \
        "no earlier checkpoint exists"
    return NoSpaceError(errno.ENOSPC, f"no space left on {out} while writing {what}; "
                        f"{intact}; fix: free space on that disk (or choose another "
                        "output_dir), then run again with --resume")


def train(config: TrainConfig, resume: bool = False, callbacks: Sequence[Any] = (),
          notify: Notify | None = None, progress_lines: Notify | None = None,
          force: bool = False) -> TrainResult:
    """Run one LoRA training (see the module docstring for the outputs).

    Args:
        config: a validated config (``load_config``/``make_config``).
        resume: continue from the newest complete checkpoint in ``output_dir``.
        callbacks: extra ``TrainerCallback`` objects (tests use one to stop a run).
        notify: receives the lines to say aloud (8-bit fallback, over-long conversations);
            default: ``warnings.warn``.
        progress_lines: when given (and ``config.progress``), progress is reported as
            plain lines to it instead of tqdm bars (output that is not a terminal).
        force: replace another run found in ``output_dir`` (``outdir.claim``).

    Raises:
        ConfigError, DatasetError, ModelError: bad config, data or model, before training.
        RunFolderError: ``output_dir`` is refused (another run, the dataset, foreign files).
        CheckpointError: ``resume`` found checkpoints, none of them intact.
        NoSpaceError: the disk filled up (earlier checkpoints are kept).
    """
    # The run reads local folders only; this stops PEFT/transformers from looking up
    # the base model on the hub while saving (see DESIGN.md).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Trainer

    say = notify or _warn
    if config.method != "sft":
        raise ConfigError([f"method: {config.method} is preference training, and this path "
                           "(also the learning-rate sweep's and export axolotl's) trains SFT "
                           "only; fix: run it with `limamono train` (limamono.train.train) "
                           "without --lr-sweep, or set method: sft"])
    out, state, logging = start_run(config, resume, force, say)
    with state.main_process_first():  # rank 0 builds the dataset, the others then read it
        spec, tokenizer, data = prepare(config, say)
    bf16, eight_bit = precision(config, say)
    if not data.eval:
        say("no eval samples (val is 0 and no conversation has meta.split: eval), so no eval "
            "loss is computed")
    from transformers import set_seed

    set_seed(config.seed)  # the LoRA A matrices are initialised randomly: same seed, same run
    model = add_lora(load_base(spec.path, eight_bit, bf16, config.load_in_4bit,
                               config.gradient_checkpointing), config)
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # an unfinished checkpoint of a killed run
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    lines = progress_lines if config.progress else None
    extra = [*callbacks] if lines is None else [*callbacks, _line_progress(lines)]
    trainer = Trainer(
        model=model, data_collator=PadCollator(pad_id, config.sequence_len
                                               if config.pad_to_sequence_len else None),
        args=training_arguments(config, staging, bool(data.eval), bf16,
                                warmup_steps(config, len(data.train)),
                                bars=config.progress and lines is None),
        train_dataset=data.train, eval_dataset=data.eval or None,
        callbacks=[AtomicCheckpoints(staging, out / CHECKPOINTS_DIR, config.save_total_limit),
                   *logging, *extra])
    if lines is not None:  # our lines replace the raw log dicts printed without bars
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    checkpoint = resumable_checkpoint(out / CHECKPOINTS_DIR, config.max_steps, say) \
        if resume else None
    if resume and checkpoint is None:
        say(f"--resume: no complete checkpoint in {out / CHECKPOINTS_DIR}; starting afresh")
    started = time.perf_counter()
    needed = max(_folder_bytes(checkpoint), 12 * sum(
        p.numel() for p in model.parameters() if p.requires_grad))  # weights + 2 moments
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:  # safetensors reports a full disk as a SafetensorError
        if not out_of_space(exc, out, needed):
            raise
        shutil.rmtree(staging, ignore_errors=True)  # the half-written checkpoint
        raise _no_space(out, f"a checkpoint at step {trainer.state.global_step}") from exc
    seconds = time.perf_counter() - started
    adapter_dir = out / ADAPTER_DIR
    if not trainer.is_world_process_zero():
        return TrainResult(out, adapter_dir, {})
    save_adapter_or_say_no_space(model, tokenizer, config, out, needed)
    history = trainer.state.log_history
    plot_losses(history, out / LOSS_PLOT)
    manifest = {
        "config": config.to_dict(), "seed": config.seed, "model_path": str(spec.path),
        "data": {"dir": str(data.built_dir), "sha256": data.data_hash,
                 "train_samples": len(data.train), "eval_samples": len(data.eval),
                 "supervised_tokens": data.stats.get("supervised_tokens")},
        "precision": {"bf16": bf16, "load_in_8bit": eight_bit,
                      "load_in_4bit": config.load_in_4bit},
        "resumed_from": str(checkpoint) if checkpoint else None,
        "versions": _versions(),
        "figures": _figures(history, trainer.state, seconds, model),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(out, adapter_dir, manifest)
