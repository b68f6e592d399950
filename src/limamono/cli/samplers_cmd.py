"""`limamono samplers list|bench`: the sampler presets and their cost per token."""

from __future__ import annotations

import dataclasses

import typer

from limamono.cli.common import fail, out

samplers_app = typer.Typer(help="Every sampler with its wire names per API dialect; the "
                           "presets (the card's `limamono` settings and others) and their cost.",
                           invoke_without_command=True)


@samplers_app.callback()
def samplers_cmd(ctx: typer.Context) -> None:
    """Without a subcommand: every sampler, its wire names per dialect and its order slot."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape
    from rich.table import Table

    from limamono.samplers.wire import CATALOG, wire_names

    table = Table("sampler", "textgen / OpenAI names", "KoboldCpp names",
                  "llama.cpp names (KoboldCpp rules)", "sampler_priority", "sampler_order")
    for label, fields, priority, order in CATALOG:
        names = [", ".join(n for f in fields for n in wire_names(f, dialect))
                 for dialect in ("textgen", "koboldcpp", "llamacpp")]
        if "sampler_order" in fields:  # llama.cpp's order is a list of names
            names[2] = "samplers (names), " + names[2]
        table.add_row(label, *(escape(n) for n in names), priority, order)
    out.print(table)


@samplers_app.command("list")
def list_cmd() -> None:
    """Print every preset with the settings that differ from 'off'."""
    from rich.table import Table

    from limamono.samplers import PRESETS, SamplerSettings

    off = SamplerSettings()
    table = Table("preset", "settings (others off)")
    for name, preset in PRESETS.items():
        changed = [f"{f.name}={getattr(preset, f.name)}" for f in dataclasses.fields(preset)
                   if getattr(preset, f.name) != getattr(off, f.name)]
        table.add_row(name, ", ".join(changed) or "(all off)")
    out.print(table)


@samplers_app.command("bench")
def bench_cmd(
    preset: str = typer.Option("limamono", "--preset", help="Preset to time."),
    dialect: str = typer.Option("", "--dialect", help="Override the preset's dialect: "
                                "'textgen' or 'koboldcpp'."),
    vocab: int = typer.Option(49152, "--vocab", min=3, help="Vocabulary size (SmolLM2: 49152)."),
    n: int = typer.Option(200, "--n", min=1, help="Calls to time."),
    context: int = typer.Option(4096, "--context", min=1, help="Context length in tokens."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: torch's "
                                "default)."),
) -> None:
    """Time one sampling step (penalties, filters, draw) on random logits; print the median."""
    import torch

    from limamono.samplers import SamplerError, bench_overhead, get_preset

    if threads:
        torch.set_num_threads(threads)
    try:
        settings = get_preset(preset)
        if dialect:
            settings = settings.replace(dialect=dialect)
    except SamplerError as exc:
        fail(str(exc))
    ms = bench_overhead(settings, vocab=vocab, n=n, context=context)
    out.print(f"{preset} ({settings.dialect}): {ms:.3f} ms per token (median of {n}; "
              f"vocab {vocab}, context {context}, {torch.get_num_threads()} threads)",
              soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `samplers` command group."""
    app.add_typer(samplers_app, name="samplers")
