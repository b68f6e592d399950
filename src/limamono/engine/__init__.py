"""The generation engine: the protocol every consumer takes (``protocol``), the one decode
loop with its text layers (``loop``, ``textstream``, ``phrasebans``), KV reuse
(``kvreuse``), the torch and llama.cpp engines (``torch_engine``, ``llamacpp``) and the one
loader that picks between them (``load``).

``load_engine`` and the protocol's names are importable from here. They are loaded on first
use (PEP 562), so importing a light module such as ``limamono.engine.textstream`` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limamono.engine.load import BACKENDS, choose_backend, gguf_file, load_engine
    from limamono.engine.loop import EngineBase
    from limamono.engine.protocol import Engine, TextChunk

__all__ = [
    "BACKENDS", "Engine", "EngineBase", "TextChunk", "choose_backend", "gguf_file",
    "load_engine",
]

_HOMES = {
    "BACKENDS": "load", "choose_backend": "load", "gguf_file": "load", "load_engine": "load",
    "EngineBase": "loop", "Engine": "protocol", "TextChunk": "protocol",
}


def __getattr__(name: str) -> Any:
    """Load a public name's module when the name is first used."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'limamono.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"limamono.engine.{home}"), name)
