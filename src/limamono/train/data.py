"""Training data: a built dataset folder (or one built on the fly) and the padding collator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from limamono import dataset as ds
from limamono.dataset.output import TOKENIZED_DIR
from limamono.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from limamono.dataset.build import Overflow
    from limamono.dataset.samples import EndOfTurn

#: Where a run builds its dataset when ``data`` is a folder of conversations.
RUN_DATA_DIR = "data"


@dataclass
class TrainData:
    """The tokenised samples of a run and where they came from.

    Attributes:
        train: rows with ``input_ids`` and ``labels`` (lists of ints).
        eval: the held-out rows (may be empty).
        built_dir: the built dataset folder (``tokenized/``, ``segments/``, ``stats.json``).
        data_hash: SHA-256 of the tokenised files, recorded in the manifest.
        stats: the folder's ``stats.json``.
    """

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    built_dir: Path
    data_hash: str
    stats: dict[str, Any]


def build_config(config: TrainConfig) -> ds.BuildConfig:
    """The dataset build options a training config implies."""
    # BuildConfig checks both values against its own lists when it is built.
    return ds.BuildConfig(seq_len=config.sequence_len, val=config.val, seed=config.seed,
                          overflow=cast("Overflow", config.overflow),
                          end_of_turn=cast("EndOfTurn", config.end_of_turn),
                          train_on_inputs=config.train_on_inputs,
                          length_bounds=tuple(config.length_bounds),
                          window_overlap=config.window_overlap, trigger=config.trigger)


def ensure_built(config: TrainConfig, tokenizer: Any, target: Path,
                 notify: Callable[[str], None] | None = None) -> Path:
    """The built folder for ``config.data``: itself if already built, else build it into
    ``target`` with the run's tokenizer and options.

    Raises:
        DatasetError: the conversations cannot be built (every problem listed).
    """
    source = Path(config.data)
    if ds.is_built(source):
        return source
    result = ds.build(str(source), tokenizer, build_config(config))
    stats = ds.write_build(result, target, tokenizer, config.model)
    if notify is not None:
        for event in stats["overlong"]["conversations"]:
            notify(f"over-long: {event['source']} ({event['tokens']} tokens): "
                   f"{event['action']} -> {event['samples']} sample(s)")
        for name in stats["duplicates_dropped"]:
            notify(f"duplicate dropped: {name}")
        if stats["style_fixes"]:
            notify(f"style: {len(stats['style_fixes'])} message(s) normalised (safe fixes)")
    return target


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load_built(built: Path, config: TrainConfig, tokenizer: Any) -> TrainData:
    """Read a built folder and check it suits the run (every mismatch listed).

    Raises:
        ConfigError: wrong tokenizer, samples longer than ``sequence_len``, a different
            mask policy than the config asks for, or no training sample.
    """
    stats = ds.read_stats(built)
    train, evals = ds.read_tokenized(built, "train"), ds.read_tokenized(built, "eval")
    problems = []
    built_with = stats.get("build", {})
    fingerprint = built_with.get("tokenizer", {}).get("probe_sha256")
    if fingerprint and fingerprint != ds.tokenizer_fingerprint(tokenizer)["probe_sha256"]:
        problems.append(f"data: {built} was built with another tokenizer "
                        f"({built_with['tokenizer'].get('name')}); fix: rebuild it with "
                        f"`limamono data build ... --model {config.model}`")
    built_config = built_with.get("config", {})
    if built_config.get("train_on_inputs", config.train_on_inputs) != config.train_on_inputs:
        problems.append(f"train_on_inputs: the config says {config.train_on_inputs} but "
                        f"{built} was built with {built_config['train_on_inputs']}; fix: "
                        "rebuild with the same setting or change the config")
    longest = max((len(r["input_ids"]) for r in train + evals), default=0)
    if longest > config.sequence_len:
        problems.append(f"sequence_len: {built} holds a {longest}-token sample, longer than "
                        f"{config.sequence_len}; fix: rebuild with --seq-len "
                        f"{config.sequence_len} or raise sequence_len")
    if not train:
        problems.append(f"data: {built} has no training sample; fix: add conversations or "
                        "lower val")
    if problems:
        raise ConfigError(problems, str(built))
    files = [built / TOKENIZED_DIR / f"{s}.jsonl" for s in ("train", "eval")]
    return TrainData(train, evals, built, _hash_files(files), stats)


@dataclass(frozen=True)
class PadCollator:
    """Right-pads a batch: input ids with ``pad_id``, labels with -100, attention mask 0.

    ``pad_to`` pads every batch to that many tokens (Axolotl's ``pad_to_sequence_len``);
    None pads to the longest sample of the batch.
    """

    pad_id: int
    pad_to: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = self.pad_to or max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), ds.IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
