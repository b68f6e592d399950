"""Weights memory of the embedded model as ``limamono train`` loads it: fp32 and 4-bit NF4
(double quantization, PEFT's k-bit preparation), against the rule docs/TRAINING.md uses for
a 7B base: linear layers 0.5 + 1/64 + 4/16384 bytes a parameter, the rest fp32.

    python bench/qlora_memory.py
"""

from __future__ import annotations

import time

import torch
from peft import prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from limamono.models.resolve import resolve_model

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


def main() -> None:
    path = resolve_model("smollm2-135m").path
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    total = sum(p.numel() for p in fp32.parameters())
    linear = sum(m.weight.numel() for name, m in fp32.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lm_head" not in name)
    print(f"fp32: {fp32.get_memory_footprint() / 1e6:.1f} MB ({total} parameters, "
          f"{linear} in linear layers)")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    started = time.perf_counter()
    four = prepare_model_for_kbit_training(AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=torch.float32, local_files_only=True),
        use_gradient_checkpointing=False)
    seconds = time.perf_counter() - started
    rule = linear * NF4_BYTES + (total - linear) * 4
    print(f"4-bit: {four.get_memory_footprint() / 1e6:.1f} MB (rule: {rule / 1e6:.1f} MB), "
          f"loaded and quantized in {seconds:.0f} s")


if __name__ == "__main__":
    main()
