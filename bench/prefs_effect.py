"""The effect of a preference run on its pairs: log p(chosen) - log p(rejected) per adapter.

For each adapter (or ``none``, the base model) prints the mean log-ratio over the pairs of a
preference set (``limamono data prefs``), its seeded bootstrap 95 % interval, and the share
of pairs whose chosen reply is the likelier one (DPO's reward accuracy against a zero
reference), with its Wilson interval.

    PYTHONPATH=src python bench/prefs_effect.py runs/prefs examples/adapters/demo \
        runs/demo-dpo/adapter --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from limamono.dataset.prefs import read_prefs
from limamono.evaluate.intervals import bootstrap_interval, wilson
from limamono.train import pair_logratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefs", help="a folder written by `limamono data prefs`")
    parser.add_argument("adapters", nargs="+", help="adapter folders, or none")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--split", default=None, help="train or eval (default: both)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from limamono.models.resolve import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    _, rows = read_prefs(args.prefs)
    rows = [r for r in rows if args.split in (None, r["split"])]
    path = resolve_model(args.model).path
    found: dict[str, list[float]] = {}
    for adapter in args.adapters:
        started = time.perf_counter()
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if adapter != "none":
            model = PeftModel.from_pretrained(model, adapter)
        ratios = found[adapter] = pair_logratios(model, rows)
        wins = sum(r > 0 for r in ratios)
        low, high = wilson(wins, len(ratios))
        print(f"{adapter}: {len(ratios)} pairs, mean log-ratio {_mean(ratios)}, chosen "
              f"likelier in {wins}/{len(ratios)} = {wins / len(ratios):.1%} [{low:.1%}, "
              f"{high:.1%}] ({time.perf_counter() - started:.0f} s)", flush=True)
    first, last = args.adapters[0], args.adapters[-1]
    if len(args.adapters) > 1:
        deltas = [b - a for a, b in zip(found[first], found[last], strict=True)]
        up = sum(d > 0 for d in deltas)
        print(f"{last} against {first}, paired: log-ratio change {_mean(deltas)}, up in "
              f"{up}/{len(deltas)} pairs")


def _mean(values: list[float]) -> str:
    """The mean with its seeded bootstrap 95 % interval, in nats."""
    bounds = bootstrap_interval(lambda idx: statistics.fmean(values[i] for i in idx),
                                len(values), seed=0)
    shown = "" if bounds is None else f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    return f"{statistics.fmean(values):.2f} nats{shown}"

if __name__ == "__main__":
    main()
