"""PEFT LoRA adapters on the llama.cpp engine (converted to GGUF LoRA files) and --backend.

The conversion is checked against torch: the change an adapter makes to the next-token
logits (adapted minus base) must point the same way on llama.cpp (Q4_1 base) as on torch
(fp32 base, adapter merged). A q/k-only adapter proves the row permutation of the
Llama-family GGUF files: with it the two changes correlate at 0.96, without it at 0.21.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from limamono.engine import choose_backend
from limamono.models.resolve import ModelError

DEMO = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo"


def _adapter(folder: Path, **config: object) -> Path:
    folder.mkdir()
    base = json.loads((DEMO / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**base, **config}))
    return folder


def test_auto_takes_llamacpp_for_the_embedded_model_with_or_without_a_lora():
    assert choose_backend("smollm2-135m", None) == "llamacpp"
    assert choose_backend("smollm2-135m", DEMO) == "llamacpp"
    assert choose_backend("smollm2-135m", DEMO, "torch") == "torch"


def test_auto_falls_back_to_torch_and_llamacpp_refuses_what_it_cannot_run(tmp_path,
                                                                          tiny_model_dir):
    dora = _adapter(tmp_path / "dora", use_dora=True)
    assert choose_backend("smollm2-135m", dora) == "torch"
    with pytest.raises(ModelError, match=r"use_dora cannot run in llama\.cpp"):
        choose_backend("smollm2-135m", dora, "llamacpp")
    assert choose_backend(str(tiny_model_dir), None) == "torch"
    with pytest.raises(ModelError, match=r"needs a \.gguf file"):
        choose_backend(str(tiny_model_dir), None, "llamacpp")
    with pytest.raises(ModelError, match="must be one of auto, llamacpp, torch"):
        choose_backend("smollm2-135m", None, "cuda")


def test_conversion_is_cached_by_content(tmp_path, monkeypatch):
    from limamono.models.gguf_lora import gguf_lora_for
    from limamono.models.resolve import embedded_gguf

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path))
    first = gguf_lora_for(DEMO, embedded_gguf())
    stamp = first.stat().st_mtime_ns
    assert gguf_lora_for(DEMO, embedded_gguf()) == first
    assert first.stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "lora" and [p.name for p in first.parent.iterdir()] \
        == [first.name]


def _deltas(adapter: Path, lora_file: Path) -> tuple[object, object]:
    """(llama.cpp change, torch change) of the next-token logits the adapter makes."""
    import torch

    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf, load_model, resolve_model

    base = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1)
    adapted = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1, lora=lora_file)
    ids = base.tokenize((DEMO.parents[1] / "demo.yaml").read_text()[:600])
    llama = adapted.prompt_logits(ids) - base.prompt_logits(ids)
    spec = resolve_model("smollm2-135m")
    plain, _ = load_model(spec, dtype="fp32", threads=1)
    merged, _ = load_model(spec, adapter=str(adapter), dtype="fp32", threads=1)
    with torch.no_grad():
        x = torch.tensor([ids])
        torch_delta = merged(x).logits[0, -1] - plain(x).logits[0, -1]
    base.close()
    adapted.close()
    return llama, torch_delta


def _corr(a, b) -> float:
    import torch

    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.slow
def test_the_demo_adapter_changes_llamacpp_logits_as_it_changes_torch(tmp_path):
    from limamono.models.gguf_lora import convert
    from limamono.models.resolve import embedded_gguf

    convert(DEMO, embedded_gguf(), tmp_path / "demo.gguf")
    llama, torch_delta = _deltas(DEMO, tmp_path / "demo.gguf")
    assert _corr(llama, torch_delta) > 0.85  # measured 0.93 (Q4_1 base against fp32)


@pytest.mark.slow
def test_q_and_k_loras_need_the_row_permutation(tmp_path):
    from safetensors.torch import load_file, save_file

    from limamono.models.gguf_lora import convert
    from limamono.models.resolve import embedded_gguf

    qk = _adapter(tmp_path / "qk", target_modules=["q_proj", "k_proj"])
    tensors = {k: v.float() * (8 if "lora_B" in k else 1)  # strong enough to see past Q4
               for k, v in load_file(DEMO / "adapter_model.safetensors").items()
               if "q_proj" in k or "k_proj" in k}
    save_file(tensors, qk / "adapter_model.safetensors")
    convert(qk, embedded_gguf(), tmp_path / "qk.gguf")
    llama, torch_delta = _deltas(qk, tmp_path / "qk.gguf")
    assert _corr(llama, torch_delta) > 0.9  # measured 0.96; 0.21 without the permutation


def test_a_gguf_path_runs_on_llamacpp_from_the_cli():
    from typer.testing import CliRunner

    from limamono.cli import app
    from limamono.models.resolve import embedded_gguf

    path = str(embedded_gguf())
    assert choose_backend(path, None) == "llamacpp"
    result = CliRunner().invoke(app, ["generate", "--model", path, "--prompt", "The sea",
                                      "-n", "3", "--threads", "1", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and len(result.stdout) > 1


def test_torch_refuses_a_gguf_file_other_than_the_embedded_one_naming_the_fix(tmp_path):
    """Issue 21 item 6: `--backend torch` with a .gguf path used to fail deep in the loader
    while --help listed .gguf for --model; it now says which backend runs it."""
    from limamono.models.resolve import embedded_gguf

    path = str(embedded_gguf())  # a .gguf path (not the name smollm2-135m)
    with pytest.raises(ModelError, match=r"--backend torch cannot load a \.gguf file \(only "
                       r"the embedded smollm2-135m, which it converts\); fix: use --backend "
                       r"auto or llamacpp"):
        choose_backend(path, None, "torch")
    dora = _adapter(tmp_path / "dora", use_dora=True)
    with pytest.raises(ModelError, match=r"use_dora cannot run in llama\.cpp"):
        choose_backend(path, dora)  # neither backend can: the adapter's reason is given
    assert choose_backend("smollm2-135m", None, "torch") == "torch"
