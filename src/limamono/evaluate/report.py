"""The evaluation report: JSON for machines, Markdown tables and PNG plots for people.

Every rate is shown with its 95 % interval and every target with the verdict the interval
gives (``metrics.judge``): a point inside the target band is not enough to say "meets".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from limamono import atomic
from limamono.conversation import LENGTHS
from limamono.evaluate.metrics import TARGETS, judge
from limamono.evaluate.run import EvalConfig, VariantResult

#: Rows of the behaviour table: (field, title, shown as a percentage).
_ROWS = [
    ("style_compliance", "style compliance", True),
    ("format_integrity", "format integrity", True),
    ("impersonation_rate", "impersonation rate", True),
    ("speaks_for_user_rate", "speaks for the user", True),
    ("thought_rate", "thought rate", True),
    ("length_spearman", "length Spearman", False),
    ("distinct_2", "distinct-2", False),
    ("repeat_rate", "verbatim repeats", True),
    ("slop_index", "stock phrases / 1,000 words", False),
]


def to_json(config: EvalConfig, results: Sequence[VariantResult]) -> dict[str, Any]:
    """The whole report as JSON-ready data (replies included)."""
    cfg = asdict(config)
    cfg["data"] = str(config.data)
    return {
        "config": cfg,
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "variants": [{
            "adapter": r.adapter, "eval_loss": r.eval_loss, "perplexity": r.perplexity,
            "supervised_tokens": r.supervised_tokens,
            "behaviour": asdict(r.behaviour) if r.behaviour else None,
            "verdicts": judge(r.behaviour) if r.behaviour else None,
            "samples": [{"requested_length": s.requested_length, "reply": s.reply,
                         "finish_reason": s.finish_reason, **asdict(s.check)}
                        for s in r.samples],
        } for r in results],
    }


def _cell(value: float | None, percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f} %" if percent else f"{value:.3f}"


def _interval(interval: tuple[float, float] | None, percent: bool) -> str:
    if interval is None:
        return ""
    lo, hi = interval
    return f" [{lo * 100:.1f}, {hi * 100:.1f}]" if percent else f" [{lo:.2f}, {hi:.2f}]"


def _behaviour_cell(result: VariantResult, key: str, percent: bool) -> str:
    """``value [low, high] verdict``: the interval where there is one, the verdict where
    there is a target."""
    b = result.behaviour
    if b is None:
        return "n/a"
    cell = _cell(getattr(b, key), percent) + _interval(b.intervals.get(key), percent)
    if key in TARGETS:
        cell += f" **{judge(b)[key]}**"
    return cell


def _preset(name: str | None) -> str:
    return f"`{name}`" if name else "each adapter's own (its card, else `limamono`)"


def _target(low: float | None, high: float | None, percent: bool) -> str:
    def show(x: float) -> str:
        return f"{x * 100:g} %" if percent else f"{x:g}"

    if low is not None and high is not None:
        return f"{show(low)}-{show(high)}"
    return f"≥ {show(low)}" if low is not None else f"≤ {show(high)}"  # type: ignore[arg-type]


def to_markdown(config: EvalConfig, results: Sequence[VariantResult]) -> str:
    """Markdown tables: loss; behaviour with 95 % intervals and verdicts against the
    targets; median words per label."""
    names = [r.adapter for r in results]
    head = "| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    n = results[0].behaviour.samples if results and results[0].behaviour else 0
    lines = [
        "# Evaluation report", "",
        f"Model `{config.model}`; data `{config.data}`; {config.samples} prompt(s) per "
        f"length; lengths {', '.join(config.lengths)}; preset {_preset(config.preset)}; "
        f"seed {config.seed}; replies capped at {config.max_new_tokens} tokens.", "",
        "## Loss on held-out conversations (supervised tokens)", "", head.rstrip("\n"),
        "| eval loss | " + " | ".join(_cell(r.eval_loss, False) for r in results) + " |",
        "| perplexity | " + " | ".join(_cell(r.perplexity, False) for r in results) + " |",
        "| supervised tokens | " + " | ".join(str(r.supervised_tokens) for r in results) + " |",
        "", "## Behaviour", "",
        f"{n} replies per variant. Brackets: 95 % interval (Wilson for rates, a seeded "
        "bootstrap for Spearman). Each target is judged from the interval: **meets** when "
        "all of it is inside the target, **misses** when all of it is outside, **cannot "
        "tell** when it straddles a bound.", "", head.rstrip("\n"),
    ]
    for key, title, percent in _ROWS:
        cells = [_behaviour_cell(r, key, percent) for r in results]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "## Median words per requested length", "", head.rstrip("\n")]
    for label in LENGTHS:
        if label in config.lengths:
            cells = [f"{r.behaviour.median_words[label]:.0f}"
                     if r.behaviour and label in r.behaviour.median_words else "n/a"
                     for r in results]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    percent = {key: p for key, _, p in _ROWS}
    lines += ["", "Targets: " + "; ".join(f"{k} {_target(lo, hi, percent[k])}"
                                          for k, (lo, hi) in TARGETS.items()),
              "", "Plots: `lengths.png`, `metrics.png` (bars with their 95 % intervals). "
              "Every reply is in `report.json`.", ""]
    return "\n".join(lines)


def plot(results: Sequence[VariantResult], out: Path) -> list[Path]:
    """Two PNGs: words per requested length (per variant) and the metric bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        labels = [s.requested_length for s in r.samples]
        order = [x for x in LENGTHS if x in labels]
        ax.plot(order, [r.behaviour.median_words[x] for x in order], marker="o", label=r.adapter)
    ax.set_xlabel("requested length")
    ax.set_ylabel("median words in reply")
    ax.set_title("Length adherence")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "lengths.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = [k for k, _, percent in _ROWS if percent]
    width = 0.8 / max(len(results), 1)
    for n, r in enumerate(results):
        values = [getattr(r.behaviour, k) or 0.0 for k in keys]
        spans = [r.behaviour.intervals.get(k) or (v, v) for k, v in zip(keys, values,
                                                                         strict=True)]
        errors = [[v - lo for v, (lo, _) in zip(values, spans, strict=True)],
                  [hi - v for v, (_, hi) in zip(values, spans, strict=True)]]
        ax.bar([i + n * width for i in range(len(keys))], values, width, label=r.adapter,
               yerr=errors, capsize=3)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([t for k, t, p in _ROWS if p], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Behaviour metrics (share of replies, 95 % intervals)")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "metrics.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write_report(config: EvalConfig, results: Sequence[VariantResult],
                 out: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out`` (created)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [atomic.write_text(folder / "report.json",
                       json.dumps(to_json(config, results), indent=2, ensure_ascii=False)),
               atomic.write_text(folder / "report.md", to_markdown(config, results))]
    if all(r.behaviour for r in results):
        written += plot(results, folder)
    return written
