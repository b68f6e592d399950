"""Dataset builder: conversation files to masked, tokenised training samples (SPEC §6).

Public API:

- ``lint_dir(root)``: every problem of every file (schema, rules, style, duplicates).
- ``load_dir(root)``, ``load_file(path)``, ``from_limarp(data)``: inputs.
- ``BuildConfig``, ``build(root, tokenizer, config)``, ``build_samples(records, ...)``:
  samples with exact loss masks; ``write_build(result, out, tokenizer)`` writes them.
- ``compute_stats``, ``read_stats``, ``read_tokenized``, ``is_built``: figures and outputs.
- ``axolotl_rows``: Axolotl's pre-tokenized rows of the same ids and labels.
- ``layout``, ``compose``, ``SampleTokenizer``: the mask policy; whole-text token ids.
"""

from limamono.dataset.build import (
    OVERFLOW,
    BuildConfig,
    BuildResult,
    DatasetError,
    OverflowEvent,
    Sample,
    build,
    build_samples,
    plan_samples,
    split_records,
)
from limamono.dataset.lint import lint_dir, quality_problems
from limamono.dataset.output import (
    STATS_FILE,
    BuiltFolderError,
    OutputError,
    axolotl_rows,
    check_output,
    compute_stats,
    is_built,
    read_stats,
    read_tokenized,
    segment_row,
    tokenizer_fingerprint,
    write_build,
    write_jsonl,
)
from limamono.dataset.samples import (
    END_OF_TURN,
    END_SIGNAL,
    IGNORE_INDEX,
    Layout,
    Piece,
    SampleTokenizer,
    compose,
    join,
    layout,
    truncate,
)
from limamono.dataset.sources import (
    Problem,
    Record,
    check_record,
    content_hash,
    duplicate_problems,
    find_files,
    from_limarp,
    is_limarp,
    load_dir,
    load_file,
)

__all__ = [
    "END_OF_TURN",
    "END_SIGNAL",
    "IGNORE_INDEX",
    "OVERFLOW",
    "STATS_FILE",
    "BuildConfig",
    "BuildResult",
    "BuiltFolderError",
    "DatasetError",
    "Layout",
    "OutputError",
    "OverflowEvent",
    "Piece",
    "Problem",
    "Record",
    "Sample",
    "SampleTokenizer",
    "axolotl_rows",
    "build",
    "build_samples",
    "check_output",
    "check_record",
    "compose",
    "compute_stats",
    "content_hash",
    "duplicate_problems",
    "find_files",
    "from_limarp",
    "is_built",
    "is_limarp",
    "join",
    "layout",
    "lint_dir",
    "load_dir",
    "load_file",
    "plan_samples",
    "quality_problems",
    "read_stats",
    "read_tokenized",
    "segment_row",
    "split_records",
    "tokenizer_fingerprint",
    "truncate",
    "write_build",
    "write_jsonl",
]
