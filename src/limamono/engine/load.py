"""``load_engine``, the one loader: a ``--model``/``--adapter``/``--backend`` choice to an engine.

The torch engine (:mod:`limamono.engine.torch_engine`) runs any transformers model; the
llama.cpp engine (:mod:`limamono.engine.llamacpp`) runs GGUF files. This module decides which
one a request gets and loads it; nothing else does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from limamono.engine.loop import EngineBase
from limamono.engine.torch_engine import DEFAULT_CACHE_ENTRIES, Engine
from limamono.models.resolve import (
    DEFAULT_MODEL,
    ModelError,
    ProgressFn,
    check_adapter_files,
    embedded_gguf,
    load_model,
    resolve_adapter,
    resolve_model,
)

__all__ = ["BACKENDS", "LlamaOptions", "choose_backend", "gguf_file", "load_engine"]


@dataclass(frozen=True)
class LlamaOptions:
    """How the llama.cpp engine runs a GGUF (ignored by the torch engine, which keeps one
    slot).

    Attributes:
        parallel: Slots: conversations decoded together, one batch per step.
        gpu_layers: Layers offloaded to a GPU; None: all when llama.cpp has a GPU backend.
        kv_type: KV-cache element type: f16, bf16, f32, q8_0 or q4_0.
        flash_attn: ``auto``, ``on`` or ``off``.
        state_dir: Where conversations' KV states are saved across restarts (None: not).
        state_cap_mb: Most MiB of saved states there.
    """

    parallel: int = 1
    gpu_layers: int | None = None
    kv_type: str = "f16"
    flash_attn: str = "auto"
    state_dir: Path | None = None
    state_cap_mb: int = 2048


#: ``--backend`` values: ``auto`` takes llama.cpp for GGUF files when it is installed.
BACKENDS: tuple[str, ...] = ("auto", "llamacpp", "torch")


def gguf_file(model: str) -> Path | None:
    """The GGUF file behind ``--model``: the embedded default's, a ``.gguf`` path, or None."""
    if model == DEFAULT_MODEL:
        return embedded_gguf()
    path = Path(model).expanduser()
    return path if path.suffix.lower() == ".gguf" else None


def choose_backend(model: str, adapter: str | os.PathLike[str] | None,
                   backend: str = "auto") -> str:
    """``torch`` or ``llamacpp`` for a ``--model``/``--adapter``/``--backend`` choice.

    ``auto`` is llama.cpp for a GGUF model (with no adapter, or a plain LoRA one, which
    is converted to a GGUF LoRA once) when llama-cpp-python is installed, torch otherwise.
    Training and loss evaluation always load torch.

    Raises:
        limamono.models.resolve.ModelError: ``llamacpp`` asked for what it cannot run.
    """
    from limamono.models.gguf_lora import check_adapter
    from limamono.models.llama_lib import llamacpp_available

    if backend not in BACKENDS:
        raise ModelError(f"--backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    gguf = gguf_file(model)
    if backend == "torch":
        _torch_can_load(model, gguf, "--backend torch")
        return "torch"
    if backend == "auto":
        if gguf is None:
            return "torch"
        if not llamacpp_available():
            _torch_can_load(model, gguf, "llama-cpp-python is not installed, and torch")
            return "torch"
        try:
            if adapter is not None:
                check_adapter(Path(adapter))
        except ModelError:
            if model != DEFAULT_MODEL:
                raise  # torch cannot load this .gguf either; the adapter's error says why
            return "torch"
        return "llamacpp"
    if gguf is None:
        raise ModelError(f"{model}: --backend llamacpp needs a .gguf file (or the embedded "
                         f"{DEFAULT_MODEL}); fix: pass a GGUF file or use --backend torch")
    if adapter is not None:
        check_adapter(Path(adapter))
    return "llamacpp"


def _torch_can_load(model: str, gguf: Path | None, who: str) -> None:
    """Refuse a .gguf file other than the embedded model's on torch (it converts only that)."""
    if gguf is not None and model != DEFAULT_MODEL:
        raise ModelError(f"{model}: {who} cannot load a .gguf file (only the embedded "
                         f"{DEFAULT_MODEL}, which it converts); fix: use --backend auto or "
                         "llamacpp (pip install llama-cpp-python), or pass an HF model folder")


def load_engine(model: str = DEFAULT_MODEL, adapter: str | os.PathLike[str] | None = None,
                dtype: str = "auto", threads: int | None = None,
                context_length: int | None = None, progress: ProgressFn | None = None,
                cache_entries: int = DEFAULT_CACHE_ENTRIES, backend: str = "auto",
                llama: LlamaOptions | None = None) -> EngineBase:
    """Resolve and load a model (and adapter) as an engine: torch or llama.cpp.

    Args:
        model: ``smollm2-135m`` (default), a ``.gguf`` file, a model folder or a cached
            hub id.
        adapter: None/"none", "demo" or a PEFT adapter folder (merged into the weights on
            torch; applied as a GGUF LoRA on llama.cpp).
        dtype: torch only: ``auto`` (:func:`limamono.models.resolve.choose_dtype`), ``bf16``,
            ``fp16`` or ``fp32``.
        threads: CPU threads.
        context_length: Override the model's context length.
        progress: Progress of the one-time conversion of the embedded model (torch).
        cache_entries: Conversations whose KV caches are kept.
        backend: ``auto``, ``llamacpp`` or ``torch`` (see :func:`choose_backend`).
        llama: Slots, GPU layers, KV type and flash attention of the llama.cpp engine.

    Raises:
        limamono.models.resolve.ModelError: The model or adapter cannot be loaded (names the fix).
    """
    adapter = resolve_adapter(adapter, model)
    if adapter is not None:
        check_adapter_files(Path(adapter))  # what both backends refuse, before any loading
    if choose_backend(model, adapter, backend) == "llamacpp":
        from limamono.engine.llamacpp import LlamaCppEngine
        from limamono.models.gguf_check import check_gguf
        from limamono.models.gguf_export import embedded_run_gguf
        from limamono.models.gguf_lora import gguf_lora_for

        # The embedded model runs re-quantized to 8 bits: faster prompt reading (gguf_export)
        path = embedded_run_gguf() if model == DEFAULT_MODEL else gguf_file(model)
        assert path is not None
        check_gguf(path)  # llama.cpp aborts the process on absurd metadata
        options = llama or LlamaOptions()
        return LlamaCppEngine(path, name=model if model == DEFAULT_MODEL else path.name,
                              context_length=context_length, cache_entries=cache_entries,
                              threads=threads,
                              lora=None if adapter is None else gguf_lora_for(adapter, path),
                              lora_name=None if adapter is None else Path(adapter).name,
                              parallel=options.parallel, gpu_layers=options.gpu_layers,
                              kv_type=options.kv_type, flash_attn=options.flash_attn,
                              state_dir=options.state_dir, state_cap_mb=options.state_cap_mb)
    spec = resolve_model(model, progress=progress)
    loaded, tokenizer = load_model(spec, adapter=adapter, dtype=dtype, threads=threads)
    return Engine(loaded, tokenizer, name=spec.name, context_length=context_length,
                  cache_entries=cache_entries)
