"""Soft landing on vs off, from paired ``limamono eval`` reports (docs/EVAL.md).

Each report folder holds one variant's replies; an ``--on`` folder and the ``--off`` folder
at the same position were generated with the same prompts and seeds (same ``--seed``,
``--samples``, lengths and cap), so reply i of one is paired with reply i of the other.
Several pairs (batches with different ``--seed``) are pooled.

    python bench/soft_landing.py --on runs/sl-on-a --off runs/sl-off-a [--on ... --off ...]
    python bench/soft_landing.py --on runs/ev84-dpo --off runs/ev84-demo --names dpo,demo

Figures per variant, each with its 95 % Wilson interval: style compliance (the report's
own check), replies ending mid-sentence (``style.spans.ends_sentence`` is false), replies
cut at the cap, cut replies with a quotation still open, and length adherence (the word
count falls in the requested label's bounds). The paired columns count the prompts where
only one variant had the property.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.evaluate.intervals import wilson
from limamono.style.spans import ends_sentence, split_spans

Row = dict[str, Any]


def replies(folder: Path) -> tuple[str, list[Row]]:
    """The prompts' digest and the one variant's replies of a report folder."""
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    [variant] = data["variants"]
    return data["prompts_sha256"], variant["samples"]


def open_quote(reply: str) -> bool:
    return any(s.kind == "dialogue" and not s.closed for s in split_spans(reply))


FIGURES: dict[str, Callable[[Row], bool]] = {
    "style compliance": lambda r: bool(r["style_ok"]),
    "ends mid-sentence": lambda r: not ends_sentence(r["reply"]),
    "cut at the cap": lambda r: r["finish_reason"] == "length",
    "cut with a quote open": lambda r: r["finish_reason"] == "length" and open_quote(r["reply"]),
    "length adherence": lambda r: fmt.length_for_words(len(r["reply"].split()))
    == r["requested_length"],
}


def compare(on: Sequence[Path], off: Sequence[Path],
            names: tuple[str, str] = ("on", "off")) -> list[str]:
    """The table rows (markdown) for the pooled pairs; ``names`` head the two variants'
    columns (two adapters compare the same way: ``--names dpo,demo``)."""
    pairs: list[tuple[Row, Row]] = []
    for a, b in zip(on, off, strict=True):
        digest_a, rows_a = replies(a)
        digest_b, rows_b = replies(b)
        if digest_a != digest_b or len(rows_a) != len(rows_b):
            raise SystemExit(f"{a} and {b} did not ask the same prompts")
        pairs += list(zip(rows_a, rows_b, strict=True))
    n = len(pairs)
    lines = [f"{n} paired replies", "",
             f"| figure | {names[0]} | {names[1]} | only {names[0]} | only {names[1]} |",
             "|---|---|---|---|---|"]
    for name, test in FIGURES.items():
        k_on = sum(test(x) for x, _ in pairs)
        k_off = sum(test(y) for _, y in pairs)
        only_on = sum(test(x) and not test(y) for x, y in pairs)
        only_off = sum(test(y) and not test(x) for x, y in pairs)
        cells = []
        for k in (k_on, k_off):
            low, high = wilson(k, n)
            cells.append(f"{k}/{n} = {100 * k / n:.1f} % [{100 * low:.1f}, {100 * high:.1f}]")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {only_on} | {only_off} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--on", type=Path, action="append", required=True)
    parser.add_argument("--off", type=Path, action="append", required=True)
    parser.add_argument("--names", default="on,off",
                        help="the two columns' names, for --on and --off (default: on,off)")
    args = parser.parse_args()
    first, _, second = args.names.partition(",")
    if not first or not second:
        parser.error(f"--names {args.names!r}: give two names, as in --names dpo,demo")
    print("\n".join(compare(args.on, args.off, (first, second))))


if __name__ == "__main__":
    main()
