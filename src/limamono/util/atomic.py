"""Atomic file writes: a temp file beside the target, fsync, then one rename.

A reader (or a crash) sees either the old file or the whole new one, never a half-written
file; on failure the temp file is removed and the original is untouched.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically, keeping an existing file's permissions.

    Raises:
        OSError: the folder is missing or not writable, or the path holds a NUL byte
            (``path`` is then unchanged).
    """
    path = Path(path)
    if "\0" in str(path):  # os calls raise ValueError for it; callers expect an OSError
        raise OSError(errno.EINVAL, "the path holds a NUL byte", str(path).replace("\0", "\\0"))
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
