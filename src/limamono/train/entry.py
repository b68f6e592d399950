"""``train(config)``: the one entry of a training run, SFT or preference training.

``method: sft`` runs ``limamono.train.run.train`` (the card's recipe on Trainer + PEFT);
``dpo`` and ``orpo`` run ``limamono.train.preference.train_preferences`` (TRL's trainers
on the same model, with the same checkpoints, progress and outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from limamono.train.config import TrainConfig
from limamono.train.run import Notify, TrainResult


def train(config: TrainConfig, resume: bool = False, callbacks: Sequence[Any] = (),
          notify: Notify | None = None, progress_lines: Notify | None = None,
          force: bool = False) -> TrainResult:
    """Run one training as ``config.method`` says (arguments: ``run.train``'s)."""
    if config.method == "sft":
        from limamono.train.run import train as train_sft

        return train_sft(config, resume, callbacks, notify, progress_lines, force)
    from limamono.train.preference import train_preferences

    return train_preferences(config, resume, callbacks, notify, progress_lines, force)
