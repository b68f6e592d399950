"""Whose run an ``output_dir`` holds, and whether a new run may write there.

A run writes its checkpoints, adapter, plots and manifest into ``output_dir`` and prunes and
replaces what it finds there by name. Two runs in one folder mix (one's checkpoints pruned
by the other, ``--resume`` continuing the wrong one), and a folder of the user's own files
loses them. So every run first claims its folder (``claim``):

- ``/``, the home folder and its parents, the dataset folder and any folder inside it are
  refused outright;
- a non-empty folder that limamono did not make (a name a run does not write) is refused;
- a folder holding another run, one whose identity differs (``RUN_MARKER`` records it), is
  refused unless ``--force`` replaces that run; ``--resume`` continues only the same run;
- then ``RUN_MARKER`` is written, before anything else of the run.

A run's identity is its config minus the keys that only say how long it runs, how often it
saves or what it prints: those may change on ``--resume`` (training 4 more steps).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from limamono.train.checkpoints import CHECKPOINTS_DIR, STAGING_DIR
from limamono.train.config import TrainConfig
from limamono.util import atomic
from limamono.util.untrusted import quote

#: The file that says limamono made a folder, and for which run.
RUN_MARKER = "limamono-run.json"
#: Keys a resumed run may change without becoming another run.
SCHEDULE_KEYS = frozenset({"output_dir", "max_steps", "num_epochs", "save_steps",
                           "save_total_limit", "eval_steps", "logging_steps", "progress",
                           "report_to"})
#: Everything a run (or an LR sweep) writes into its folder.
RUN_NAMES = frozenset({RUN_MARKER, CHECKPOINTS_DIR, STAGING_DIR, "data", "adapter",
                       ".adapter.tmp", "manifest.json", "loss.png", "lr-sweep",
                       "lr_sweep.json", "lr_sweep.png", "tensorboard", "wandb"})
#: What ``--force`` removes of another run (its built ``data`` is rebuilt by the next run).
_REPLACED = (CHECKPOINTS_DIR, STAGING_DIR, "adapter", ".adapter.tmp", "manifest.json",
             "loss.png", "tensorboard")


class RunFolderError(ValueError):
    """``output_dir`` cannot take this run; the message names the folder and the fix."""


def identity(config: dict[str, Any] | TrainConfig) -> dict[str, Any]:
    """The keys of a config that make a run what it is (see the module docstring).

    A recorded config lacking a key (written before the key existed) has its default; a
    key this version no longer has is left out; ``data`` and a ``model`` folder count as
    absolute paths, so a relative and an absolute spelling are one run.
    """
    values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    full = {**TrainConfig().to_dict(), **values}
    out = {k: full[k] for k in sorted(TrainConfig().to_dict()) if k not in SCHEDULE_KEYS}
    for key in ("data", "model"):
        if isinstance(out.get(key), str) and out[key] and (key == "data"
                                                          or Path(out[key]).exists()):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return dict(json.loads(json.dumps(out, default=str)))  # as a marker file reads back


def identity_hash(config: dict[str, Any] | TrainConfig) -> str:
    """SHA-256 of ``identity(config)`` as canonical JSON (the run marker's ``config_hash``)."""
    text = json.dumps(identity(config), sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _unsafe(out: Path, data: Path) -> str | None:
    """Why ``out`` must never be an output folder, or None."""
    home = Path.home().resolve()
    if out == Path(out.anchor):
        return "is the root of the filesystem"
    if out == home or out in home.parents:
        return "is your home folder" if out == home else "holds your home folder"
    if out == data or data in out.parents:
        return f"is {'the dataset folder' if out == data else 'inside the dataset folder'} " \
               f"(data: {data})"
    for name in ("data", "adapter", CHECKPOINTS_DIR, STAGING_DIR):
        if data == out / name or (out / name) in data.parents:
            return f"would overwrite the dataset (data: {data}) with its {name}/"
    return None


def check_folder(config: TrainConfig) -> None:
    """Refuse an ``output_dir`` that is a system or dataset folder, or holds other files.

    Raises:
        RunFolderError: naming the folder, why, and the fix.
    """
    out = Path(config.output_dir).expanduser().resolve()
    why = _unsafe(out, Path(config.data).expanduser().resolve())
    if why:
        raise RunFolderError(f"output_dir: {out} {why}; fix: point output_dir at a new or "
                             "empty folder of its own (e.g. runs/NAME)")
    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"output_dir: {out} is a file, not a folder; fix: choose "
                             "another output_dir")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_NAMES)
    if foreign:
        shown = ", ".join(quote(n) for n in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise RunFolderError(
            f"output_dir: {out} is not empty and was not made by limamono ({len(foreign)} "
            f"other item(s): {shown}); a run replaces what it finds there, so it is refused; "
            "fix: point output_dir at a new or empty folder")


def _recorded(out: Path) -> tuple[dict[str, Any] | None, str]:
    """The identity recorded in ``out`` (marker, else an older run's manifest) and its
    source file; ``(None, "")`` when nothing records one."""
    for name, key in ((RUN_MARKER, "identity"), ("manifest.json", "config")):
        path = out / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get(key), dict):
            raise RunFolderError(f"output_dir: {path} is unreadable, so whose run the folder "
                                 "holds is unknown; fix: choose another output_dir, or pass "
                                 "--force to replace it")
        return identity(data[key]), name
    return None, ""


def _differences(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    parts = [f"{k}: {quote(theirs.get(k))} there, {quote(ours.get(k))} here" for k in keys[:3]]
    return "; ".join(parts) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def claim(config: TrainConfig, resume: bool = False, force: bool = False,
          notify: Callable[[str], None] | None = None) -> Path:
    """Check ``output_dir`` for this run (module docstring), then write ``RUN_MARKER``.

    With ``force``, another run found there is removed (its checkpoints, adapter, plot and
    manifest). A fresh start (no ``resume``) of the same run removes that run's old
    checkpoints, so the two never mix. Returns the folder.

    Raises:
        RunFolderError: the folder is refused (why and the fix in the message).
    """
    say = notify or (lambda _line: None)
    check_folder(config)
    out = Path(config.output_dir)
    ours = identity(config)
    theirs, source = _recorded(out) if out.is_dir() else (None, "")
    has_run = out.is_dir() and any((out / n).exists() for n in _REPLACED)
    if theirs is not None and theirs != ours:
        if not force:
            action = "--resume continues only the run that folder holds" if resume else \
                "a new run there would mix with it"
            raise RunFolderError(
                f"output_dir: {out} holds another run ({_differences(theirs, ours)}; from "
                f"{source}); {action}; fix: choose another output_dir, use that run's "
                "config, or pass --force to replace it")
        _remove_run(out)
        say(f"--force: replaced the other run in {out}")
    elif theirs is None and has_run:
        say(f"{out} holds a run without a record of its config (made by an older limamono); "
            "it is treated as this run's")
    if not resume and (out / CHECKPOINTS_DIR).is_dir() and \
            any((out / CHECKPOINTS_DIR).iterdir()):
        shutil.rmtree(out / CHECKPOINTS_DIR)
        say(f"starting afresh: removed the earlier checkpoints in {out / CHECKPOINTS_DIR} "
            "(--resume continues from them instead)")
    out.mkdir(parents=True, exist_ok=True)
    marker = {"made_by": "limamono", "config_hash": identity_hash(config), "identity": ours}
    atomic.write_text(out / RUN_MARKER, json.dumps(marker, indent=2, default=str) + "\n")
    return out


def _remove_run(out: Path) -> None:
    for name in _REPLACED:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
