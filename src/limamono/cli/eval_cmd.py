"""`limamono eval`: loss and behaviour metrics, several adapters side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from limamono.cli.common import SOFT_LANDING_HELP, fail, out
from limamono.models.resolve import DTYPE_HELP


def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Folder of conversations; those marked "
                              "`meta: {split: eval}` are the held-out set (all if none is)."),
    output: Path = typer.Option(..., "-o", "--output", help="Report folder (report.md, "
                                "report.json, lengths.png, metrics.png)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Base model name or folder."),
    adapter: list[str] = typer.Option(["demo", "none"], "--adapter", help="Adapter folder, "
                                      "'demo' (the bundled one) or 'none'; repeat to compare."),
    samples: int | None = typer.Option(None, "--samples", min=1, help="Prompts (character "
                                       "turns) per length; default: enough for 83 replies, "
                                       "which puts the impersonation rate's 95 % interval "
                                       "within ±5 points at its 5 % target."),
    lengths: str = typer.Option("short,long,massive", "--lengths", help="Requested response "
                                "lengths, comma-separated."),
    seed: int = typer.Option(1234, "--seed", help="Base seed (prompt k uses seed + k)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Cap on tokens "
                                          "per reply (default 320; 64 with --quick)."),
    quick: bool = typer.Option(False, "--quick", help="A CI-sized run: 2 prompts per length "
                               "and 64 tokens per reply unless given; its intervals are too "
                               "wide to judge the targets."),
    preset: str | None = typer.Option(None, "--preset", help="Sampler preset (default: each "
                                      "adapter's own, else limamono)."),
    policy: str | None = typer.Option(None, "--policy", help="Prompt policy: training or "
                                      "sillytavern (default: each adapter's own, else "
                                      "training)."),
    with_report: list[Path] = typer.Option([], "--with-report", help="Folder of an earlier "
                                           "report (same prompts and settings) whose "
                                           "variants join this one: those also named by "
                                           "--adapter are not generated again, e.g. the "
                                           "bare base. Repeatable."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (1 is best on "
                                       "a busy machine)."),
    soft_landing: bool = typer.Option(True, "--soft-landing/--no-soft-landing",
                                      help=SOFT_LANDING_HELP),
    backend: str = typer.Option("torch", "--backend", help="Engine that generates the "
                                "replies: torch, or llamacpp (the embedded model's GGUF with "
                                "the adapter as a GGUF LoRA; several times faster on a CPU). "
                                "The loss is computed on torch either way; replies differ "
                                "between backends, so compare reports of one backend."),
) -> None:
    """Evaluate the base model and adapters on held-out conversations.

    For each variant: eval loss and perplexity on the supervised tokens, then one reply per
    prompt and requested length (fixed seeds, paired across variants), checked for style
    compliance, format integrity, impersonation, speaking for the user, thoughts, length
    adherence (Spearman), repetition and stock phrases. Every rate has a 95 % interval and
    each target is judged meets / misses / cannot tell from it; the report compares the
    variants side by side.
    """
    from limamono.evaluate import run as run_mod
    from limamono.evaluate.report import write_report
    from limamono.evaluate.run import EvalConfig

    chosen = tuple(x.strip() for x in lengths.split(",") if x.strip())
    if samples is None:
        samples = run_mod.QUICK_SAMPLES if quick else run_mod.samples_for(chosen)
    if max_tokens is None:
        max_tokens = run_mod.QUICK_MAX_TOKENS if quick else 320
    try:
        config = EvalConfig(data=data, model=model, adapters=tuple(adapter), lengths=chosen,
                            samples=samples, seed=seed, max_new_tokens=max_tokens,
                            preset=preset, policy=policy, dtype=dtype, threads=threads,
                            soft_landing=soft_landing, backend=backend)
    except ValueError as exc:
        fail(str(exc))
    if not data.is_dir():
        fail(f"{data}: not a folder of conversations")
    import dataclasses

    from limamono.evaluate.report import ReportError, merge_variants, read_variants

    earlier = []
    try:
        for folder in with_report:
            earlier += read_variants(folder, config)
        merge_variants(config.adapters, [], earlier)  # refuses a name in two reports
    except (ReportError, OSError, ValueError) as exc:
        fail(str(exc))
    reused = {r.adapter for r in earlier}
    to_run = tuple(a for a in config.adapters if a not in reused)
    results = _generate(dataclasses.replace(config, adapters=to_run), model, dtype,
                        threads) if to_run else []
    merged = merge_variants(config.adapters, results, earlier)
    shown = dataclasses.replace(config, adapters=tuple(r.adapter for r in merged)
                                or config.adapters)
    for path in write_report(shown, merged, output):
        out.print(str(path))


def _generate(config: Any, model: str, dtype: str, threads: int | None) -> list[Any]:
    """Run the variants of ``config`` (replies on its backend, loss on torch), one progress
    bar each."""
    from limamono.cli.engine_cmd import load_engine_for_cli, prepare_model_for_cli
    from limamono.cli.progress import counting
    from limamono.evaluate.run import run
    from limamono.models.resolve import resolve_adapter

    prepare_model_for_cli(model)  # a conversion bar first: one live display at a time
    with counting() as bar:
        tasks: dict[str, Any] = {}

        def progress(variant: str, done: int, total: int) -> None:
            if variant not in tasks:
                tasks[variant] = bar.add_task(f"generating ({variant})", total=total)
            bar.update(tasks[variant], completed=done)

        def load_on(backend: str) -> Any:
            def load(model_name: str, adapter_name: str) -> Any:
                # Every variant on the same backend: replies are paired by seed.
                return load_engine_for_cli(model_name, resolve_adapter(adapter_name), dtype,
                                           threads, backend=backend)
            return load

        try:
            return run(config, progress, load=load_on(config.backend),
                       load_loss=None if config.backend == "torch" else load_on("torch"))
        except (OSError, ValueError) as exc:
            fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add `eval` to the CLI."""
    app.command("eval")(eval_cmd)
