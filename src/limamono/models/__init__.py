"""Model files: resolving and loading models and adapters (``resolve``), token identity
(``tokens``), the adapter's own card (``adapter_card``), GGUF export (``gguf_export``), PEFT
LoRA adapters as GGUF LoRA files (``gguf_lora``) and the llama.cpp library they share
(``llama_lib``).

The names most callers need are importable from here; each module says the rest.
"""

from limamono.models.resolve import (
    DEFAULT_MODEL,
    ModelError,
    ModelSpec,
    limamono_home,
    list_models,
    load_model,
    load_tokenizer,
    resolve_adapter,
    resolve_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelError",
    "ModelSpec",
    "limamono_home",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_adapter",
    "resolve_model",
]
