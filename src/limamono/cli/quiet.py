"""Quiet starts: third-party warnings and progress bars off the normal path.

The one place that decides what the libraries under the CLI (transformers, PEFT, torch,
huggingface_hub, tqdm) may print. Without ``-v``:

- warnings raised inside other packages are dropped (PEFT's ``is_gradient_checkpointing``
  FutureWarning, transformers' advisories); limamono's own warnings are printed as one
  ``warning: ...`` line in our words;
- transformers logs errors only, and its per-file progress bars (``Loading weights``) are
  off: commands report the steps that matter themselves.

With ``-v`` the libraries speak as they normally do. Environment variables are set with
``setdefault`` (a user's own ``TRANSFORMERS_VERBOSITY`` wins) before the commands import
the libraries; libraries already imported (tests calling the CLI in-process) are told too.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, TextIO

#: Matches every module that is not limamono's: ``warnings`` filters match module names.
_OTHER_PACKAGES = r"(?!limamono(\.|$))"

#: Loggers of libraries that log warnings through Python's logging (not ``warnings``).
_CHATTY_LOGGERS = ("gguf", "accelerate", "peft")

#: Read by transformers and huggingface_hub when they are imported.
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}


def setup(verbose: bool) -> None:
    """Configure warnings and library logging for one command run (called by the root).

    Args:
        verbose: ``-v`` was given: leave the libraries' warnings, logs and bars on.
    """
    if verbose:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module=_OTHER_PACKAGES)
    for name in _CHATTY_LOGGERS:  # their warnings are about their own conversions
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.showwarning = show_warning
    if "transformers" in sys.modules:  # imported before us: the env vars came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """Print a warning as one ``warning: ...`` line on stderr (no source path, no code)."""
    from limamono.cli.common import warn

    text = str(message).strip()
    warn(text.splitlines()[0] if text else category.__name__)


def is_terminal() -> bool:
    """Whether both stdout and stderr are terminals (else: no bars, no cursor escapes)."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
