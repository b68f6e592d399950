"""Atomic file writes: a temp file beside the target, fsync, then one rename.

A reader (or a crash) sees either the old file or the whole new one, never a half-written
file; on failure the temp file is removed and the original is untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically, keeping an existing file's permissions.

    Raises:
        OSError: the folder is missing or not writable (``path`` is then unchanged).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); keep the original's mode, else a normal one.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically (newlines written as given)."""
    return write_bytes(path, text.encode("utf-8"))
