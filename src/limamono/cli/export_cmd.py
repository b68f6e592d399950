"""`limamono export gguf`: a trained model as one GGUF file for llama.cpp and KoboldCpp."""

from __future__ import annotations

from pathlib import Path

import typer

from limamono.cli.common import dim, err, fail, out, refuse_overwrite


def export_gguf_cmd(
    adapter: str = typer.Option(..., "--adapter", "-a", help="The PEFT LoRA adapter folder "
                                "(from `limamono train`), 'demo' for the bundled one, or "
                                "'none' to export the base alone."),
    output: Path = typer.Option(..., "--output", "-o", help="The .gguf file to write."),
    quant: str = typer.Option("f16", "--quant", "-q", help="f16, q8_0 or q4_k_m (quantized "
                              "by llama.cpp)."),
    lora_only: bool = typer.Option(False, "--lora-only", help="Write a GGUF LoRA adapter to "
                                   "load on top of the base model's GGUF (llama.cpp --lora, "
                                   "KoboldCpp --lora) instead of the merged model."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="The base model the "
                              "adapter was trained on: 'smollm2-135m' (embedded), an HF folder "
                              "or a cached hub id."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for "
                                       "llama.cpp's quantization."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Merge a LoRA adapter into its base and write a GGUF (f16, q8_0 or q4_k_m).

    The file holds the Limamono chat template and the adapter card's stop strings
    (`limamono.stop_strings`), so llama.cpp and KoboldCpp run it as it is. --lora-only writes
    the adapter alone (general.type adapter) for users who keep the base file. See
    docs/TRAINING.md, "Export as GGUF".
    """
    from limamono.models.gguf_export import ExportError, export_gguf
    from limamono.models.resolve import ModelError

    refuse_overwrite(output, force)
    try:
        result = export_gguf(model, None if adapter == "none" else adapter, output,
                             quant=quant, lora_only=lora_only, threads=threads,
                             progress=lambda line: err.print(dim(line)))
    except (ExportError, ModelError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{output}: cannot write it ({exc}); fix: choose a writable folder with space")
    size = result.path.stat().st_size / 1e6
    what = f"LoRA adapter, {result.tensors} tensors" if result.kind == "adapter" else \
        f"{result.quant}, {result.tensors} tensors, tokenizer: {result.tokenizer}"
    out.print(f"wrote {result.path} ({what}, {size:.1f} MB)")


def register(app: typer.Typer) -> None:
    """Add ``gguf`` to the ``export`` group (created by the train commands)."""
    from limamono.cli.train_cmd import export_app

    export_app.command("gguf")(export_gguf_cmd)
