"""A PEFT LoRA adapter as a GGUF LoRA file, so the llama.cpp engine can apply it at runtime.

llama.cpp loads LoRA adapters in its own GGUF layout (``llama_adapter_lora_init``): per
adapted weight ``blk.N.<name>.weight.lora_a`` [r, in] and ``.lora_b`` [out, r], metadata
``general.type = adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``; it scales
``B @ A`` by ``alpha / r`` like PEFT. The names and the q/k row permutation of the Llama
family follow llama.cpp's ``convert_hf_to_gguf.py``/``convert_lora_to_gguf.py`` (facts, not
code): its GGUF files store q_proj/k_proj rows reordered for its RoPE layout, so ``lora_b``
of those two is reordered the same way.

The converted file is cached under ``limamono_home()/lora`` by the adapter's content hash,
so the conversion (well under a second for the demo adapter) happens once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from limamono.models.resolve import ModelError, limamono_home

#: PEFT module path (after ``layers.N.``) -> llama.cpp tensor name.
_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")
#: Architectures whose GGUF q/k rows are permuted by the converter.
_PERMUTED = frozenset({"llama"})


def gguf_lora_for(adapter_dir: Path, base_gguf: Path) -> Path:
    """The GGUF LoRA file of a PEFT adapter for ``base_gguf`` (converted once, cached).

    Raises:
        limamono.models.resolve.ModelError: Not a plain LoRA adapter of supported modules.
    """
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors; fix: pass the folder "
                         "written by `limamono train`, or use --backend torch")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = limamono_home() / "lora" / f"{adapter_dir.name}-{digest}.gguf"
    if not target.is_file():  # written beside, then renamed: never half a file
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            convert(adapter_dir, base_gguf, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def convert(adapter_dir: Path, base_gguf: Path, out: Path) -> None:
    """Write ``adapter_dir``'s LoRA as a GGUF LoRA file at ``out``."""
    write_lora(adapter_dir, out, *_base_shape(base_gguf))


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


def check_adapter(adapter_dir: Path) -> None:
    """Raise :class:`~limamono.models.resolve.ModelError` unless llama.cpp can run this adapter."""
    _lora_config(adapter_dir)


def _lora_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the adapter config ({exc})") from exc
    problems = [name for name, bad in (
        ("peft_type", config.get("peft_type") != "LORA"), ("use_dora", config.get("use_dora")),
        ("rank_pattern", config.get("rank_pattern")),
        ("alpha_pattern", config.get("alpha_pattern")),
        ("modules_to_save", config.get("modules_to_save"))) if bad]
    if problems:
        raise ModelError(f"{path}: {', '.join(problems)} cannot run in llama.cpp as a plain "
                         "LoRA; fix: use --backend torch")
    return config


def _base_shape(base_gguf: Path) -> tuple[str, int, int]:
    """The base model's architecture, attention heads and KV heads, from its metadata."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))

    def value(key: str) -> Any:
        field = reader.get_field(key)
        if field is None:
            raise ModelError(f"{base_gguf}: no {key} in its metadata")
        return field.contents()

    arch = str(value("general.architecture"))
    heads = int(value(f"{arch}.attention.head_count"))
    kv = reader.get_field(f"{arch}.attention.head_count_kv")
    return arch, heads, int(kv.contents()) if kv is not None else heads


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
