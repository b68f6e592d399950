"""Preference training (``method: dpo|orpo``) with TRL's trainers, under the SFT run's rules.

``train_preferences(config)`` reads a preference set (``limamono data prefs``), loads the
base model as an SFT run does (fp32, 8-bit or 4-bit), starts from ``sft_adapter`` (or a new
LoRA), and trains with TRL's ``DPOTrainer`` or ``ORPOTrainer``. Everything else is the SFT
run's: the same training arguments, atomic checkpoints and ``--resume``, progress lines,
``report_to``, the adapter folder with its card, ``loss.png`` and ``manifest.json``.

- **Token ids are ours.** The pairs hold the dataset builder's ids (each sample tokenised
  whole, BOS where the tokenizer adds it, the trained reply ending in ``\\n\\n###`` or EOS).
  TRL would tokenise prompt and reply again (and append EOS); the subclasses below hand
  it the stored ids instead, so the trained tokens are exactly those of the pairs.
- **The reference (DPO).** The policy starts as the SFT adapter; TRL copies it into a
  frozen second adapter, ``ref``, and computes the reference log-probabilities with it.
  Without ``sft_adapter`` the new LoRA starts at zero, so the reference is the base model.
  The ``ref`` copy is dropped before the adapter is saved. ORPO needs no reference.
- **Dropout.** TRL turns dropout off in the model (its ``disable_dropout`` default), so the
  policy's and the reference's log-probabilities of a pair agree at the start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from limamono.dataset.folders import PAIRS_FILE
from limamono.train.checkpoints import (
    CHECKPOINTS_DIR,
    STAGING_DIR,
    AtomicCheckpoints,
    resumable_checkpoint,
)
from limamono.train.config import ConfigError, TrainConfig
from limamono.train.run import (
    ADAPTER_DIR,
    LOSS_PLOT,
    MANIFEST,
    Notify,
    TrainResult,
    _figures,
    _folder_bytes,
    _line_progress,
    _no_space,
    _versions,
    _warn,
    add_lora,
    load_base,
    out_of_space,
    plot_losses,
    precision,
    save_adapter_or_say_no_space,
    start_run,
    training_arguments,
    warmup_steps,
)

#: Columns of a pair the trainers read.
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
#: TRL's name of the reference copy of the adapter (DPO from a trained adapter).
REF_ADAPTER = "ref"


def load_pairs(config: TrainConfig, tokenizer: Any) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """The preference set's report and its train and eval pairs, checked against the run.

    Raises:
        ConfigError: every mismatch at once: another tokenizer, another trigger, end of
            turn or length bounds than the run's, a pair longer than ``sequence_len``, no
            training pair, or a damaged file.
    """
    from limamono.dataset.output import tokenizer_fingerprint
    from limamono.dataset.prefs import PrefsError, read_prefs

    try:
        meta, rows = read_prefs(config.data)
    except PrefsError as exc:
        raise ConfigError([str(exc)], config.data) from None
    built = meta["prefs"]
    made = built.get("config", {})
    problems = []
    fingerprint = built.get("tokenizer", {}).get("probe_sha256")
    if fingerprint and fingerprint != tokenizer_fingerprint(tokenizer)["probe_sha256"]:
        problems.append(f"data: {config.data} was made with another tokenizer "
                        f"({built['tokenizer'].get('name')}); fix: run `limamono data prefs "
                        f"... --model {config.model}` again")
    for key, ours in (("trigger", config.trigger), ("end_of_turn", config.end_of_turn),
                      ("length_bounds", list(config.length_bounds))):
        theirs = made.get(key)
        if theirs is not None and (list(theirs) if key == "length_bounds" else theirs) != ours:
            problems.append(f"{key}: the config says {ours!r} but {config.data} was made with "
                            f"{theirs!r}; fix: make the pairs again with the run's value, or "
                            "change the config")
    longest = max((len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                   for r in rows), default=0)
    if longest > config.sequence_len:
        problems.append(f"sequence_len: {config.data} holds a {longest}-token pair, longer "
                        f"than {config.sequence_len}; fix: make the pairs with --seq-len "
                        f"{config.sequence_len} or raise sequence_len")
    train = [r for r in rows if r["split"] == "train"]
    if not train:
        problems.append(f"data: {config.data} has no training pair; fix: add chats with "
                        "swipes (see its prefs.json for what was skipped)")
    if problems:
        raise ConfigError(problems, config.data)
    return meta, train, [r for r in rows if r["split"] == "eval"]


def _dataset(rows: Sequence[dict[str, Any]]) -> Any:
    from datasets import Dataset  # type: ignore[import-untyped]

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected", *ID_COLUMNS)}
                              for r in rows])


def _dpo_trainer_class() -> Any:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPO on the pairs' own token ids (TRL would tokenise the texts again)."""

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any,
                             dataset_name: str) -> Any:
            return dataset.select_columns(list(ID_COLUMNS))

    return PretokenizedDPOTrainer


def _orpo_trainer_class() -> Any:
    from trl.experimental.orpo import ORPOTrainer

    class PretokenizedORPOTrainer(ORPOTrainer):
        """ORPO on the pairs' own token ids: the rows TRL's ``tokenize_row`` would make."""

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            prompt = list(feature["prompt_ids"])
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                reply = list(feature[f"{side}_ids"])
                row[f"{side}_input_ids"] = prompt + reply
                row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
                row[f"{side}_labels"] = [-100] * len(prompt) + reply
            return row

    return PretokenizedORPOTrainer


def start_model(config: TrainConfig, path: Path, eight_bit: bool, bf16: bool,
                notify: Notify) -> Any:
    """The policy: the base model with ``sft_adapter`` (trainable) or a new LoRA.

    Raises:
        ConfigError: the SFT adapter was trained on another base than ``model``.
    """
    base = load_base(path, eight_bit, bf16, config.load_in_4bit, config.gradient_checkpointing)
    if not config.sft_adapter:
        notify(f"method {config.method}: no sft_adapter, so a new LoRA starts from the base "
               "model" + (" (also the reference)" if config.method == "dpo" else ""))
        return add_lora(base, config)
    from peft import PeftModel

    card = Path(config.sft_adapter) / "limamono.json"
    if card.is_file():
        trained_on = json.loads(card.read_text(encoding="utf-8")).get("base_model")
        if trained_on and trained_on != config.model:
            raise ConfigError([f"sft_adapter: {config.sft_adapter} was trained on "
                               f"{trained_on!r} but model is {config.model!r}; fix: set "
                               f"model: {trained_on}"])
    model = PeftModel.from_pretrained(base, config.sft_adapter, is_trainable=True)
    lora = model.peft_config["default"]
    notify(f"method {config.method}: starting from {config.sft_adapter} (its LoRA: r "
           f"{getattr(lora, 'r', '?')}, alpha {getattr(lora, 'lora_alpha', '?')})"
           + (", which is also the reference" if config.method == "dpo" else ""))
    return model


def train_preferences(config: TrainConfig, resume: bool = False,
                      callbacks: Sequence[Any] = (), notify: Notify | None = None,
                      progress_lines: Notify | None = None, force: bool = False
                      ) -> TrainResult:
    """One DPO or ORPO run (see the module docstring); the arguments are ``run.train``'s.

    Raises:
        ConfigError, ModelError: bad config, pairs or model, before training.
        RunFolderError, CheckpointError, NoSpaceError: as ``run.train``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    say = notify or _warn
    out, _state, logging = start_run(config, resume, force, say)
    from transformers import AutoTokenizer, set_seed

    from limamono.models.resolve import resolve_model

    spec = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    meta, train_rows, eval_rows = load_pairs(config, tokenizer)
    bf16, eight_bit = precision(config, say)
    if not eval_rows:
        say("no eval pairs (the preference set was made with --val 0), so no eval loss is "
            "computed")
    set_seed(config.seed)
    model = start_model(config, spec.path, eight_bit, bf16, say)
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    # TRL sets a pad token on the tokenizer it gets; the adapter keeps the model's own.
    trainer_tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    if trainer_tokenizer.pad_token is None:
        trainer_tokenizer.pad_token = trainer_tokenizer.eos_token
    lines = progress_lines if config.progress else None
    extra = [*callbacks] if lines is None else [*callbacks, _line_progress(lines)]
    common = {"beta": config.beta, "max_length": config.sequence_len}
    args_class: Any
    trainer_class: Any
    if config.method == "dpo":
        from trl import DPOConfig

        args_class, trainer_class = DPOConfig, _dpo_trainer_class()
        kwargs: dict[str, Any] = {}
    else:
        from trl.experimental.orpo import ORPOConfig
        from trl.experimental.utils import DPODataCollatorWithPadding

        args_class, trainer_class = ORPOConfig, _orpo_trainer_class()
        kwargs = {"data_collator": DPODataCollatorWithPadding(
            pad_token_id=trainer_tokenizer.pad_token_id)}
    args = training_arguments(config, staging, bool(eval_rows), bf16,
                              warmup_steps(config, len(train_rows)),
                              bars=config.progress and lines is None, args_class=args_class,
                              **common)
    trainer = trainer_class(
        model=model, args=args, train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(eval_rows) if eval_rows else None,
        processing_class=trainer_tokenizer,
        callbacks=[AtomicCheckpoints(staging, out / CHECKPOINTS_DIR, config.save_total_limit),
                   *logging, *extra], **kwargs)
    if lines is not None:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    checkpoint = resumable_checkpoint(out / CHECKPOINTS_DIR, config.max_steps, say) \
        if resume else None
    if resume and checkpoint is None:
        say(f"--resume: no complete checkpoint in {out / CHECKPOINTS_DIR}; starting afresh")
    started = time.perf_counter()
    needed = max(_folder_bytes(checkpoint), 12 * sum(
        p.numel() for p in model.parameters() if p.requires_grad))
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:  # a full disk, as run.train reports it
        if not out_of_space(exc, out, needed):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        raise _no_space(out, f"a checkpoint at step {trainer.state.global_step}") from exc
    seconds = time.perf_counter() - started
    adapter_dir = out / ADAPTER_DIR
    if not trainer.is_world_process_zero():
        return TrainResult(out, adapter_dir, {})
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if REF_ADAPTER in getattr(policy, "peft_config", {}):
        policy.delete_adapter(REF_ADAPTER)
    save_adapter_or_say_no_space(policy, tokenizer, config, out, needed)
    history = trainer.state.log_history
    plot_losses(history, out / LOSS_PLOT)
    pairs_file = Path(config.data) / PAIRS_FILE
    figures = _figures(history, trainer.state, seconds, policy)
    figures["preference"] = _preference_figures(history)
    manifest = {
        "config": config.to_dict(), "seed": config.seed, "model_path": str(spec.path),
        "method": config.method, "sft_adapter": config.sft_adapter or None,
        "data": {"dir": str(config.data),
                 "sha256": hashlib.sha256(pairs_file.read_bytes()).hexdigest(),
                 "train_pairs": len(train_rows), "eval_pairs": len(eval_rows),
                 "prefs": meta["prefs"]},
        "precision": {"bf16": bf16, "load_in_8bit": eight_bit,
                      "load_in_4bit": config.load_in_4bit},
        "resumed_from": str(checkpoint) if checkpoint else None,
        "versions": {**_versions(), "trl": _trl_version()},
        "figures": figures,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(out, adapter_dir, manifest)


def _trl_version() -> str:
    import trl

    return str(trl.__version__)


def _preference_figures(history: Sequence[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """TRL's logged preference figures (rewards, margins, accuracies, log-probabilities,
    ORPO's log odds) per logged step."""
    keys = sorted({k for h in history for k in h
                   if k.startswith(("rewards/", "logps/", "log_odds", "nll_loss",
                                    "eval_rewards/"))})
    return {k: [[h["step"], h[k]] for h in history if k in h] for k in keys}


def pair_logratios(model: Any, rows: Sequence[dict[str, Any]]) -> list[float]:
    """``log p(chosen | prompt) - log p(rejected | prompt)`` of each pair under ``model``
    (sums over the reply's tokens, the trained ones), in nats."""
    import torch

    def logp(prompt: list[int], reply: list[int]) -> float:
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return float(picked[len(prompt) - 1:].sum())

    was_training = model.training
    model.eval()
    try:
        return [logp(r["prompt_ids"], r["chosen_ids"]) - logp(r["prompt_ids"], r["rejected_ids"])
                for r in rows]
    finally:
        model.train(was_training)
