"""A PEFT LoRA adapter as a GGUF LoRA file, so the llama.cpp engine can apply it at runtime.

llama.cpp loads LoRA adapters in its own GGUF layout (``llama_adapter_lora_init``): per
adapted weight ``blk.N.<name>.weight.lora_a`` [r, in] and ``.lora_b`` [out, r], metadata
``general.type = adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``; it scales
``B @ A`` by ``alpha / r`` like PEFT. The names and the q/k row permutation of the Llama
family follow llama.cpp's ``convert_hf_to_gguf.py``/``convert_lora_to_gguf.py`` (facts, not
code): its GGUF files store q_proj/k_proj rows reordered for its RoPE layout, so ``lora_b``
of those two is reordered the same way.

The converted file is cached under ``limamono_home()/lora``, named by a hash of everything
that shapes it: the weights, ``adapter_config.json`` (``lora_alpha``, ``use_rslora``, ...),
the base's architecture and head counts, and the converter's version; so the conversion
(well under a second for the demo adapter) happens once, and an edited config never serves
a stale file. Before a file is used, every LoRA tensor's shape is checked against the base
GGUF's weight it adapts (an error names the adapter and the tensor), and an adapter recorded
as trained on another model than the GGUF's gets a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limamono.models.resolve import (
    ModelError,
    check_adapter_files,
    limamono_home,
    read_adapter_config,
)

#: PEFT module path (after ``layers.N.``) -> llama.cpp tensor name.
_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")
#: Architectures whose GGUF q/k rows are permuted by the converter.
_PERMUTED = frozenset({"llama"})
#: Raised whenever the converter's output changes, so older cached files are not reused.
CONVERTER_VERSION = 2


@dataclass(frozen=True)
class BaseInfo:
    """What a conversion needs of the base GGUF: architecture, head counts, the shapes of
    its weights (GGUF order: ``[in, out]``) and the names it goes by."""

    arch: str
    heads: int
    kv_heads: int
    shapes: dict[str, tuple[int, ...]]
    names: tuple[str, ...]


def cache_key(adapter_dir: Path, base: BaseInfo) -> str:
    """SHA-256 over everything that shapes the converted file (see the module docstring)."""
    digest = hashlib.sha256(f"limamono-gguf-lora {CONVERTER_VERSION}\0".encode())
    digest.update(json.dumps([base.arch, base.heads, base.kv_heads]).encode() + b"\0")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        data = (adapter_dir / name).read_bytes()
        digest.update(f"{name} {len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def gguf_lora_for(adapter_dir: Path, base_gguf: Path) -> Path:
    """The GGUF LoRA file of a PEFT adapter for ``base_gguf`` (converted once, cached).

    Raises:
        limamono.models.resolve.ModelError: Not a plain LoRA adapter of supported modules,
            or its tensors do not fit the base model (naming the adapter and the tensor).
    """
    check_adapter_files(adapter_dir)
    config = check_adapter(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors; fix: pass the folder "
                         "written by `limamono train`, or use --backend torch")
    base = base_info(base_gguf)
    check_shapes(adapter_dir, base, base_gguf)
    warn_other_base(adapter_dir, config, base, base_gguf)
    digest = cache_key(adapter_dir, base)[:16]
    target = limamono_home() / "lora" / f"{adapter_dir.name}-{digest}.gguf"
    if not target.is_file():  # written beside, then renamed: never half a file
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write_lora(adapter_dir, tmp, base.arch, base.heads, base.kv_heads)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def convert(adapter_dir: Path, base_gguf: Path, out: Path) -> None:
    """Write ``adapter_dir``'s LoRA as a GGUF LoRA file at ``out``."""
    base = base_info(base_gguf)
    check_shapes(adapter_dir, base, base_gguf)
    write_lora(adapter_dir, out, base.arch, base.heads, base.kv_heads)


def check_shapes(adapter_dir: Path, base: BaseInfo, base_gguf: Path) -> None:
    """Every LoRA pair must fit the base weight it adapts: ``A`` is ``[r, in]``, ``B`` is
    ``[out, r]`` for a GGUF weight of shape ``[in, out]`` (read from the headers only).

    Raises:
        ModelError: naming the adapter, the tensor, both shapes and the fix.
    """
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "np") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    ranks: dict[str, int] = {}
    for key, shape in sorted(shapes.items()):
        match = _KEY.match(key)
        if match is None or match.group(2) not in _NAMES:
            continue  # write_lora names what it cannot convert
        layer, module, side = match.groups()
        name = f"blk.{layer}.{_NAMES[module]}.weight"
        target = base.shapes.get(name)
        problem = None
        if target is None:
            problem = f"the model has no {name}"
        elif len(shape) != 2 or len(target) != 2:
            problem = f"expected a matrix, got shape {list(shape)}"
        elif side == "A" and shape[1] != target[0]:
            problem = f"shape {list(shape)}: its {shape[1]} inputs do not match {target[0]}"
        elif side == "B" and shape[0] != target[1]:
            problem = f"shape {list(shape)}: its {shape[0]} outputs do not match {target[1]}"
        elif ranks.setdefault(f"{layer}.{module}", shape[0 if side == "A" else 1]) != \
                shape[0 if side == "A" else 1]:
            problem = f"shape {list(shape)}: its rank differs from its pair's"
        if problem:
            raise ModelError(f"{adapter_dir}: tensor {key} ({problem}) does not fit "
                             f"{base_gguf.name}; the adapter was trained for another model; fix: "
                             "pass --model with its base model, or train an adapter for "
                             "this one")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def warn_other_base(adapter_dir: Path, config: dict[str, Any], base: BaseInfo,
                    base_gguf: Path) -> None:
    """Warn when the adapter records a base whose name does not match the GGUF's
    (``general.basename`` and ``general.size_label``, or ``general.name``)."""
    recorded = str(config.get("base_model_name_or_path") or "")
    if not recorded or not base.names:
        return
    tail = _squash(Path(recorded).name)
    if all(_squash(n) in tail for n in base.names):
        return
    warnings.warn(f"{adapter_dir}: trained on {recorded!r}, applied to {base_gguf.name} "
                  f"({' '.join(base.names)}); the shapes fit, but check that this is the "
                  "intended base model", stacklevel=3)


def write_lora(adapter_dir: Path, out: Path, arch: str, heads: int, kv_heads: int,
               metadata: Callable[[Any], None] | None = None) -> int:
    """Write ``adapter_dir``'s LoRA as a GGUF LoRA for a base of ``arch`` with ``heads``
    attention and ``kv_heads`` KV heads; returns the number of tensors written.

    ``metadata(writer)`` may add keys of its own (``limamono export gguf --lora-only``
    adds the card's); a base GGUF file is not needed.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = _lora_config(adapter_dir)
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):  # PEFT scales by alpha / sqrt(r); llama.cpp by alpha / r
        alpha *= float(config["r"]) ** 0.5
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    if metadata is not None:
        metadata(writer)
    tensors = _load_fp32(adapter_dir / "adapter_model.safetensors", load_file)
    for key in sorted(tensors):
        match = _KEY.match(key)
        if match is None or match.group(2) not in _NAMES:
            raise ModelError(f"{adapter_dir}: tensor {key} is not a LoRA weight of an "
                             "attention or MLP projection; fix: use --backend torch")
        layer, module, side = match.groups()
        value = tensors[key]
        if side == "B" and arch in _PERMUTED and module in ("self_attn.q_proj",
                                                            "self_attn.k_proj"):
            value = permute_rope_rows(value, heads if module.endswith("q_proj") else kv_heads)
        name = f"blk.{layer}.{_NAMES[module]}.weight.lora_{side.lower()}"
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(tensors)


def check_adapter(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config; raise :class:`~limamono.models.resolve.ModelError` unless
    llama.cpp can run this adapter."""
    return _lora_config(adapter_dir)


def _lora_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    config = read_adapter_config(adapter_dir)
    problems = [name for name, bad in (
        ("peft_type", config.get("peft_type") != "LORA"), ("use_dora", config.get("use_dora")),
        ("rank_pattern", config.get("rank_pattern")),
        ("alpha_pattern", config.get("alpha_pattern")),
        ("modules_to_save", config.get("modules_to_save"))) if bad]
    if problems:
        raise ModelError(f"{path}: {', '.join(problems)} cannot run in llama.cpp as a plain "
                         "LoRA; fix: use --backend torch")
    return config


def base_info(base_gguf: Path) -> BaseInfo:
    """The base model's architecture, head counts, weight shapes and names (metadata only).

    Raises:
        ModelError: not a readable GGUF file, or a key is missing.
    """
    from limamono.models.gguf_header import GGUFHeaderError, read_header

    try:
        header = read_header(base_gguf)
    except (OSError, GGUFHeaderError) as exc:
        raise ModelError(f"{base_gguf}: not a readable GGUF file ({exc})") from exc

    def value(key: str) -> Any:
        if key not in header.metadata:
            raise ModelError(f"{base_gguf}: no {key} in its metadata")
        return header.metadata[key]

    arch = str(value("general.architecture"))
    heads = int(value(f"{arch}.attention.head_count"))
    kv = header.metadata.get(f"{arch}.attention.head_count_kv", heads)
    names = tuple(str(header.metadata[k]) for k in ("general.basename", "general.size_label")
                  if isinstance(header.metadata.get(k), str))
    return BaseInfo(arch, heads, int(kv), dict(header.tensors), names)


def _load_fp32(path: Path, load_file: Any) -> dict[str, Any]:
    """The adapter's tensors as float32 numpy arrays (bf16 is read through torch)."""
    try:
        return {k: v.astype("float32") for k, v in load_file(str(path)).items()}
    except (TypeError, ValueError):  # numpy has no bfloat16
        from safetensors.torch import load_file as load_torch

        return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}


def permute_rope_rows(rows: Any, heads: int) -> Any:
    """Reorder the output rows of a q/k projection as llama.cpp's converter does.

    Per head, Hugging Face keeps the two halves of the rotary pairs apart (rotate-half);
    llama.cpp wants each pair adjacent. ``rows`` is ``[heads * head_dim, ...]`` (a weight or
    a LoRA B; numpy or torch).
    """
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))
