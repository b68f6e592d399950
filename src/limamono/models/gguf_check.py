"""Bounds on a GGUF file's model metadata, checked before llama.cpp reads it.

llama.cpp trusts the hyperparameters in a GGUF header: ``block_count = 2^31-1`` ends in a
``GGML_ASSERT`` abort that takes the process down (exit 134), and ``context_length = 2^31``
wraps to a negative int and is reported naming neither the file nor the key. Here the
header is read by ``gguf_header`` (metadata and tensor infos only, no weights) and
each count the model's shape rests on is checked against the tensors the file holds and
against plain bounds; an error names the file, the key and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from limamono.models.resolve import ModelError

#: Upper bounds well past any real model, far below where llama.cpp's int32 arithmetic
#: breaks (a 10M-token context is the largest published; 2^24 leaves room).
MAX_CONTEXT = 2**24
MAX_BLOCKS = 4096
MAX_WIDTH = 2**20


def _fail(path: Path, key: str, value: Any, why: str) -> ModelError:
    return ModelError(f"{path}: metadata {key} = {value} {why}; the file is damaged or not a "
                      "model llama.cpp can load; fix: download or convert it again")


def check_gguf(path: Path) -> None:
    """Refuse a GGUF model whose metadata llama.cpp would crash or misread on.

    Checked, for the file's ``general.architecture``: ``block_count`` (1 to
    :data:`MAX_BLOCKS`, and equal to the number of ``blk.N`` layers among its tensors),
    ``context_length`` (1 to :data:`MAX_CONTEXT`), ``embedding_length``,
    ``feed_forward_length`` and the head counts (1 to :data:`MAX_WIDTH`; the KV heads
    divide the heads). Files that are adapters (``general.type = adapter``) are not models
    and are left alone.

    Raises:
        ModelError: naming the file, the key, the value and why.
    """
    from limamono.models.gguf_header import GGUFHeaderError, read_header

    try:
        header = read_header(path)
    except (OSError, GGUFHeaderError) as exc:
        raise ModelError(f"{path}: not a readable GGUF file ({exc}); fix: download or "
                         "convert it again") from exc
    value = header.metadata.get

    if value("general.type") == "adapter":
        return
    arch = value("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path}: no general.architecture in its metadata; fix: download or "
                         "convert it again")
    bounds = {"block_count": MAX_BLOCKS, "context_length": MAX_CONTEXT,
              "embedding_length": MAX_WIDTH, "feed_forward_length": MAX_WIDTH,
              "attention.head_count": MAX_WIDTH, "attention.head_count_kv": MAX_WIDTH}
    found: dict[str, int] = {}
    for name, bound in bounds.items():
        key = f"{arch}.{name}"
        number = value(key)
        if number is None:
            continue
        # per-layer head counts are lists (some architectures)
        numbers = number if isinstance(number, list) else [number]
        for item in numbers:
            if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= bound:
                raise _fail(path, key, item, f"is out of bounds (must be 1 to {bound})")
        if not isinstance(number, list):
            found[name] = number
    layers = {int(name.split(".")[1]) for name in header.tensors
              if name.startswith("blk.") and name.split(".")[1].isdigit()}
    blocks = found.get("block_count")
    if blocks is not None and layers and blocks != max(layers) + 1:
        raise _fail(path, f"{arch}.block_count", blocks,
                    f"does not match the {max(layers) + 1} layers (blk.N tensors) it holds")
    heads, kv = found.get("attention.head_count"), found.get("attention.head_count_kv")
    if heads and kv and heads % kv:
        raise _fail(path, f"{arch}.attention.head_count_kv", kv,
                    f"does not divide attention.head_count {heads}")
