"""The card's learning-rate search and the Axolotl export.

The card picked "the learning rate that about minimizes the eval loss on one epoch with a
constant learning schedule": ``lr_sweep`` runs exactly that, one short run per rate on the
same built data, and picks the rate with the lowest eval loss.

``export_axolotl`` writes the same run as an Axolotl config (pre-tokenized datasets, the
same hyperparameters) next to the very token ids and labels ``limamono train`` uses, for
users who train with Axolotl (see reference/training.md §1). Pre-tokenized rather than
``input_output`` segments: Axolotl tokenises each segment alone, which on SentencePiece
tokenizers (Mistral, the card's base) puts a ``▁`` at every segment start and no BOS.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from limamono.train.config import ConfigError, TrainConfig
from limamono.train.data import RUN_DATA_DIR, ensure_built
from limamono.train.run import MANIFEST, TENSORBOARD_DIR, Notify, _warn, train

SWEEP_DIR = "lr-sweep"
SWEEP_JSON = "lr_sweep.json"
SWEEP_PLOT = "lr_sweep.png"
AXOLOTL_CONFIG = "axolotl.yaml"


def parse_rates(text: str) -> list[float]:
    """``"5e-5,1e-4"`` -> ``[5e-05, 0.0001]``.

    Raises:
        ConfigError: a value is not a positive number.
    """
    rates, problems = [], []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            value = -1.0
        if value <= 0:
            problems.append(f"--lr-sweep: {part!r} is not a positive number")
        rates.append(value)
    if not rates:
        problems.append("--lr-sweep: give at least one rate, e.g. 5e-5,1e-4,2e-4,4e-4")
    if problems:
        raise ConfigError(problems, "command line")
    return rates


def sweep_config(config: TrainConfig, rate: float, data: str) -> TrainConfig:
    """One sweep run: one epoch at a constant ``rate``, no warmup, on the built ``data``."""
    out = Path(config.output_dir) / SWEEP_DIR / f"lr-{rate:g}"
    return dataclasses.replace(config, data=data, learning_rate=rate, num_epochs=1,
                               lr_scheduler="constant", warmup_steps=0, eval_steps=0,
                               output_dir=str(out))


def finished_run(run: TrainConfig) -> dict[str, Any] | None:
    """The manifest of a sweep run that already finished with exactly this config, or None.

    A run with another config in the same folder (a changed rank, other data) is not
    reused: the sweep trains that rate again.
    """
    path = Path(run.output_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("config") != run.to_dict():
        return None
    return manifest


def lr_sweep(config: TrainConfig, rates: Sequence[float], notify: Notify | None = None,
             progress_lines: Notify | None = None, resume: bool = False) -> dict[str, Any]:
    """Train one epoch per rate; pick the lowest eval loss; write JSON and a plot.

    With ``resume``, a rate whose run already finished with the same config is read from
    its manifest instead of trained again, and an interrupted one continues from its newest
    complete checkpoint: a long sweep on a CPU can take several starts, and separate
    processes can each run some of the rates (one final ``resume`` call collects them all).

    Raises:
        ConfigError: the data has no eval split (the sweep needs eval loss).
    """
    from limamono.train.outdir import check_folder
    from limamono.train.run import prepare

    say = notify or _warn
    out = Path(config.output_dir)
    check_folder(config)  # each rate's run then claims its own folder under it
    _, _, data = prepare(config, say)
    if not data.eval:
        raise ConfigError(["val: the sweep compares eval losses, but there is no eval "
                           "sample; fix: set val > 0 or mark conversations meta.split: eval"])
    runs = []
    for rate in rates:
        run = sweep_config(config, rate, str(data.built_dir))
        manifest = finished_run(run) if resume else None
        if manifest is not None:
            say(f"lr {rate:g}: finished earlier, read from {run.output_dir}/{MANIFEST}")
        else:
            # force: a rate's folder belongs to the sweep; another config there is retrained
            manifest = train(run, resume=resume, notify=say, progress_lines=progress_lines,
                             force=True).manifest
        figures = manifest["figures"]
        runs.append({"learning_rate": rate, "eval_loss": figures["final_eval_loss"],
                     "train_loss": figures["final_train_loss"],
                     "seconds": figures["seconds"], "output_dir": run.output_dir})
    best = min(runs, key=lambda r: r["eval_loss"])
    summary = {"best_learning_rate": best["learning_rate"], "runs": runs,
               "schedule": "constant, 1 epoch, no warmup", "data": str(data.built_dir),
               "note": edge_note(rates, best["learning_rate"])}
    (out / SWEEP_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    plot_sweep(runs, best["learning_rate"], out / SWEEP_PLOT)
    if config.report_to == "tensorboard":
        log_sweep(runs, out / TENSORBOARD_DIR / SWEEP_DIR)
    return summary


def log_sweep(runs: Sequence[dict[str, Any]], folder: Path) -> None:
    """The sweep in TensorBoard's HParams view: one run per rate (``lr-0.0002``) holding the
    rate and its final eval and train loss (each rate's curves are in its own run folder)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder)) as writer:
        for run in runs:
            metrics = {"hparam/eval_loss": run["eval_loss"]}
            if run["train_loss"] is not None:
                metrics["hparam/train_loss"] = run["train_loss"]
            writer.add_hparams({"learning_rate": run["learning_rate"]}, metrics,
                               run_name=f"lr-{run['learning_rate']:g}")


def edge_note(rates: Sequence[float], best: float) -> str | None:
    """What to try next when the best rate is the highest or lowest one tried (the
    minimum may lie beyond it); None when it has a tried rate on each side."""
    if len(set(rates)) < 2:
        return None
    if best == max(rates):
        return (f"{best:g} is the highest rate tried, so the lowest eval loss may lie above "
                f"it; try {best * 2:g} too")
    if best == min(rates):
        return (f"{best:g} is the lowest rate tried, so the lowest eval loss may lie below "
                f"it; try {best / 2:g} too")
    return None


def plot_sweep(runs: Sequence[dict[str, Any]], best: float, path: Path) -> None:
    """Eval loss after one epoch against the learning rate (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["learning_rate"] for r in runs], [r["eval_loss"] for r in runs], "o-")
    ax.axvline(best, color="grey", linestyle="--", label=f"best {best:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (constant, 1 epoch)")
    ax.set_ylabel("eval loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def axolotl_config(config: TrainConfig, base_model: str) -> dict[str, Any]:
    """The Axolotl YAML (as a dict) equivalent to ``limamono train`` with ``config``."""
    out: dict[str, Any] = {
        "base_model": base_model,
        "load_in_8bit": config.load_in_8bit,
        # Axolotl names a LoRA on a 4-bit base `adapter: qlora` (NF4 + double quant there too).
        "load_in_4bit": config.load_in_4bit,
        "adapter": "qlora" if config.load_in_4bit else config.adapter,
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "lora_target_modules": list(config.lora_target_modules),
        "sequence_len": config.sequence_len,
        "sample_packing": config.sample_packing,
        "pad_to_sequence_len": config.pad_to_sequence_len,
        "micro_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_epochs": config.num_epochs,
        "optimizer": config.optimizer,
        "lr_scheduler": config.lr_scheduler,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "train_on_inputs": config.train_on_inputs,
        "bf16": config.bf16 if config.bf16 == "auto" else config.bf16 == "true",
        "gradient_checkpointing": config.gradient_checkpointing,
        "seed": config.seed,
        # No `type:`: rows already hold input_ids, attention_mask and labels.
        "datasets": [{"path": "train.jsonl", "ds_type": "json"}],
        "test_datasets": [{"path": "eval.jsonl", "ds_type": "json", "split": "train"}],
        "val_set_size": 0,
        "evals_per_epoch": 1,
        "saves_per_epoch": 1,
        "dataset_prepared_path": "prepared",
        "output_dir": "./outputs/limamono-lora",
    }
    # Unset warmup: Axolotl applies the same default rule as limamono train.
    if config.warmup_steps is not None:
        out["warmup_steps"] = config.warmup_steps
    if config.max_steps:
        out["max_steps"] = config.max_steps
    if config.eval_steps:
        out.pop("evals_per_epoch")
        out["eval_steps"] = config.eval_steps
    return out


def export_axolotl(config: TrainConfig, target: str | Path,
                   notify: Notify | None = None) -> Path:
    """Write ``axolotl.yaml``, the built samples as Axolotl's pre-tokenized rows
    (``train.jsonl``, ``eval.jsonl``) and ``stats.json`` to ``target``.

    Raises:
        DatasetError, ModelError: the data cannot be built with the model's tokenizer.
    """
    from transformers import AutoTokenizer

    from limamono import dataset as ds
    from limamono.models.resolve import resolve_model

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    spec = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    built = ensure_built(config, tokenizer, target / RUN_DATA_DIR, notify or _warn)
    for split in ("train", "eval"):
        ds.write_jsonl(target / f"{split}.jsonl",
                       ds.axolotl_rows(ds.read_tokenized(built, split)))
    shutil.copyfile(built / ds.STATS_FILE, target / ds.STATS_FILE)
    has_eval = bool(ds.read_tokenized(built, "eval"))
    data = axolotl_config(config, str(spec.path))
    if not has_eval:
        data.pop("test_datasets")
        data.pop("evals_per_epoch", None)
    header = ("# Axolotl config exported by `limamono export axolotl`: the same token ids and\n"
              "# labels (pre-tokenized rows) and hyperparameters as `limamono train`.\n"
              "# Run from this folder: `axolotl train axolotl.yaml`.\n")
    text = header + yaml.safe_dump(data, sort_keys=False)
    (target / AXOLOTL_CONFIG).write_text(text)
    return target / AXOLOTL_CONFIG
