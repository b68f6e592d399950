"""QLoRA (``load_in_4bit``): the config rule, the backend check, and 4-bit training end to
end on the tiny Mistral (the card's base architecture) with bitsandbytes' CPU library:
loss falls, eval and resume work as in 16/32-bit, and the adapter runs on both engines."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from limamono.train import ConfigError, make_config
from limamono.train.config import TrainConfig

PROMPT = 'Mira looked up from the lamp. "Who\'s there?"\n\n### Response: (length = long)\nMira:'


def write_data(root: Path, n: int, eval_n: int = 0) -> Path:
    from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n + eval_n):
        conv = Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", [
            Message("user", f"Hello {i}."),
            Message("char", f'Mira waved {i} times. "Come in."'),
        ])
        if i >= n:
            conv.meta["split"] = "eval"
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    return root


def qlora_config(tmp_path: Path, model: Path, data: Path, **kwargs: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": str(data), "model": str(model), "output_dir": str(tmp_path / "run"),
        "sequence_len": 128, "val": 0, "bf16": "false", "progress": False,
        "learning_rate": 1e-2, "lora_dropout": 0.0, "lr_scheduler": "constant",
        "warmup_steps": 0, "load_in_4bit": True, "report_to": "none"}
    values.update(kwargs)
    return make_config(values)


# --------------------------------------------------------------------------- config

def test_4bit_alone_turns_the_8bit_default_off(tmp_path):
    config = make_config({"data": str(tmp_path), "load_in_4bit": "true"})
    assert (config.load_in_4bit, config.load_in_8bit) == (True, False)
    assert make_config({"data": str(tmp_path)}).load_in_8bit is True  # the card's default


def test_4bit_and_8bit_together_are_refused_naming_both(tmp_path):
    with pytest.raises(ConfigError) as info:
        make_config({"data": str(tmp_path), "load_in_4bit": True, "load_in_8bit": True})
    assert info.value.problems == [
        "load_in_4bit and load_in_8bit: both are true, but the base model loads in one "
        "precision; fix: set load_in_8bit: false for QLoRA (4-bit), or load_in_4bit: false"]


def test_axolotls_adapter_qlora_is_lora_on_a_4bit_base(tmp_path):
    config = make_config({"data": str(tmp_path), "adapter": "qlora", "load_in_4bit": True})
    assert (config.adapter, config.load_in_4bit, config.load_in_8bit) == ("qlora", True, False)
    with pytest.raises(ConfigError) as info:
        make_config({"data": str(tmp_path), "adapter": "qlora"})
    assert info.value.problems == [
        "adapter: qlora needs load_in_4bit: true (Axolotl's rule: QLoRA is LoRA on a 4-bit "
        "base); fix: set load_in_4bit: true, or adapter: lora"]
    with pytest.raises(ConfigError) as info:
        make_config({"data": str(tmp_path), "adapter": "ia3"})
    assert info.value.problems == [
        "adapter: 'lora' or 'qlora' (Axolotl's name for LoRA on a 4-bit base), got 'ia3'"]


def test_the_axolotl_export_says_qlora(tmp_path):
    from limamono.train.sweep import axolotl_config

    config = make_config({"data": str(tmp_path), "load_in_4bit": True})
    exported = axolotl_config(config, "mistralai/Mistral-7B-v0.1")
    assert (exported["adapter"], exported["load_in_4bit"], exported["load_in_8bit"]) == (
        "qlora", True, False)
    plain = axolotl_config(make_config({"data": str(tmp_path)}), "x")
    assert (plain["adapter"], plain["load_in_4bit"], plain["load_in_8bit"]) == (
        "lora", False, True)


# --------------------------------------------------------------------------- backend

def test_without_bitsandbytes_the_error_names_the_option_and_the_fix(tmp_path, monkeypatch):
    from limamono.train import train

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    config = make_config({"data": str(tmp_path), "load_in_4bit": True,
                          "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError) as info:
        train(config)
    [problem] = info.value.problems
    assert problem.startswith("load_in_4bit: needs the bitsandbytes package, which does not "
                              "load here (ModuleNotFoundError: ")
    assert problem.endswith("fix: pip install 'bitsandbytes>=0.49' (one wheel carries the "
                            "CPU and CUDA libraries), or set load_in_4bit: false")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_bitsandbytes_without_a_library_for_this_device_is_named(monkeypatch):
    import bitsandbytes
    import bitsandbytes.functional as bnb_functional
    import torch

    from limamono.train.run import require_4bit_backend

    def no_backend(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("no kernel")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert require_4bit_backend() == device  # this machine has one
    monkeypatch.setattr(bnb_functional, "quantize_4bit", no_backend)
    with pytest.raises(ConfigError) as info:
        require_4bit_backend()
    assert info.value.problems == [
        f"load_in_4bit: bitsandbytes {bitsandbytes.__version__} cannot quantize on this "
        f"machine's {device} (NotImplementedError: no kernel); fix: install a bitsandbytes "
        "build for this device (pip install -U 'bitsandbytes>=0.49'), or set "
        "load_in_4bit: false"]


# --------------------------------------------------------------------------- end to end

def layer_recorder(seen: list[str]) -> object:
    """A Trainer callback that records which class the base's first q_proj is each step."""
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_end(self, args: object, state: object, control: object,
                        model: object = None, **kwargs: object) -> None:
            base = model.base_model.model  # type: ignore[union-attr]
            layer = base.model.layers[0].self_attn.q_proj.base_layer
            seen.append(f"{type(layer).__module__}.{type(layer).__name__}")

    return Record()


@pytest.mark.slow
def test_qlora_on_the_tiny_mistral_trains_evaluates_and_runs_on_both_engines(
        tmp_path, tiny_mistral_dir):
    import torch

    from limamono.engine import load_engine
    from limamono.samplers import get_preset
    from limamono.train import train

    data = write_data(tmp_path / "data", 1, eval_n=1)
    seen: list[str] = []
    result = train(qlora_config(tmp_path, tiny_mistral_dir, data, num_epochs=4),
                   callbacks=[layer_recorder(seen)], notify=lambda _: None)
    figures = result.manifest["figures"]
    losses = [loss for _, loss in figures["train_loss"]]
    assert figures["steps"] == 4 and losses[-1] < losses[0]
    assert len(figures["eval_loss"]) == 4  # eval each epoch, as in 16/32-bit
    assert seen == ["bitsandbytes.nn.modules.Linear4bit"] * 4
    assert result.manifest["precision"] == {"bf16": False, "load_in_8bit": False,
                                            "load_in_4bit": True}
    # Only the LoRA matrices train: r=8 on all 7 projections of the 2 layers.
    assert figures["trainable_params"] == 2 * 8 * (128 + 96 + 96 + 128 + 3 * 192)
    card = json.loads((result.adapter_dir / "limamono.json").read_text())
    assert card["training"]["load_in_4bit"] is True

    # torch engine: the adapter merges into the full-precision base (QLoRA's usual export).
    base = load_engine(str(tiny_mistral_dir), dtype="fp32", backend="torch")
    tuned = load_engine(str(tiny_mistral_dir), adapter=str(result.adapter_dir), dtype="fp32",
                        backend="torch")
    ids = tuned.fit_prompt(PROMPT, 4)
    with torch.inference_mode():
        before = base.model(torch.tensor([ids])).logits[0]
        after = tuned.model(torch.tensor([ids])).logits[0]
    assert not torch.allclose(before, after)
    done = tuned.generate(PROMPT, get_preset("greedy"), 4)
    assert done.completion_tokens in range(1, 5)

    # llama.cpp: the merged model exported to GGUF gives the torch logits and generates.
    from conftest import mistral_sentencepiece
    from limamono.models.gguf_export import export_gguf

    model_dir = tmp_path / "mistral"
    shutil.copytree(tiny_mistral_dir, model_dir)
    shutil.copy(mistral_sentencepiece(), model_dir / "tokenizer.model")
    out = tmp_path / "qlora.gguf"
    export_gguf(str(model_dir), str(result.adapter_dir), out)
    gguf_engine = load_engine(str(out), backend="llamacpp", threads=1, context_length=256)
    got = gguf_engine.generate(PROMPT, get_preset("greedy"), 4)
    assert got.completion_tokens in range(1, 5)
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, n_threads=1,
                          verbose=False, seed=0)
    llm.eval(ids)
    llama_logits = np.array(llm.scores[:len(ids)])
    # f16 weights + llama.cpp's f16 KV cache against fp32 torch (tests/test_export_gguf.py)
    assert np.abs(llama_logits - after.numpy()).max() < 0.03
    assert np.abs(llama_logits - before.numpy()).max() > 0.03  # and the adapter is in it


@pytest.mark.slow
def test_a_killed_qlora_run_resumes_to_the_same_adapter(tmp_path, tiny_mistral_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from limamono.train import train

    class Crash(TrainerCallback):
        def on_step_end(self, args: object, state: object, control: object,
                        **kwargs: object) -> None:
            if state.global_step == 3:  # type: ignore[attr-defined]
                raise KeyboardInterrupt("simulated kill")

    data = write_data(tmp_path / "data", 2)
    whole = qlora_config(tmp_path / "a", tiny_mistral_dir, data, num_epochs=2, save_steps=2,
                         lora_dropout=0.5)
    train(whole, notify=lambda _: None)
    broken = qlora_config(tmp_path / "b", tiny_mistral_dir, data, num_epochs=2,
                          save_steps=2, lora_dropout=0.5)
    with pytest.raises(KeyboardInterrupt):
        train(broken, callbacks=[Crash()], notify=lambda _: None)
    resumed = train(broken, resume=True, notify=lambda _: None)
    assert resumed.manifest["resumed_from"].endswith("checkpoint-2")
    a = load_file(str(Path(whole.output_dir) / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 28
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_lr_sweep_runs_in_4bit(tmp_path, tiny_mistral_dir):
    from limamono.train import lr_sweep

    data = write_data(tmp_path / "data", 1, eval_n=1)
    summary = lr_sweep(qlora_config(tmp_path, tiny_mistral_dir, data), [1e-4, 3e-2],
                       notify=lambda _: None)
    assert [r["learning_rate"] for r in summary["runs"]] == [1e-4, 3e-2]
    for run in summary["runs"]:
        manifest = json.loads((Path(run["output_dir"]) / "manifest.json").read_text())
        assert manifest["precision"]["load_in_4bit"] is True
        assert manifest["config"]["lr_scheduler"] == "constant"
