"""Training throughput: useful (supervised) tokens per second and peak memory, on the
embedded model, padding every sample to the sequence length (the card's recipe,
``pad_to_sequence_len: true``) versus padding to the longest sample of the batch.

Each mode runs in its own process (peak RSS is per process), through ``limamono.train``
(Trainer + PEFT, LoRA r8 on all linear projections), on one conversation repeated so that
every step sees exactly the same tokens. The first step is warm-up and is not timed.

    .venv/bin/python bench/train.py                       # both modes, prints a table
    .venv/bin/python bench/train.py --steps 2 --seq-len 4096 --data FILE_OR_DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "examples" / "conversations" / "harriet-quill-01.yaml"
MODES = {"pad-to-seq-len": True, "pad-to-longest": False}


def run_one(mode: str, args: argparse.Namespace) -> dict:
    """Train ``warmup + steps`` steps in this process; time the last ``steps``."""
    from transformers import TrainerCallback

    from limamono.train import make_config, train

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *_args, **_kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            self.times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        source = Path(args.data)
        files = [source] if source.is_file() else sorted(source.glob("*.yaml"))[:1]
        record = yaml.safe_load(files[0].read_text())
        record.pop("meta", None)  # a `split: eval` there would leave nothing to train
        if args.max_turns:
            record["messages"] = record["messages"][:args.max_turns]
        (data / files[0].name).write_text(yaml.safe_dump(record))
        config = make_config({
            "data": str(data), "model": args.model, "output_dir": str(Path(tmp) / "run"),
            "sequence_len": args.seq_len, "pad_to_sequence_len": MODES[mode], "val": 0,
            "max_steps": args.steps + args.warmup, "lr_scheduler": "constant", "warmup_steps": 0,
            "save_steps": 100_000, "progress": False, "bf16": args.bf16})
        timer = StepTimer()
        result = train(config, callbacks=[timer], notify=lambda _line: None)
        stats = json.loads((Path(tmp) / "run" / "data" / "stats.json").read_text())
    steps = timer.times[args.warmup:]
    per_step = sum(steps) / len(steps)
    supervised = stats["supervised_tokens"]  # one sample, seen once per step
    tokens = stats["sample_tokens"]
    padded = args.seq_len if MODES[mode] else tokens
    return {"mode": mode, "sample_tokens": tokens, "padded_tokens": padded,
            "supervised_tokens": supervised, "seconds_per_step": round(per_step, 2),
            "useful_tokens_per_s": round(supervised / per_step, 1),
            "tokens_per_s": round(tokens / per_step, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "bf16": result.manifest["precision"]["bf16"], "steps_timed": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="A conversation file "
                        "(or the first YAML of a folder); it should fit in --seq-len.")
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per mode.")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--bf16", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--max-turns", type=int, default=0, help="Keep only the first N "
                        "turns of the conversation (0: all), to fit a shorter --seq-len.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first.")
    parser.add_argument("--one", choices=tuple(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    rows = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--one", mode, "--model", args.model, "--data",
               args.data, "--steps", str(args.steps), "--seq-len", str(args.seq_len),
               "--bf16", args.bf16, "--max-turns", str(args.max_turns), "--warmup",
               str(args.warmup)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| mode | tokens (padded) | supervised | s/step | useful tok/s | all tok/s "
          "| peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['sample_tokens']} ({r['padded_tokens']}) | "
              f"{r['supervised_tokens']} | {r['seconds_per_step']} | "
              f"{r['useful_tokens_per_s']} | {r['tokens_per_s']} | {r['peak_rss_gib']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
