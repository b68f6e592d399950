"""Atomic checkpoints: written in a staging folder, marked complete, then renamed into place.

transformers' Trainer writes ``checkpoint-N`` file by file; a run killed mid-write leaves a
folder that looks like a checkpoint but is not one. Here the Trainer writes into
``OUT/.staging``; when it is done, ``AtomicCheckpoints`` writes the ``COMPLETE`` marker
last and renames the folder to ``OUT/checkpoints/checkpoint-N`` (one rename on one
filesystem). Resuming considers only folders with the marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

COMPLETE = "COMPLETE"
STAGING_DIR = ".staging"
CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders that have the ``COMPLETE`` marker, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _NAME.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None."""
    found = complete_checkpoints(folder)
    return found[-1] if found else None


class AtomicCheckpoints(TrainerCallback):
    """Moves each checkpoint the Trainer saved from staging to its final name.

    Args:
        staging: the Trainer's ``output_dir``.
        final: the folder complete checkpoints are renamed into.
        keep: keep only the newest ``keep`` checkpoints (0: all).
    """

    def __init__(self, staging: Path, final: Path, keep: int = 0) -> None:
        self.staging, self.final, self.keep = staging, final, keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Mark the checkpoint just saved as complete and rename it into place."""
        from accelerate import PartialState

        # Every rank writes its RNG state into the folder: wait for all before moving it.
        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            source = self.staging / f"checkpoint-{state.global_step}"
            if source.is_dir():
                marker = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
                (source / COMPLETE).write_text(json.dumps(marker) + "\n")
                self.final.mkdir(parents=True, exist_ok=True)
                target = self.final / source.name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(source, target)
                self._prune()
        PartialState().wait_for_everyone()
        return control

    def _prune(self) -> None:
        if self.keep:
            for old in complete_checkpoints(self.final)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
