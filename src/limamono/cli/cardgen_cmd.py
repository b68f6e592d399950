"""`limamono card generate`: a model drafts a character sheet, saved as a card for editing.

Registered on the cards group (``limamono.cli.card_cmd.card_app``); the logic is in
``limamono.dataset.draft``. The engine comes from ``chat_cmd.make_engine`` so the tests'
scripted engine covers this command too.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.panel import Panel
from rich.text import Text

from limamono.cli import chat_cmd
from limamono.cli.common import (
    FLASH_ATTN_OPTION,
    GPU_LAYERS_OPTION,
    KV_TYPE_OPTION,
    err,
    fail,
    llama_options,
    out,
    refuse_overwrite,
)

#: Card formats ``card generate`` writes, by extension.
OUTPUT_SUFFIXES = (".png", ".json", ".yaml", ".yml", ".txt")


def generate_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Where to save the card: .png or "
                                ".json (SillyTavern V2), .yaml (conversation header) or .txt "
                                "(sheet)."),
    name: str | None = typer.Option(None, "--name", help="The character's name (default: the "
                                    "model picks one)."),
    hint: str | None = typer.Option(None, "--hint", help="First lines of the sheet after the "
                                    "name, e.g. 'Occupation: ferry pilot' (\\n separates "
                                    "lines); the model carries on from there."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model: smollm2-135m (embedded), "
                              "a .gguf file (llama.cpp), an HF folder or a cached hub id."),
    adapter: str = typer.Option("demo", "--adapter", help="Adapter folder, 'demo' or 'none'."),
    preset: str = typer.Option("limamono", "--preset", help="Sampler preset."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for a repeatable draft."),
    max_tokens: int = typer.Option(400, "--max-tokens", min=1, help="Most tokens to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "model (default: the engine's choice)."),
    gpu_layers: str | None = GPU_LAYERS_OPTION,
    kv_type: str = KV_TYPE_OPTION,
    flash_attn: str = FLASH_ATTN_OPTION,
) -> None:
    """Draft a character sheet with the model and save it as a card (check it before use)."""
    from limamono.cards import CardError, export_card
    from limamono.dataset.draft import draft_report, draft_sheet

    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        fail(f"{output}: unknown card type {output.suffix or '(none)'!r} "
             f"(use one of {', '.join(OUTPUT_SUFFIXES)})")
    refuse_overwrite(output, force)
    if name is not None and (not name.strip() or "\n" in name):
        fail("--name must be one non-empty line")
    engine = chat_cmd.make_engine(model, None if adapter == "none" else adapter, threads,
                                  llama=llama_options(gpu_layers, kv_type, flash_attn))
    draft = draft_sheet(engine, chat_cmd.make_settings(preset, seed), name,
                        hint.replace("\\n", "\n") if hint else None, max_tokens)
    out.print(Panel(Text(draft.sheet or "(nothing)"), title="draft sheet (generated: check "
                    "every fact)", title_align="left"))
    for note in draft_report(draft):
        err.print(Text(f"warning: {note}", style="yellow"))
    if draft.parts is None or draft.parts.card is None:
        fail("nothing was saved; try another --seed or give a --name", code=1)
    try:
        export_card(draft.parts.card, output)
    except CardError as exc:
        fail(str(exc))
    out.print(f"saved the draft to {output}")


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the ``limamono card`` group."""
    from limamono.cli.card_cmd import card_app

    card_app.command("generate")(generate_cmd)
