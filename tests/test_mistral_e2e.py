"""End to end on the card's own base architecture: a tiny Mistral (SentencePiece, BOS),
built, trained for 3 LoRA steps and generating through the engine, on CPU."""

from __future__ import annotations

from pathlib import Path

from limamono import dataset as ds
from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml
from limamono.train import make_config


def write_data(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(2):
        conv = Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", [
            Message("user", f"Hello {i}."),
            Message("char", f'Mira waved {i} times. "Come in."'),
        ])
        if i == 1:
            conv.meta["split"] = "eval"
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    return root


def test_three_lora_steps_and_a_generation_on_a_tiny_mistral(tmp_path, tiny_mistral_dir):
    import torch
    from transformers import AutoTokenizer

    from limamono.engine import load_engine
    from limamono.samplers import get_preset
    from limamono.train import train

    config = make_config({
        "data": str(write_data(tmp_path / "data")), "model": str(tiny_mistral_dir),
        "output_dir": str(tmp_path / "run"), "sequence_len": 128, "val": 0, "bf16": "false",
        "progress": False, "learning_rate": 1e-2, "max_steps": 3, "num_epochs": 3,
        "lora_dropout": 0.0, "lr_scheduler": "constant", "warmup_steps": 0})
    result = train(config, notify=lambda _: None)
    figures = result.manifest["figures"]
    losses = [loss for _, loss in figures["train_loss"]]
    assert figures["steps"] == 3 and len(losses) == 3
    assert losses[-1] < losses[0]
    # r=8 on q,k,v,o (64->64, 64->32, 64->32, 64->64) and gate,up,down (64<->128), 2 layers
    assert figures["trainable_params"] == 2 * 8 * (128 + 96 + 96 + 128 + 3 * 192)
    # The trained ids start with BOS and are the whole-text tokenisation.
    [row] = ds.read_tokenized(result.output_dir / "data", "train")
    [sample] = _segments(result.output_dir / "data")
    assert row["input_ids"][0] == 1 and row["labels"][0] == ds.IGNORE_INDEX
    tok = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    assert row["input_ids"] == tok(sample)["input_ids"]

    base = load_engine(str(tiny_mistral_dir), dtype="fp32", backend="torch")
    tuned = load_engine(str(tiny_mistral_dir), adapter=str(result.output_dir / "adapter"),
                        dtype="fp32", backend="torch")
    prompt = sample[:sample.rindex("Mira:") + len("Mira:")]  # the open reply of the sample
    ids = tuned.fit_prompt(prompt, 4)
    assert ids == row["input_ids"][:len(ids)] and ids[0] == 1
    with torch.inference_mode():
        before = base.model(torch.tensor([ids])).logits[0, -1]
        after = tuned.model(torch.tensor([ids])).logits[0, -1]
    assert not torch.allclose(before, after)  # the adapter was merged into the weights
    done = tuned.generate(prompt, get_preset("greedy"), 4)
    assert done.prompt_tokens == len(ids) and done.completion_tokens in range(1, 5)
    again = tuned.generate(prompt, get_preset("greedy"), 4)
    assert again.text == done.text  # greedy: the same reply


def _segments(built: Path, split: str = "train") -> list[str]:
    import json

    lines = (built / "segments" / f"{split}.jsonl").read_text().splitlines()
    return [ds.join([ds.Piece(p["text"], p["label"]) for p in json.loads(line)["segments"]])
            for line in lines]


def test_cli_data_build_on_the_tiny_mistral_keeps_token_identity(tmp_path, tiny_mistral_dir):
    """The issue's check: no sample whose ids differ from its whole text's (it was 30/30)."""
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from limamono.cli import app

    examples = Path(__file__).resolve().parents[1] / "examples" / "conversations"
    result = CliRunner().invoke(app, ["data", "build", str(examples), "-o",
                                      str(tmp_path / "out"), "-m", str(tiny_mistral_dir)])
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    texts = _segments(tmp_path / "out") + _segments(tmp_path / "out", "eval")
    rows = (ds.read_tokenized(tmp_path / "out", "train")
            + ds.read_tokenized(tmp_path / "out", "eval"))
    assert len(rows) == len(texts) == 30
    assert [r["input_ids"] for r in rows] == [tok(t)["input_ids"] for t in texts]
    assert {r["input_ids"][0] for r in rows} == {tok.bos_token_id}
