"""Atomic file writes: a temp file beside the target, fsync, then one rename; and file
names derived from user data, bounded.

A reader (or a crash) sees either the old file or the whole new one, never a half-written
file; on failure the temp file is removed and the original is untouched. The temp file's
name is bounded too, so any name the folder allows can be written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

#: The longest stem ``bounded_stem`` makes, in UTF-8 bytes: far under the 255 bytes of a
#: name on ext4, XFS, btrfs, tmpfs and APFS, leaving room for suffixes a command adds.
STEM_BYTES = 80
#: A name's bytes kept in the temp file's name (``.NAME.XXXXXXXX.tmp``).
_TEMP_NAME_BYTES = 100


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8", "surrogateescape")[:max_bytes].decode("utf-8", "ignore")


def bounded_stem(text: str, max_bytes: int = STEM_BYTES) -> str:
    """A file stem from user data (a card's name, say) of at most ``max_bytes`` bytes.

    A longer one is cut and ends in ``-`` and 8 hex digits of the whole text's hash, so two
    long names that share a beginning still give two files.
    """
    if len(text.encode("utf-8", "surrogateescape")) <= max_bytes:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return _cut(text, max_bytes - 9).rstrip("-") + "-" + digest


def name_max(folder: str | Path) -> int:
    """The longest file name ``folder`` allows, in bytes (255 where it cannot be asked;
    the folder, or its nearest existing parent, need not exist yet)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_name(path: str | Path) -> None:
    """Refuse a file name longer than its folder allows, before anything is made for it.

    Raises:
        OSError: ``ENAMETOOLONG``, with the name's length and the limit in the message.
    """
    path = Path(path)
    size, limit = len(os.fsencode(path.name)), name_max(path.parent)
    if size > limit:
        raise OSError(errno.ENAMETOOLONG, f"the file name is {size} bytes, over the "
                      f"{limit} its folder allows", str(path)[:200])


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically, keeping an existing file's permissions.

    Raises:
        OSError: the folder is missing or not writable, or the path holds a NUL byte
            (``path`` is then unchanged).
    """
    path = Path(path)
    if "\0" in str(path):  # os calls raise ValueError for it; callers expect an OSError
        raise OSError(errno.EINVAL, "the path holds a NUL byte", str(path).replace("\0", "\\0"))
    fd, tmp = tempfile.mkstemp(prefix=f".{_cut(path.name, _TEMP_NAME_BYTES)}.", suffix=".tmp",
                               dir=path.parent)
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
