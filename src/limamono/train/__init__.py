"""LoRA training with the card's recipe (SPEC §7): config, run, checkpoints, sweep, export.

Public API:

- ``TrainConfig``, ``load_config(path, overrides)``, ``make_config(values)``,
  ``parse_overrides(argv)``, ``ConfigError``: the typed config (CLI > file > defaults).
- ``train(config, resume=False)`` -> ``TrainResult``: one run (adapter, loss.png, manifest):
  SFT, or DPO/ORPO on a preference set (``method``; ``train_preferences``, ``pair_logratios``).
- ``lr_sweep(config, rates)``: one constant-LR epoch per rate, the lowest eval loss wins.
- ``export_axolotl(config, dir)``: the same run as an Axolotl config + input_output data.
- ``PadCollator``, ``latest_checkpoint``, ``COMPLETE``: building blocks.

Importing this package is cheap; torch, transformers and PEFT load when a run starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from limamono.train.config import (
    ALL_LINEAR,
    ConfigError,
    TrainConfig,
    load_config,
    make_config,
    parse_overrides,
)

if TYPE_CHECKING:
    from limamono.train.checkpoints import COMPLETE, latest_checkpoint
    from limamono.train.data import PadCollator
    from limamono.train.entry import train
    from limamono.train.preference import pair_logratios, train_preferences
    from limamono.train.run import TrainResult
    from limamono.train.sweep import export_axolotl, lr_sweep, parse_rates

_LAZY = {"COMPLETE": "checkpoints", "latest_checkpoint": "checkpoints",
         "PadCollator": "data", "TrainResult": "run", "train": "entry",
         "train_preferences": "preference", "pair_logratios": "preference",
         "export_axolotl": "sweep", "lr_sweep": "sweep", "parse_rates": "sweep"}

__all__ = ["ALL_LINEAR", "COMPLETE", "ConfigError", "PadCollator", "TrainConfig",
           "TrainResult", "export_axolotl", "latest_checkpoint", "load_config", "lr_sweep",
           "make_config", "pair_logratios", "parse_overrides", "parse_rates", "train",
           "train_preferences"]


def __getattr__(name: str) -> Any:
    """Load the torch-dependent parts on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"limamono.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'limamono.train' has no attribute {name!r}")
