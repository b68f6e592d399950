"""The evaluation report: JSON for machines, Markdown tables and PNG plots for people.

Every rate is shown with its 95 % interval and every target with the verdict the interval
gives (``metrics.judge``): a point inside the target band is not enough to say "meets".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from limamono.core.conversation import LENGTHS
from limamono.evaluate.metrics import TARGETS, ReplyCheck, Sample, judge, summarize
from limamono.evaluate.run import EvalConfig, VariantResult, prompts_digest
from limamono.util import atomic

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


#: What two reports must share for their variants to stand side by side: the same
#: prompts (``prompts_sha256`` covers data, lengths, samples and seed), model, reply cap,
#: samplers, policy, loss windows, dtype and the backend that generated the replies.
#: Threads only change the speed.
PAIRED_FIELDS = ("model", "lengths", "samples", "seed", "max_new_tokens", "preset", "policy",
                 "seq_len", "dtype", "soft_landing", "backend")
#: What a report written before a field existed ran with.
BEFORE_FIELD: dict[str, object] = {"soft_landing": False, "backend": "torch"}


class ReportError(ValueError):
    """An earlier report cannot join this one (unreadable, or other prompts/settings)."""


def to_json(config: EvalConfig, results: Sequence[VariantResult]) -> dict[str, Any]:
    """The whole report as JSON-ready data (replies included)."""
    cfg = asdict(config)
    cfg["data"] = str(config.data)
    return {
        "config": cfg,
        "prompts_sha256": prompts_digest(config),
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "variants": [{
            "adapter": r.adapter, "source": r.source,
            "eval_loss": r.eval_loss, "perplexity": r.perplexity,
            "supervised_tokens": r.supervised_tokens,
            "behaviour": asdict(r.behaviour) if r.behaviour else None,
            "verdicts": judge(r.behaviour) if r.behaviour else None,
            "samples": [{"requested_length": s.requested_length, "reply": s.reply,
                         "finish_reason": s.finish_reason, **asdict(s.check)}
                        for s in r.samples],
        } for r in results],
    }


def read_variants(folder: str | Path, config: EvalConfig) -> list[VariantResult]:
    """The variants of an earlier report (``folder/report.json``), to be shown beside the
    ones this run generates without generating them again.

    The stored per-reply checks are kept and the figures recomputed from them, so the
    intervals follow this version's rules.

    Raises:
        ReportError: the file is missing or malformed, or it was run on other prompts or
            settings (the message names the field and both values).
    """
    from limamono.util.untrusted import UntrustedError, load_json

    path = Path(folder) / "report.json"
    try:
        data = load_json(path.read_text(encoding="utf-8"), allow_nan=True)
    except (OSError, UnicodeDecodeError, UntrustedError) as exc:
        raise ReportError(f"{path}: cannot read it ({exc})") from exc
    try:
        theirs = data["config"]
        digest = data.get("prompts_sha256")
        if digest is None:
            raise ReportError(f"{path}: written before reports recorded their prompts "
                              "(no prompts_sha256); fix: run that evaluation again")
        mine = asdict(config)
        for key in PAIRED_FIELDS:
            want = list(mine[key]) if isinstance(mine[key], tuple) else mine[key]
            have = theirs.get(key, BEFORE_FIELD.get(key))
            if have != want:
                raise ReportError(f"{path}: {key} is {have!r} there and {want!r} "
                                  "here; fix: run both with the same options")
        if digest != prompts_digest(config):
            raise ReportError(f"{path}: its prompts differ from this run's (held-out "
                              f"conversations under {config.data} changed, or other data); "
                              "fix: run that evaluation again")
        return [_variant(v, str(path), config.seed) for v in data["variants"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{path}: not a limamono eval report ({exc!r} missing or "
                          "malformed)") from exc


def merge_variants(adapters: Sequence[str], generated: Sequence[VariantResult],
                   earlier: Sequence[VariantResult]) -> list[VariantResult]:
    """The report's variants: those asked for in ``adapters`` order (generated now or read
    from an earlier report), then the earlier reports' other variants.

    Raises:
        ReportError: two earlier reports hold a variant of the same name.
    """
    by_name: dict[str, VariantResult] = {}
    for r in earlier:
        if r.adapter in by_name:
            raise ReportError(f"--with-report: variant {r.adapter!r} is in both "
                              f"{by_name[r.adapter].source} and {r.source}; fix: pass one")
        by_name[r.adapter] = r
    by_name.update({r.adapter: r for r in generated})
    asked = [by_name.pop(a) for a in adapters if a in by_name]
    return asked + list(by_name.values())


def _variant(data: dict[str, Any], source: str, seed: int) -> VariantResult:
    names = {f.name for f in fields(ReplyCheck)}
    samples = []
    for row in data["samples"]:
        check = {k: v for k, v in row.items() if k in names}
        check["style_rules"] = tuple(check.get("style_rules", ()))
        samples.append(Sample(row["requested_length"], row["reply"], ReplyCheck(**check),
                              row["finish_reason"]))
    behaviour = summarize(samples, seed=seed) if samples else None
    return VariantResult(data["adapter"], data["eval_loss"], data["perplexity"],
                         data["supervised_tokens"], behaviour, samples, source=source)


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
    if low is not None:
        return f"≥ {show(low)}"
    return f"≤ {show(high)}" if high is not None else "none"


def _sources(results: Sequence[VariantResult]) -> list[str]:
    """A line per variant read from an earlier report (same prompts, seeds and settings)."""
    return [f"Variant `{r.adapter}` is read from `{r.source}` (same prompts, seeds and "
            "settings; not generated again)." for r in results if r.source] + \
        ([""] if any(r.source for r in results) else [])


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
        f"seed {config.seed}; replies capped at {config.max_new_tokens} tokens, generated "
        f"on {config.backend}" + ("" if config.soft_landing else " without the soft landing")
        + "; loss on torch.", "",
        *_sources(results),
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
    as_percent = {key: p for key, _, p in _ROWS}
    lines += ["", "Targets: " + "; ".join(f"{k} {_target(lo, hi, as_percent[k])}"
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
    results = [r for r in results if r.behaviour is not None]  # loss-only variants: no bars
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        assert r.behaviour is not None
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
        assert r.behaviour is not None
        values = [getattr(r.behaviour, k) or 0.0 for k in keys]
        spans = [r.behaviour.intervals.get(k) or (v, v) for k, v in zip(keys, values,
                                                                         strict=True)]
        errors = [[max(0.0, v - lo) for v, (lo, _) in zip(values, spans, strict=True)],
                  [max(0.0, hi - v) for v, (_, hi) in zip(values, spans, strict=True)]]
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
