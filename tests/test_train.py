"""Training: config validation, collator, runs on the tiny model, resume, sweep, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from limamono import dataset as ds
from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml
from limamono.train import ConfigError, TrainConfig, load_config, make_config, parse_overrides
from limamono.train.data import RUN_DATA_DIR

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- config

def test_defaults_are_the_card_recipe():
    c = TrainConfig()
    assert (c.model, c.adapter, c.lora_r, c.lora_alpha, c.lora_dropout) == (
        "smollm2-135m", "lora", 8, 16, 0.5)
    assert c.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"]
    assert (c.sequence_len, c.sample_packing, c.pad_to_sequence_len) == (4096, False, True)
    assert (c.micro_batch_size, c.gradient_accumulation_steps, c.num_epochs) == (1, 1, 3)
    assert (c.optimizer, c.lr_scheduler, c.learning_rate, c.weight_decay) == (
        "adamw_torch", "cosine", 2e-4, 0.1)
    assert (c.train_on_inputs, c.bf16, c.load_in_8bit, c.warmup_steps) == (
        False, "auto", True, None)


def test_cli_overrides_file_overrides_defaults(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "run.yaml"
    path.write_text("data: data\nlearning_rate: 2e-4\nlora_r: 4\nbf16: false\n")
    c = load_config(path, parse_overrides(["--lora-r", "16", "--lora-alpha=32",
                                           "--train-on-inputs", "--seed", "7"]))
    assert c.data == str(tmp_path / "data")  # relative to the config file
    assert (c.lora_r, c.lora_alpha, c.train_on_inputs, c.seed) == (16, 32, True, 7)
    assert c.learning_rate == 2e-4 and isinstance(c.learning_rate, float)
    assert c.bf16 == "false" and c.num_epochs == 3


def test_invalid_config_lists_every_problem(tmp_path):
    with pytest.raises(ConfigError) as info:
        make_config({"data": str(tmp_path), "lora_rank": 8, "lora_r": "eight",
                     "lora_dropout": 1.5, "optimizer": "adamw_torh", "num_epochs": 0,
                     "sample_packing": True, "bf16": "maybe"})
    assert info.value.problems == [
        "lora_rank: unknown key; did you mean 'lora_r'?",
        "lora_r: expected an integer, got 'eight'",
        "lora_dropout: must be in [0, 1), got 1.5",
        "sample_packing: not implemented (the card trains without it); fix: set false",
        "num_epochs: must be >= 1, got 0",
        "bf16: 'maybe' is not one of auto, true, false",
        "optimizer: 'adamw_torh' is not one of adamw_torch, adamw_torch_fused, "
        "adamw_torch_xla, adamw_torch_npu_fused, adafactor, adamw_anyprecision, "
        "adamw_torch_4bit, adamw_torch_8bit, ... (did you mean 'adamw_torch'?)",
    ]


def test_missing_data_is_reported():
    with pytest.raises(ConfigError) as info:
        make_config({"data": "/nonexistent/dir"})
    assert info.value.problems[0].startswith("data: /nonexistent/dir: no such folder")
    with pytest.raises(ConfigError, match="data: required"):
        make_config({})


def test_warmup_follows_axolotls_default_rule():
    from limamono.train.run import total_steps, warmup_steps

    c = TrainConfig(num_epochs=3)
    assert total_steps(c, 47) == 141 and warmup_steps(c, 47) == 4
    assert warmup_steps(TrainConfig(warmup_steps=0), 47) == 0
    assert warmup_steps(TrainConfig(num_epochs=3), 5000) == 100


@pytest.mark.parametrize(("flags", "bf16", "why"), [
    (("avx2",), False, ""), (("avx512_bf16", "amx_bf16"), True, ""),
    (("avx512_bf16",), False, ", but without AMX a bf16 training step measured slower")])
def test_bf16_auto_follows_the_dtype_rule(flags, bf16, why, tmp_path, monkeypatch):
    """Training takes the inference rule, except that AVX512-BF16 without AMX trains in
    fp32 (a step measured 1.5x slower in bf16 there)."""
    from limamono.models import resolve as models
    from limamono.train.run import precision

    if models.detect_hardware().cuda:
        pytest.skip("CUDA decides before the CPU")
    monkeypatch.setattr(models, "detect_hardware", lambda: models.Hardware(
        False, False, "AVX512", frozenset(flags)))
    messages: list[str] = []
    config = make_config({"data": str(tmp_path), "load_in_8bit": False})
    assert precision(config, messages.append) == (bf16, False)
    reason = models.choose_dtype("auto").reason
    assert messages == [f"bf16: auto means {'bf16' if bf16 else 'fp32'} here ({reason}{why})"]
    forced = make_config({"data": str(tmp_path), "load_in_8bit": False, "bf16": "false"})
    assert precision(forced, messages.append) == (False, False)


def test_pad_collator_pads_to_sequence_len_or_longest():
    from limamono.train import PadCollator

    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = PadCollator(2, pad_to=6)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 2, 2], [8, 2, 2, 2, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100, -100],
                                        [8, -100, -100, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert PadCollator(2)(rows)["input_ids"].shape == (2, 3)


# --------------------------------------------------------------------------- tiny runs

def tiny_conversation(i: int) -> Conversation:
    return Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", [
        Message("user", f"Hello {i}."),
        Message("char", f"Mira waved {i} times. \"Come in.\""),
    ])


def write_data(root: Path, n: int, eval_n: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n + eval_n):
        conv = tiny_conversation(i)
        if i >= n:
            conv.meta["split"] = "eval"
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    return root


def tiny_config(tmp_path: Path, model: Path, data: Path, **kwargs) -> TrainConfig:
    values = {"data": str(data), "model": str(model), "output_dir": str(tmp_path / "run"),
              "sequence_len": 96, "val": 0, "bf16": "false", "progress": False,
              "learning_rate": 1e-2}
    values.update(kwargs)
    return make_config(values)


def test_loss_falls_and_every_file_is_written(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from limamono.train import train

    data = write_data(tmp_path / "data", 1, eval_n=1)
    config = tiny_config(tmp_path, tiny_model_dir, data, num_epochs=4, lora_dropout=0.0,
                         lr_scheduler="constant", warmup_steps=0, adapter_dtype="bf16")
    messages = []
    result = train(config, notify=messages.append)
    figures = result.manifest["figures"]
    losses = [loss for _, loss in figures["train_loss"]]
    assert figures["steps"] == 4 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.05
    assert len(figures["eval_loss"]) == 4  # one per epoch
    assert figures["trainable_params"] == 2 * (8 * (32 + 32) * 2 + 8 * (32 + 16) * 2
                                               + 8 * (32 + 64) * 3)
    assert any(m.startswith("load_in_8bit: CUDA is not available") for m in messages)
    out = result.output_dir
    for name in ("loss.png", "manifest.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/limamono.json",
                 "adapter/tokenizer_config.json", "data/stats.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "adapter" / "limamono.json").read_text())
    assert meta["format_version"] == fmt.FORMAT_VERSION and meta["trigger"] == "card"
    assert meta["sampler_preset"]["name"] == "limamono"
    assert meta["training"]["lora_r"] == 8
    assert set(result.manifest["versions"]) >= {"torch", "transformers", "peft"}
    # transformers reads the adapter folder's chat template and renders the Limamono format.
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    conv = tiny_conversation(0)
    assert tok.apply_chat_template(fmt.to_chat_messages(conv), tokenize=False) == \
        fmt.render(conv)
    assert json.loads((out / "adapter" / "tokenizer_config.json").read_text())[
        "chat_template"] == fmt.chat_template()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      out / "adapter")
    assert model.peft_config["default"].r == 8


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_killed_and_resumed_run_ends_with_the_same_adapter(tmp_path, tiny_model_dir):
    """Interrupted after step 3 (checkpoint at 2), resumed: equal to an uninterrupted run
    within 1e-5 in fp32 (LoRA dropout 0.5 included, so the RNG state is restored too; on
    this machine the two are bit-identical)."""
    import torch
    from transformers import TrainerCallback

    from limamono.train import COMPLETE, latest_checkpoint, train

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated kill")

    data = write_data(tmp_path / "data", 2)
    whole = tiny_config(tmp_path / "a", tiny_model_dir, data, num_epochs=2, save_steps=2)
    train(whole)
    broken = tiny_config(tmp_path / "b", tiny_model_dir, data, num_epochs=2, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(broken, callbacks=[Crash()])
    checkpoints = Path(broken.output_dir) / "checkpoints"
    (checkpoints / "checkpoint-99").mkdir()  # a half-written one: no marker, ignored
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    assert (checkpoints / "checkpoint-2" / COMPLETE).is_file()
    resumed = train(broken, resume=True)
    assert resumed.manifest["resumed_from"].endswith("checkpoint-2")
    a = _adapter_tensors(Path(whole.output_dir) / "adapter")
    b = _adapter_tensors(resumed.adapter_dir)
    assert a.keys() == b.keys() and len(a) == 28
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)  # it did train


def test_lr_sweep_picks_the_lowest_eval_loss(tmp_path, tiny_model_dir):
    from limamono.train import lr_sweep

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = tiny_config(tmp_path, tiny_model_dir, data, lora_dropout=0.0)
    summary = lr_sweep(config, [1e-4, 3e-2])
    losses = {r["learning_rate"]: r["eval_loss"] for r in summary["runs"]}
    assert summary["best_learning_rate"] == min(losses, key=losses.get)
    out = Path(config.output_dir)
    assert (out / "lr_sweep.png").is_file()
    assert json.loads((out / "lr_sweep.json").read_text())["runs"][1]["learning_rate"] == 3e-2
    manifest = json.loads((out / "lr-sweep" / "lr-0.03" / "manifest.json").read_text())
    assert manifest["config"]["lr_scheduler"] == "constant"
    assert manifest["config"]["num_epochs"] == 1


@pytest.mark.parametrize(("rates", "best", "note"), [
    ([1e-3, 2e-3], 2e-3, "0.002 is the highest rate tried, so the lowest eval loss may lie "
                         "above it; try 0.004 too"),
    ([5e-4, 1e-3, 2e-3], 5e-4, "0.0005 is the lowest rate tried, so the lowest eval loss "
                               "may lie below it; try 0.00025 too"),
    ([5e-4, 1e-3, 2e-3], 1e-3, None),
    ([1e-3], 1e-3, None),
])
def test_sweep_says_when_the_best_rate_is_at_the_edge(rates, best, note):
    from limamono.train.sweep import edge_note

    assert edge_note(rates, best) == note


def test_resumed_lr_sweep_reuses_finished_rates_and_trains_the_rest(tmp_path, tiny_model_dir):
    """A sweep started again with resume reads a finished rate from its manifest (not
    trained again) and trains the missing one; a finished run whose config differs is
    trained again."""
    from limamono.train import lr_sweep

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = tiny_config(tmp_path, tiny_model_dir, data, lora_dropout=0.0)
    first = lr_sweep(config, [1e-4])
    done = Path(config.output_dir) / "lr-sweep" / "lr-0.0001" / "manifest.json"
    before = done.read_bytes()
    said: list[str] = []
    summary = lr_sweep(config, [1e-4, 3e-2], notify=said.append, resume=True)
    assert done.read_bytes() == before
    assert [r["learning_rate"] for r in summary["runs"]] == [1e-4, 3e-2]
    assert summary["runs"][0]["eval_loss"] == first["runs"][0]["eval_loss"]
    assert (Path(config.output_dir) / "lr-sweep" / "lr-0.03" / "manifest.json").is_file()
    assert [s for s in said if "finished earlier" in s] == [
        f"lr 0.0001: finished earlier, read from {done.parent}/manifest.json"]
    stale = json.loads(before)
    stale["config"]["lora_r"] = 4
    done.write_text(json.dumps(stale))
    said.clear()
    lr_sweep(config, [1e-4], notify=said.append, resume=True)
    assert not [s for s in said if "finished earlier" in s]
    assert json.loads(done.read_text())["config"]["lora_r"] == 8


def test_export_axolotl_writes_config_and_pretokenized_rows(tmp_path, tiny_model_dir):
    from limamono.train import export_axolotl

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = tiny_config(tmp_path, tiny_model_dir, data)
    path = export_axolotl(config, tmp_path / "axo")
    cfg = yaml.safe_load(path.read_text())
    assert cfg["datasets"] == [{"path": "train.jsonl", "ds_type": "json"}]  # no type:
    assert cfg["test_datasets"][0]["path"] == "eval.jsonl" and cfg["val_set_size"] == 0
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 16, 0.5)
    assert (cfg["sequence_len"], cfg["pad_to_sequence_len"], cfg["sample_packing"]) == (
        96, True, False)
    assert cfg["lora_target_modules"] == list(TrainConfig().lora_target_modules)
    assert (cfg["optimizer"], cfg["lr_scheduler"], cfg["learning_rate"]) == (
        "adamw_torch", "cosine", 1e-2)
    assert "warmup_steps" not in cfg  # Axolotl's default rule, as limamono train applies
    rows = [json.loads(r) for r in (tmp_path / "axo" / "train.jsonl").read_text().splitlines()]
    tokenized = ds.read_tokenized(tmp_path / "axo" / RUN_DATA_DIR, "train")
    assert len(rows) == len(tokenized) == 2
    for row, tok_row in zip(rows, tokenized, strict=True):
        assert set(row) == {"input_ids", "attention_mask", "labels"}  # exactly, for Axolotl
        assert (row["input_ids"], row["labels"]) == (tok_row["input_ids"], tok_row["labels"])
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert (tmp_path / "axo" / "stats.json").is_file()


def test_cli_train_rejects_a_bad_config_before_loading(tmp_path):
    from limamono.cli import app

    path = tmp_path / "bad.yaml"
    path.write_text("data: nowhere\nlora_rank: 4\n")
    result = CliRunner().invoke(app, ["train", str(path), "--lora-dropout", "2"])
    assert result.exit_code == 2
    assert "lora_rank: unknown key; did you mean 'lora_r'?" in result.output
    assert "lora_dropout: must be in [0, 1), got 2.0" in result.output
    assert "data: " in result.output
    for cmd in (["train", "--help"], ["export", "axolotl", "--help"]):
        assert CliRunner().invoke(app, cmd).exit_code == 0


# --------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_accelerate_launch_single_process(tmp_path, tiny_model_dir):
    data = write_data(tmp_path / "data", 2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": str(data), "model": str(tiny_model_dir),
                                    "output_dir": str(tmp_path / "run"), "sequence_len": 96,
                                    "val": 0, "bf16": "false", "num_epochs": 1,
                                    "progress": False}))
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(launcher), "launch", "--num_processes", "1", "--num_machines",
                           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
                           "--num_cpu_threads_per_process", "2",
                           "-m", "limamono", "train", str(path)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["figures"]["steps"] == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_embedded_model_trains_and_loads_as_adapter(tmp_path):
    from limamono.models.resolve import load_model, resolve_model
    from limamono.train import train

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = make_config({"data": str(data), "output_dir": str(tmp_path / "run"),
                          "sequence_len": 128, "max_steps": 2, "progress": False})
    result = train(config)
    figures = result.manifest["figures"]
    assert figures["steps"] == 2 and figures["trainable_params"] == 2_442_240
    assert figures["final_eval_loss"] is not None and figures["final_eval_loss"] < 20
    model, tokenizer = load_model(resolve_model("smollm2-135m"), adapter=result.adapter_dir)
    assert model is not None and tokenizer.eos_token_id == 2
