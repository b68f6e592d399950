"""Atomic checkpoints: written in a staging folder, marked complete, then renamed into place.

transformers' Trainer writes ``checkpoint-N`` file by file; a run killed mid-write leaves a
folder that looks like a checkpoint but is not one. Here the Trainer writes into
``OUT/.staging``; when it is done, ``AtomicCheckpoints`` writes the ``COMPLETE`` marker
last and renames the folder to ``OUT/checkpoints/checkpoint-N`` (one rename on one
filesystem). Resuming considers only folders with the marker, and checks the files of one
(``checkpoint_problem``) before the Trainer reads them: a damaged newest checkpoint is
skipped with a note naming the bad file, and the newest intact one is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
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


class CheckpointError(ValueError):
    """No checkpoint of a run can be resumed; the message names each bad file."""


def _step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else -1


def _load_torch(path: Path) -> Any:
    """``torch.load`` as the Trainer calls it: weights only, numpy arrays allowed."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():
        return torch.load(path, map_location="cpu", weights_only=True)


def _check_rng(state: Any) -> None:
    """Raise unless ``state`` can be restored the way the Trainer restores it."""
    import random

    import numpy as np
    import torch

    if not isinstance(state, dict) or not {"python", "numpy", "cpu"} <= set(state):
        raise ValueError("expected the python, numpy and cpu random states")
    random.Random().setstate(state["python"])
    np.random.RandomState().set_state(state["numpy"])
    torch.Generator().set_state(state["cpu"])


def _check_trainer_state(path: Path, step: int, max_steps: int) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    global_step = data.get("global_step")
    if type(global_step) is not int or global_step != step:
        raise ValueError(f"global_step {str(global_step)[:40]} is not the folder's step {step}")
    if max_steps and global_step > max_steps:
        raise ValueError(f"global_step {global_step} is past the run's {max_steps} steps")
    for key in ("log_history",):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{key} is not a list")
    from transformers import TrainerState

    TrainerState(**{k: v for k, v in data.items() if k in TrainerState.__dataclass_fields__})


def checkpoint_problem(path: Path, max_steps: int = 0) -> str | None:
    """What is wrong with the checkpoint folder ``path`` (naming the file), or None.

    Every file the Trainer reads on resuming is read here first: the adapter weights in
    full, the optimizer and scheduler states, the random states (restored into throwaway
    generators) and ``trainer_state.json``, whose ``global_step`` must be the folder's
    step and, when ``max_steps`` is set, not past it.
    """
    from safetensors.torch import load_file

    step = _step_of(path)
    checks: list[tuple[str, Callable[[Path], Any], bool]] = [
        ("trainer_state.json", lambda p: _check_trainer_state(p, step, max_steps), True),
        ("adapter_model.safetensors", lambda p: load_file(str(p)), True),
        ("optimizer.pt", _load_torch, False),
        ("scheduler.pt", _load_torch, False),
        ("rng_state.pth", lambda p: _check_rng(_load_torch(p)), False),
    ]
    for name, check, required in checks:
        file = path / name
        if not file.is_file():
            if required:
                return f"{file}: missing"
            continue
        try:
            check(file)
        except Exception as exc:  # any failure to read it means damaged
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            return f"{file}: damaged ({reason})"
    return None


def resumable_checkpoint(folder: Path, max_steps: int = 0,
                         notify: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint under ``folder`` whose files all read back.

    Each damaged newer one is named in a note (with the file and why) and skipped.
    Returns None when there is no complete checkpoint at all.

    Raises:
        CheckpointError: there are checkpoints, but none is intact (each one named).
    """
    say = notify or (lambda _line: None)
    problems: list[str] = []
    for path in reversed(complete_checkpoints(folder)):
        problem = checkpoint_problem(path, max_steps)
        if problem is None:
            if problems:
                say(f"--resume: skipped {len(problems)} damaged checkpoint(s) "
                    f"({'; '.join(problems)}); resuming from {path.name} instead")
            return path
        problems.append(problem)
    if problems:
        raise CheckpointError(
            "--resume: no intact checkpoint in " f"{folder}: " + "; ".join(problems)
            + "; fix: delete the damaged checkpoint folders to start afresh, or restore them")
    return None


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
