"""Preference training (method dpo|orpo, TRL) on both tiny models: runs, reference, effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.dataset.prefs import build_prefs, read_prefs, write_prefs
from limamono.train import ConfigError, make_config


def swipe_chat(n: int) -> Conversation:
    """``n`` turns, each with a kept reply and a rejected one that speaks for the user."""
    messages = []
    for i in range(n):
        messages.append(Message("user", f"Hello {i}."))
        messages.append(Message("char", None, swipes=[
            Swipe(f"Mira waved {i} times. \"Come in.\""), Swipe(f"Tom sat down {i} times.")]))
    return Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", messages)


@pytest.fixture(scope="module", params=["smollm2", "mistral"])
def model_dir(request) -> Path:
    return request.getfixturevalue({"smollm2": "tiny_model_dir",
                                    "mistral": "tiny_mistral_dir"}[request.param])


def prefs_dir(root: Path, model: Path, n: int = 3) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    result = build_prefs([("chat", swipe_chat(n))], tokenizer)
    assert len(result.pairs) == n
    write_prefs(result, root / "prefs", tokenizer, str(model))
    return root / "prefs"


def sft_adapter(root: Path, model: Path) -> Path:
    """A LoRA adapter with non-zero B matrices (so it differs from the base model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft.save_pretrained(root / "sft")
    return root / "sft"


def config(root: Path, model: Path, data: Path, **kwargs):
    values = {"data": str(data), "model": str(model), "output_dir": str(root / "run"),
              "sequence_len": 256, "bf16": "false", "progress": False, "report_to": "none",
              "learning_rate": 2e-2, "lr_scheduler": "constant", "warmup_steps": 0,
              "max_steps": 4, "load_in_8bit": False}
    values.update(kwargs)
    return make_config(values)


def logratios(model: Path, adapter: Path, rows) -> list[float]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from limamono.train import pair_logratios

    return pair_logratios(PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model), adapter), rows)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_run_moves_every_pair_towards_the_chosen_reply(tmp_path, model_dir, method):
    """A few steps from the SFT adapter: the adapter is written without TRL's reference
    copy, it keeps the SFT adapter's LoRA shape, and log p(chosen) - log p(rejected) rises
    on every training pair."""
    from limamono.train import train

    data = prefs_dir(tmp_path, model_dir)
    start = sft_adapter(tmp_path, model_dir)
    messages: list[str] = []
    result = train(config(tmp_path, model_dir, data, method=method, sft_adapter=str(start)),
                   notify=messages.append)
    assert any(m.startswith(f"method {method}: starting from {start} (its LoRA: r 4, alpha 8")
               for m in messages)
    manifest = result.manifest
    assert manifest["method"] == method and manifest["figures"]["steps"] == 4
    assert manifest["data"]["train_pairs"] == 3
    assert len(manifest["figures"]["train_loss"]) == 4
    if method == "dpo":
        assert len(manifest["figures"]["preference"]["rewards/margins"]) == 4
    adapter = result.adapter_dir
    assert not (adapter / "ref").exists()
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["r"] == 4 and sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    card = json.loads((adapter / "limamono.json").read_text())
    assert card["training"]["method"] == method
    _, rows = read_prefs(data)
    before, after = logratios(model_dir, start, rows), logratios(model_dir, adapter, rows)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.slow
def test_dpo_without_an_sft_adapter_starts_a_new_lora(tmp_path, tiny_model_dir):
    from limamono.train import train

    data = prefs_dir(tmp_path, tiny_model_dir, 2)
    messages: list[str] = []
    result = train(config(tmp_path, tiny_model_dir, data, method="dpo", max_steps=2),
                   notify=messages.append)
    assert "method dpo: no sft_adapter, so a new LoRA starts from the base model (also the " \
        "reference)" in messages
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.slow
def test_killed_and_resumed_dpo_run_ends_with_the_same_adapter(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from limamono.train import train

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated kill")

    data = prefs_dir(tmp_path, tiny_model_dir, 2)
    start = sft_adapter(tmp_path, tiny_model_dir)
    whole = config(tmp_path / "a", tiny_model_dir, data, method="dpo", sft_adapter=str(start),
                   save_steps=2)
    train(whole)
    broken = config(tmp_path / "b", tiny_model_dir, data, method="dpo",
                    sft_adapter=str(start), save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(broken, callbacks=[Crash()])
    resumed = train(broken, resume=True)
    assert resumed.manifest["resumed_from"].endswith("checkpoint-2")
    a = load_file(str(Path(whole.output_dir) / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_preference_config_rules(tmp_path, tiny_model_dir):
    conversations = tmp_path / "conv"
    conversations.mkdir()
    with pytest.raises(ConfigError, match=r"data: method dpo trains on a preference set, and "
                       r".*conv is not one; fix: write one with `limamono data prefs"):
        config(tmp_path, tiny_model_dir, conversations, method="dpo")
    data = prefs_dir(tmp_path, tiny_model_dir, 1)
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, tiny_model_dir, data, sft_adapter=str(tmp_path), beta=0)
    assert caught.value.problems == [
        "beta: must be > 0, got 0.0",
        "sft_adapter: only a preference run (method: dpo or orpo) starts from an SFT "
        "adapter; fix: remove it or set method",
        f"data: {data} is a preference set (limamono data prefs); fix: set method: dpo or "
        "orpo, or point data at conversations"]
    with pytest.raises(ConfigError, match="method: 'kto' is not one of sft, dpo, orpo"):
        config(tmp_path, tiny_model_dir, data, method="kto")
    with pytest.raises(ConfigError, match=r"sft_adapter: .*: not an adapter folder"):
        config(tmp_path, tiny_model_dir, data, method="orpo", sft_adapter=str(tmp_path))


def test_pairs_from_another_tokenizer_or_trigger_are_refused(tmp_path, tiny_model_dir,
                                                             tiny_mistral_dir):
    from limamono.train import train

    data = prefs_dir(tmp_path, tiny_mistral_dir, 1)
    with pytest.raises(ConfigError) as caught:
        train(config(tmp_path, tiny_model_dir, data, method="dpo", trigger="preset",
                     sequence_len=16))
    problems = caught.value.problems
    assert problems[0].startswith(f"data: {data} was made with another tokenizer")
    assert problems[1] == (f"trigger: the config says 'preset' but {data} was made with "
                           "'card'; fix: make the pairs again with the run's value, or "
                           "change the config")
    assert problems[2].startswith(f"sequence_len: {data} holds a ")
    assert not (tmp_path / "run" / "adapter").exists()


def test_cli_refuses_a_sweep_of_a_preference_run(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from limamono.cli import app

    data = prefs_dir(tmp_path, tiny_model_dir, 1)
    run = tmp_path / "run.yaml"
    run.write_text(json.dumps({"data": str(data), "model": str(tiny_model_dir),
                               "method": "dpo"}))
    result = CliRunner().invoke(app, ["train", str(run), "--lr-sweep", "1e-4,2e-4"])
    assert result.exit_code == 2
    assert "--lr-sweep: the sweep trains SFT runs only, and method is dpo" in result.output
