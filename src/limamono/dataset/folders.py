"""The layout of a built dataset folder: its file names and how to recognise one.

The sources skip built folders when they look for conversations, and the outputs write and
read them; both take the names from here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILD_ENTRIES", "BUILD_VERSION", "PAIRS_FILE", "PREFS_FILE", "PREFS_VERSION",
           "SEGMENTS_DIR", "STATS_FILE", "TOKENIZED_DIR", "is_built", "is_prefs"]

STATS_FILE = "stats.json"
TOKENIZED_DIR = "tokenized"
SEGMENTS_DIR = "segments"
#: Version of the built-folder layout, stored in stats.json (2: whole-text token ids).
BUILD_VERSION = 2
#: What a build writes at the top of its folder, now or in layout 1 (train/eval.jsonl);
#: everything else there is left alone.
BUILD_ENTRIES = (SEGMENTS_DIR, TOKENIZED_DIR, STATS_FILE, "train.jsonl", "eval.jsonl")


def is_built(path: str | Path) -> bool:
    """Whether ``path`` is a built dataset folder (has stats.json and tokenized files)."""
    path = Path(path)
    return (path / STATS_FILE).is_file() and (path / TOKENIZED_DIR / "train.jsonl").is_file()


#: A preference set (``limamono data prefs``): its report and config, and its pairs.
PREFS_FILE = "prefs.json"
PAIRS_FILE = "pairs.jsonl"
#: Version of the prefs folder layout, stored in prefs.json.
PREFS_VERSION = 1


def is_prefs(path: str | Path) -> bool:
    """Whether ``path`` is a preference set written by ``limamono data prefs``."""
    path = Path(path)
    return (path / PREFS_FILE).is_file() and (path / PAIRS_FILE).is_file()
