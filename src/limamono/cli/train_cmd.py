"""`limamono train CONFIG [--key value ...]` and `limamono export axolotl CONFIG -o DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from limamono.cli.common import EXIT_BAD_INPUT, err, fail, out, warn

export_app = typer.Typer(help="Export a training run for other tools.", no_args_is_help=True)

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
_OVERRIDES_HELP = ("Any config key can follow as --key value (e.g. --lora-r 16 "
                   "--learning-rate 1e-4 --bf16 false, --load-in-4bit for QLoRA, --report-to "
                   "tensorboard|wandb|none); CLI > file > defaults. Keys: docs/TRAINING.md.")


def _say(line: str) -> None:
    warn(line)


def _progress_line(line: str) -> None:
    err.print(line)


def _plain_progress() -> Any:
    """Where progress lines go when the output is not a terminal (None: tqdm's bars)."""
    from limamono.cli.quiet import is_terminal

    return None if is_terminal() else _progress_line


def _config(config_file: Path | None, extra: list[str]) -> Any:
    from limamono.train import ConfigError, load_config, parse_overrides

    if config_file is not None and not config_file.is_file():
        fail(f"{config_file}: no such config file; fix: pass a YAML file of key: value "
             "pairs (see docs/TRAINING.md)")
    try:
        return load_config(config_file, parse_overrides(extra))
    except ConfigError as exc:
        fail(str(exc))


def train_cmd(
    ctx: typer.Context,
    config_file: Path = typer.Argument(..., metavar="CONFIG", help="Training config (YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete "
                                "checkpoint in output_dir (with --lr-sweep: reuse the rates "
                                "that finished, continue the interrupted one)."),
    lr_sweep: str | None = typer.Option(None, "--lr-sweep", help="Comma-separated rates: one "
                                        "epoch at constant LR each, pick the lowest eval loss, "
                                        "plot lr_sweep.png (e.g. 5e-5,1e-4,2e-4,4e-4)."),
    force: bool = typer.Option(False, "--force", help="Replace another run (another config) "
                               "found in output_dir: its checkpoints, adapter and manifest. "
                               "Folders limamono did not make are never replaced."),
) -> None:
    """Train a LoRA adapter with the card's recipe (or DPO/ORPO on preference pairs).

    The recipe: r 8, alpha 16, dropout 0.5, all linear projections, seq 4096 padded, 3
    epochs, cosine 2e-4. Writes OUT/adapter/, OUT/loss.png, OUT/manifest.json and atomic
    checkpoints. output_dir must be new, empty, or this run's
    own (limamono-run.json records whose). Works under `accelerate launch -m limamono
    train CONFIG`. With `method: dpo` or `orpo` it trains on a preference set (`limamono
    data prefs`) with TRL, from `sft_adapter` (also DPO's reference)."""
    from limamono.dataset import DatasetError
    from limamono.models.resolve import ModelError
    from limamono.train import ConfigError

    config = _config(config_file, list(ctx.args))
    # After the config is read: train.run imports transformers and PEFT (~30 s on a busy
    # machine), which a bad config must not wait for.
    from limamono.train.run import NoSpaceError

    if lr_sweep is not None and config.method != "sft":
        fail(f"--lr-sweep: the sweep trains SFT runs only, and method is {config.method}; "
             "fix: sweep the SFT run, then train the preference run at a chosen rate")
    try:
        if lr_sweep is not None:
            from limamono.train import lr_sweep as run_sweep
            from limamono.train import parse_rates

            summary = run_sweep(config, parse_rates(lr_sweep), notify=_say,
                                progress_lines=_plain_progress(), resume=resume)
            for run in summary["runs"]:
                out.print(f"lr {run['learning_rate']:g}: eval loss {run['eval_loss']:.4f}")
            out.print(f"best learning rate: {summary['best_learning_rate']:g} "
                      f"({config.output_dir}/lr_sweep.json, lr_sweep.png)")
            if summary["note"]:
                warn(summary["note"])
            return
        from limamono.train import train

        result = train(config, resume=resume, notify=_say, progress_lines=_plain_progress(),
                       force=force)
    except (ConfigError, DatasetError, ModelError, ValueError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except NoSpaceError as exc:
        fail(exc.strerror or str(exc), 1)
    if result.manifest:
        figures = result.manifest["figures"]
        eval_loss = figures["final_eval_loss"]
        shown = "n/a" if eval_loss is None else f"{eval_loss:.4f}"
        out.print(f"adapter: {result.adapter_dir}  steps {figures['steps']}  "
                  f"eval loss {shown}  time {figures['seconds']:.0f}s")
        margins = figures.get("preference", {}).get("rewards/margins")
        if margins:
            out.print(f"{config.method}: last logged reward margin {margins[-1][1]:.4f} "
                      f"(step {margins[-1][0]})")


def export_axolotl_cmd(
    ctx: typer.Context,
    config_file: Path = typer.Argument(..., metavar="CONFIG", help="Training config (YAML)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for axolotl.yaml and "
                                "the dataset files."),
) -> None:
    """Write an Axolotl config (datasets of type input_output, the same hyperparameters,
    val_set_size 0 with test_datasets = eval.jsonl) and the built dataset to a folder."""
    from limamono.dataset import DatasetError
    from limamono.models.resolve import ModelError
    from limamono.train import export_axolotl

    config = _config(config_file, list(ctx.args))
    if config.method != "sft":
        fail(f"export axolotl: writes SFT runs only, and method is {config.method}; fix: "
             "export the SFT run's config (Axolotl's `rl: dpo` takes its own datasets)")
    try:
        path = export_axolotl(config, output, notify=_say)
    except (DatasetError, ModelError) as exc:
        fail(str(exc))
    out.print(f"wrote {path} (run `axolotl train axolotl.yaml` in {output})")


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``export`` group to the CLI."""
    app.command("train", context_settings=_EXTRA, epilog=_OVERRIDES_HELP)(train_cmd)
    export_app.command("axolotl", context_settings=_EXTRA, epilog=_OVERRIDES_HELP)(
        export_axolotl_cmd)
    app.add_typer(export_app, name="export")
