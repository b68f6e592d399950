"""Training logs (``report_to``): TensorBoard event files with the loss, eval loss, learning
rate and tokens/s, read back with TensorBoard's own reader; the sweep in HParams; wandb
stays offline unless configured; the PNG and the manifest stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from limamono.train import ConfigError, make_config
from limamono.train.run import wandb_environment


def write_data(root: Path, n: int, eval_n: int) -> Path:
    from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n + eval_n):
        conv = Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", [
            Message("user", f"Hello {i}."), Message("char", f'Mira waved {i} times. "Come in."')])
        if i >= n:
            conv.meta["split"] = "eval"
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    return root


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder`` as ``tag -> [(step, value)]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_config_takes_tensorboard_wandb_or_none(tmp_path):
    assert make_config({"data": str(tmp_path)}).report_to == "tensorboard"
    with pytest.raises(ConfigError) as info:
        make_config({"data": str(tmp_path), "report_to": "tensorbord"})
    assert info.value.problems == ["report_to: 'tensorbord' is not one of tensorboard, wandb, "
                                   "none (did you mean 'tensorboard'?)"]


def test_a_tiny_run_writes_tensorboard_events_with_every_figure(tmp_path, tiny_model_dir):
    import json

    from limamono.train import train

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = make_config({
        "data": str(data), "model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
        "sequence_len": 96, "val": 0, "bf16": "false", "progress": False,
        "learning_rate": 1e-2, "lr_scheduler": "constant", "warmup_steps": 0,
        "num_epochs": 2, "lora_dropout": 0.0})
    result = train(config, notify=lambda _: None)
    found = scalars(result.output_dir / "tensorboard")
    assert {"train/loss", "train/learning_rate", "train/train_tokens_per_second",
            "train/num_input_tokens_seen", "eval/loss"} <= set(found)
    figures = result.manifest["figures"]
    # The same numbers as the manifest (TensorBoard stores float32).
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in found["train/loss"]] == [
        (s, v) for s, v in figures["train_loss"]]
    assert [s for s, _ in found["eval/loss"]] == [2, 4]  # one per epoch (2 samples each)
    assert found["eval/loss"][-1][1] == pytest.approx(figures["final_eval_loss"], rel=1e-6)
    assert [v for _, v in found["train/learning_rate"]] == [pytest.approx(1e-2)] * 4
    assert all(v > 0 for _, v in found["train/train_tokens_per_second"])
    # Tokens are the unpadded ones: the two samples' lengths, once per epoch.
    rows = [json.loads(line) for line in
            (result.output_dir / "data" / "tokenized" / "train.jsonl").read_text().splitlines()]
    lengths = [len(r["input_ids"]) for r in rows]
    assert found["train/num_input_tokens_seen"][-1] == (4, 2 * sum(lengths))
    assert (result.output_dir / "loss.png").is_file()  # the PNG and manifest stay
    assert (result.output_dir / "manifest.json").is_file()


def test_none_writes_no_events(tmp_path, tiny_model_dir):
    from limamono.train import train

    data = write_data(tmp_path / "data", 1, eval_n=0)
    config = make_config({
        "data": str(data), "model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
        "sequence_len": 96, "val": 0, "bf16": "false", "progress": False, "max_steps": 1,
        "report_to": "none"})
    result = train(config, notify=lambda _: None)
    assert not (result.output_dir / "tensorboard").exists()
    assert (result.output_dir / "loss.png").is_file()


@pytest.mark.slow
def test_the_sweep_is_in_tensorboards_hparams(tmp_path, tiny_model_dir):
    from limamono.train import lr_sweep

    data = write_data(tmp_path / "data", 1, eval_n=1)
    config = make_config({
        "data": str(data), "model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
        "sequence_len": 96, "val": 0, "bf16": "false", "progress": False,
        "lora_dropout": 0.0})
    summary = lr_sweep(config, [1e-4, 3e-2], notify=lambda _: None)
    out = Path(config.output_dir)
    for run in summary["runs"]:
        folder = out / "tensorboard" / "lr-sweep" / f"lr-{run['learning_rate']:g}"
        found = scalars(folder)
        assert found["hparam/eval_loss"][0][1] == pytest.approx(run["eval_loss"], rel=1e-6)
        # and each rate's own curves, under its run folder
        curves = scalars(Path(run["output_dir"]) / "tensorboard")
        assert curves["train/learning_rate"][0][1] == pytest.approx(run["learning_rate"])


def test_wandb_is_offline_unless_the_user_configured_it(tmp_path):
    assert wandb_environment({}, tmp_path) == {
        "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "limamono", "WANDB_MODE": "offline"}
    assert wandb_environment({"WANDB_API_KEY": "k"}, tmp_path) == {
        "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "limamono"}
    assert wandb_environment({"WANDB_MODE": "online", "WANDB_PROJECT": "mine",
                              "WANDB_DIR": "/x"}, tmp_path) == {}


def test_wandb_missing_is_named_with_the_fix(tmp_path, monkeypatch):
    import importlib.util

    from limamono.train.run import report_callbacks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = make_config({"data": str(tmp_path), "report_to": "wandb"})
    with pytest.raises(ConfigError) as info:
        report_callbacks(config, tmp_path, lambda _: None)
    assert info.value.problems == [
        "report_to: wandb is not installed; fix: pip install wandb (or pip install "
        "'limamono[wandb]'), or set report_to: tensorboard"]
