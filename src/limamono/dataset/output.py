"""Dataset statistics (the card's figures and more) and the files a build writes.

Layout of a built dataset folder::

    tokenized/train.jsonl, eval.jsonl  {"source", "window", "input_ids", "labels"}
    segments/train.jsonl, eval.jsonl   {"source", "window", "segments": [{text, label}]}
    stats.json                         figures, the build config and everything reported

The token ids are the truth: each sample's text tokenised whole (``limamono.models.tokens``). The
segments show the same sample as labelled text, for reading; they are not Axolotl
``input_output`` data, since Axolotl tokenises each segment alone, which on SentencePiece
tokenizers gives other ids. ``axolotl_rows`` gives Axolotl's pre-tokenized rows instead.

A build is written whole into a temporary folder beside the output and then swapped in,
so a failed or interrupted build leaves the previous build as it was, never a mix of old
and new files; other files in the output folder are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence, Sized
from dataclasses import asdict
from pathlib import Path
from typing import Any

from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS
from limamono.dataset.build import SPLITS, BuildResult, Sample
from limamono.dataset.folders import (
    BUILD_ENTRIES,
    BUILD_VERSION,
    SEGMENTS_DIR,
    STATS_FILE,
    TOKENIZED_DIR,
    is_built,
)
from limamono.dataset.samples import IGNORE_INDEX, Tokenizer
from limamono.models.tokens import encode
from limamono.util import atomic, untrusted


class OutputError(ValueError):
    """The output folder of a build cannot be used or written; nothing was changed."""


def check_output(out: str | Path, source: str | Path) -> None:
    """Refuse an output folder before any work is done on it.

    Refused: a path with a NUL byte, an existing file or a path under one, a folder inside
    the dataset being built (the next build would read the samples as conversations), and
    a non-empty folder that is not an earlier build.

    Raises:
        OutputError: saying which rule the path breaks.
    """
    out, source = Path(out), Path(source)
    if "\0" in str(out):
        raise OutputError(f"{str(out)!r}: the output path holds a NUL byte")
    try:
        _check_output(out, source)
    except OSError as exc:
        raise OutputError(f"{out}: cannot use it ({exc.strerror or exc})") from None


def _check_output(out: Path, source: Path) -> None:
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"is under {existing}, a file"
        raise OutputError(f"{out}: {where}; the build needs a folder")
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        raise OutputError(f"{out}: is inside the dataset folder {source}; the next build "
                          "would read the samples as conversations (write it elsewhere)")
    if out.is_dir() and any(out.iterdir()) and not is_built(out):
        raise OutputError(f"{out}: holds other files and is not an earlier build; choose a "
                          "new or empty folder")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> dict[str, Any]:
    """A short identity of a tokenizer: its name, vocabulary size and a probe's ids hash
    (BOS included, so a change of the BOS convention shows)."""
    probe = "### Response: (length = long)\nÉlodie: \"Hello…\" _thinking_ *thud* 12345"
    ids = encode(tokenizer, probe)
    return {"name": str(getattr(tokenizer, "name_or_path", "") or ""),
            "vocab_size": len(tokenizer) if isinstance(tokenizer, Sized) else None,
            "probe_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]}


def _summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"count": 0, "mean": 0.0, "median": 0.0, "max": 0.0, "total": 0.0}
    return {"count": len(values), "mean": round(statistics.fmean(values), 1),
            "median": float(statistics.median(values)), "max": float(max(values)),
            "total": float(sum(values))}


def compute_stats(result: BuildResult, tokenizer: Tokenizer) -> dict[str, Any]:
    """The card's figures (conversations, messages, tokens) plus supervised tokens,
    per-role lengths, the length-label histogram, tokens per conversation, over-long
    counts, per-split counts and the quality figures (slop index, thought/sound/title
    rates of character turns; ``limamono.quality.quality_figures``)."""
    from limamono.quality import quality_figures

    words: dict[str, list[int]] = {"char": [], "user": []}
    tokens: dict[str, list[int]] = {"char": [], "user": []}
    labels: dict[str, Counter[str]] = {"char": Counter(), "user": Counter()}
    for record in result.records:
        for message in record.conversation.messages:
            words[message.role].append(fmt.word_count(message.text))
            tokens[message.role].append(len(tokenizer(" " + message.text,
                                                      add_special_tokens=False)["input_ids"]))
            labels[message.role][message.length or "none"] += 1
    per_split = {split: _split_stats(result, split) for split in SPLITS}
    return {
        "conversations": len(result.records),
        "messages": sum(len(r.conversation.messages) for r in result.records),
        "tokens": sum(result.conversation_tokens.values()),
        "samples": len(result.samples),
        "sample_tokens": sum(len(s.input_ids) for s in result.samples),
        "supervised_tokens": sum(s.supervised for s in result.samples),
        "roles": {role: {"words": _summary(words[role]), "tokens": _summary(tokens[role])}
                  for role in words},
        "length_labels": {role: {k: labels[role][k] for k in (*LENGTHS, "none")
                                 if labels[role][k]} for role in labels},
        "conversation_tokens": dict(result.conversation_tokens),
        "quality": quality_figures([r.conversation for r in result.records]),
        "overlong": {"count": len(result.overflow),
                     "by_action": dict(Counter(e.action for e in result.overflow)),
                     "conversations": [asdict(e) for e in result.overflow]},
        "splits": per_split,
        "duplicates_dropped": result.duplicates,
        "style_fixes": result.fixes,
        "skipped_no_supervised_tokens": result.skipped,
        "warnings": [{"file": p.file, "rule": p.rule, "message": p.message,
                      "message_index": p.message_index} for p in result.warnings],
    }


def _split_stats(result: BuildResult, split: str) -> dict[str, int]:
    samples = [s for s in result.samples if s.split == split]
    return {"conversations": sum(1 for v in result.splits.values() if v == split),
            "samples": len(samples), "tokens": sum(len(s.input_ids) for s in samples),
            "supervised_tokens": sum(s.supervised for s in samples)}


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``limamono.util.atomic``), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def segment_row(sample: Sample) -> dict[str, Any]:
    """A sample as labelled text (the ``segments/`` files): where from, and its pieces."""
    return {"source": sample.source, "window": sample.window,
            "segments": [{"text": p.text, "label": p.label} for p in sample.pieces]}


def axolotl_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Axolotl's pre-tokenized rows (``input_ids``, ``attention_mask``, ``labels``, exactly
    those columns, used with no ``type:``) of tokenised rows, so Axolotl trains the very
    ids ``limamono train`` does (reference/training.md §1; Axolotl's "Custom Pre-Tokenized
    Dataset" docs)."""
    out = []
    for row in rows:
        ids, labels = list(row["input_ids"]), list(row["labels"])
        if len(ids) != len(labels) or any(v not in (t, IGNORE_INDEX)
                                          for t, v in zip(ids, labels, strict=True)):
            raise ValueError(f"{row.get('source', 'a row')}: labels do not match input_ids")
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSON lines atomically."""
    atomic_write(path, _jsonl(rows))


def write_build(result: BuildResult, out: str | Path, tokenizer: Tokenizer,
                model: str | None = None) -> dict[str, Any]:
    """Write a built dataset folder (see the module docstring); returns the stats written.

    Raises:
        OutputError: the folder cannot be written (the previous build, if any, is intact).
    """
    out = Path(out)
    stats = compute_stats(result, tokenizer)
    stats["build"] = {"version": BUILD_VERSION, "format_version": fmt.FORMAT_VERSION,
                      "model": model, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "config": asdict(result.config)}
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for split in SPLITS:
            samples = [s for s in result.samples if s.split == split]
            atomic_write(staging / SEGMENTS_DIR / f"{split}.jsonl",
                         _jsonl(segment_row(s) for s in samples))
            atomic_write(staging / TOKENIZED_DIR / f"{split}.jsonl", _jsonl(
                {"source": s.source, "window": s.window, "input_ids": s.input_ids,
                 "labels": s.labels} for s in samples))
        atomic_write(staging / STATS_FILE,
                     json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        _swap_in(staging, out)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        shutil.rmtree(staging, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OutputError(f"{out}: cannot write the build ({reason}); nothing was "
                          "changed") from None
    return stats


def _swap_in(staging: Path, out: Path) -> None:
    """Put the staged build at ``out``: two renames, then the old folder's other files
    (anything not in ``BUILD_ENTRIES``) move into the new one and the old build goes."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    for entry in old.iterdir():
        if entry.name not in BUILD_ENTRIES:
            os.rename(entry, out / entry.name)
    shutil.rmtree(old, ignore_errors=True)


class BuiltFolderError(ValueError):
    """A built folder's file cannot be read back (damaged, or not written by a build)."""


def read_stats(path: str | Path) -> dict[str, Any]:
    """The stats.json of a built dataset folder.

    Raises:
        BuiltFolderError: unreadable, not JSON, or not written by a build.
    """
    file = Path(path) / STATS_FILE
    (stats,) = _read_json_lines(file, whole=True)
    if not isinstance(stats, dict) or not isinstance(stats.get("build"), dict):
        raise BuiltFolderError(f"{file}: not the stats of a build (no 'build' mapping); "
                               "rebuild it with `limamono data build`")
    return stats


def read_tokenized(path: str | Path, split: str) -> list[dict[str, Any]]:
    """The tokenised rows (``input_ids``, ``labels``, ``source``) of one split.

    Raises:
        BuiltFolderError: a line that is not a JSON object.
    """
    file = Path(path) / TOKENIZED_DIR / f"{split}.jsonl"
    if not file.is_file():
        return []
    rows = _read_json_lines(file)
    if not all(isinstance(row, dict) for row in rows):
        raise BuiltFolderError(f"{file}: a row is not a JSON object; rebuild it")
    return rows


def _read_json_lines(file: Path, whole: bool = False) -> list[Any]:
    """The JSON values of a file (one, or one per non-blank line), bounded and checked."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuiltFolderError(f"{file}: cannot read it ({exc})") from None
    numbered = [(1, text)] if whole else [(n, line) for n, line in
                                          enumerate(text.splitlines(), start=1) if line.strip()]
    values = []
    for number, line in numbered:
        try:
            values.append(untrusted.load_json(line, allow_nan=True))
        except untrusted.UntrustedError as exc:
            where = f"{file}:{number}" if not whole else str(file)
            raise BuiltFolderError(f"{where}: {exc}; rebuild it") from None
    return values
