#!/usr/bin/env bash
# GPU check of the llama.cpp engine, for a machine with an NVIDIA GPU and the CUDA toolkit.
#
# 1. Builds llama-cpp-python with CUDA into the project's venv (`make setup LLAMA_GPU=1`;
#    a venv that already has a CPU build is rebuilt).
# 2. Says whether llama.cpp sees the GPU, then runs the engine tests (the llama.cpp
#    contract, slots, n choices, saved states) with every layer on the GPU.
# 3. Prints decode tokens/s of one stream, and aggregate tokens/s with 1, 4 and 8 slots
#    busy at once (the embedded model; MODEL=path.gguf for another).
#
# Usage: bash bench/gpu_check.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
nvidia-smi -L
if ! $BIN/python -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' 2>/dev/null; then
    $BIN/python -m pip uninstall --quiet --yes llama-cpp-python || true
    rm -f .venv/.limamono-installed
    make setup LLAMA_GPU=1
fi
$BIN/python -c 'import llama_cpp; print("llama.cpp GPU offload:", bool(llama_cpp.llama_supports_gpu_offload()))'
$BIN/python -m pytest -q -x tests/test_engine_contract.py tests/test_slots.py \
    tests/test_server_slots.py tests/test_kvstore.py tests/test_contextshift.py
$BIN/python - <<'PY'
import os, threading, time
from limamono.engine.llamacpp import LlamaCppEngine
from limamono.models.resolve import embedded_gguf
from limamono.samplers import get_preset

model = os.environ.get("MODEL") or embedded_gguf()
TOKENS = 128
for slots in (1, 4, 8):
    engine = LlamaCppEngine(model, context_length=2048, parallel=slots, gpu_layers=-1)
    prompt = engine.prompt_ids("The lighthouse keeper climbed the stairs and")
    counts = [0] * slots

    def run(i):
        for _ in engine.stream_tokens(prompt, get_preset("greedy"), TOKENS):
            counts[i] += 1

    run(0)  # warm-up
    counts = [0] * slots
    threads = [threading.Thread(target=run, args=(i,)) for i in range(slots)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    print(f"{slots} slot(s): {sum(counts) / took:.1f} tok/s aggregate, "
          f"{counts[0] / took:.1f} tok/s per stream ({engine.steps} steps, "
          f"widest {engine.widest_step})")
    engine.close()
PY
