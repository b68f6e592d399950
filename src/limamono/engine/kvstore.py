"""Conversations' KV caches on disk: sequence states that survive a restart of the server.

A long chat's prompt costs seconds to read on a CPU; after a restart the llama.cpp engine
would read it all again. The engine saves a finished conversation's sequence
(``llama_state_seq_save_file``) here and, when a later prompt extends a saved prefix,
restores it instead of reading it.

- **Keyed by what made it**: one folder per identity (the model file's name, size and
  modification time, the adapter's likewise, the llama.cpp version, the KV type); inside, one
  state file per token prefix (named by the hash of its ids) and a JSON sidecar with the
  ids, the identity, the file's size and SHA-256.
- **Never loaded blindly**: a state is used only when its sidecar parses, names this
  identity, and the file has the recorded size and hash; and llama.cpp must give back the
  same tokens. Anything else (another model or build, a truncated or edited file) is
  ignored with a log line and removed.
- **Written atomically**: the state goes to a temporary name in the same folder and is
  renamed, then its sidecar is written atomically; a crash leaves no half entry that is
  ever used (a state without a sidecar is removed at the next start).
- **Bounded**: at most ``cap_bytes`` of state files (:data:`DEFAULT_CAP_MB`); the least
  recently used go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from limamono.engine.kvreuse import common_prefix
from limamono.util import atomic

log = logging.getLogger("limamono.engine")

#: Default bound on the state files of one folder, in MiB (``--kv-save-mb``).
DEFAULT_CAP_MB = 2048
#: Prompts shorter than this are not saved: reading them again is cheap.
MIN_SAVE_TOKENS = 256
#: Version of the sidecar format.
FORMAT = 1
_STATE, _META = ".kvstate", ".json"


@dataclass
class SavedState:
    """One saved sequence: its state file and the token ids it holds."""

    path: Path
    ids: tuple[int, ...]
    size: int
    sha256: str
    used: float  # last use (seconds since the epoch), for the LRU


def file_identity(path: Path | None) -> str:
    """``name:size:mtime_ns`` of a file (``none`` for None): a changed file is another key."""
    if path is None:
        return "none"
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KVStore:
    """Saved sequence states of one identity under ``root`` (see the module docstring).

    Args:
        root: The folder of every identity's states (``LIMAMONO_HOME/kvstate``).
        identity: What the states depend on (model, adapter, build, KV type), as text.
        cap_bytes: Most bytes of state files kept; the least recently used go first.
    """

    def __init__(self, root: Path, identity: dict[str, str], cap_bytes: int) -> None:
        if cap_bytes < 0:
            raise ValueError(f"cap_bytes={cap_bytes}: must be >= 0")
        self.identity = dict(identity)
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        self.folder = root / key[:24]
        self.cap_bytes = cap_bytes
        self.entries: list[SavedState] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        """Read every sidecar; drop what does not hold together (with a log line)."""
        metas = {p.stem: p for p in self.folder.glob(f"*{_META}")}
        for state in self.folder.glob(f"*{_STATE}*"):
            if state.suffix != _STATE or state.stem not in metas:  # temporary or orphaned
                log.warning("kv state %s has no sidecar (an interrupted save); removed",
                            state.name)
                state.unlink(missing_ok=True)
        for stem, meta in sorted(metas.items()):
            entry = self._read_meta(meta)
            if entry is None:
                self._remove(self.folder / f"{stem}{_STATE}", meta)
            else:
                self.entries.append(entry)
        self.entries.sort(key=lambda e: e.used)

    def _read_meta(self, meta: Path) -> SavedState | None:
        state = meta.with_suffix(_STATE)
        try:
            data = json.loads(meta.read_text("utf-8"))
            ids = tuple(int(i) for i in data["ids"])
            size, sha, used = int(data["size"]), str(data["sha256"]), float(data["used"])
            if data.get("format") != FORMAT or data.get("identity") != self.identity:
                log.warning("kv state %s was saved by another model or build; ignored",
                            state.name)
                return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("kv state %s: unreadable sidecar (%s); ignored", state.name, error)
            return None
        if not state.is_file() or state.stat().st_size != size:
            log.warning("kv state %s is missing or truncated; ignored", state.name)
            return None
        return SavedState(state, ids, size, sha, used)

    def _remove(self, state: Path, meta: Path) -> None:
        state.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)

    def best(self, ids: Sequence[int], at_least: int) -> tuple[SavedState, int] | None:
        """The saved state sharing the longest prefix with ``ids`` (more than
        ``at_least`` tokens, and fewer than all of ``ids``), and that prefix's length."""
        found, longest = None, at_least
        for entry in self.entries:
            shared = min(common_prefix(entry.ids, ids), len(ids) - 1)
            if shared > longest:
                found, longest = entry, shared
        return None if found is None else (found, longest)

    def check(self, entry: SavedState) -> bool:
        """Whether ``entry``'s file still has the recorded size and hash (else it is
        removed, with a log line)."""
        try:
            good = entry.path.stat().st_size == entry.size and _sha256(entry.path) == entry.sha256
        except OSError:
            good = False
        if not good:
            log.warning("kv state %s does not match its sidecar (truncated or changed); "
                        "removed", entry.path.name)
            self.forget(entry)
        return good

    def forget(self, entry: SavedState) -> None:
        """Remove ``entry`` and its files."""
        if entry in self.entries:
            self.entries.remove(entry)
        self._remove(entry.path, entry.path.with_suffix(_META))

    def touch(self, entry: SavedState) -> None:
        """Mark ``entry`` as just used (its sidecar records it for the next start)."""
        entry.used = time.time()
        self.entries.remove(entry)
        self.entries.append(entry)
        self._write_meta(entry)

    def save(self, ids: Sequence[int], write: Callable[[Path], bool]) -> SavedState | None:
        """Save a sequence holding ``ids`` with ``write(path)`` (True when it wrote the
        state there); replaces a state of the same ids and states that are a prefix of
        them. None when nothing was saved (too short, over the cap alone, or the write
        failed)."""
        if len(ids) < MIN_SAVE_TOKENS or self.cap_bytes == 0:
            return None
        name = hashlib.sha256(b"".join(i.to_bytes(4, "little") for i in ids)).hexdigest()[:32]
        final = self.folder / f"{name}{_STATE}"
        temporary = self.folder / f"{name}{_STATE}.{os.getpid()}.tmp"
        try:
            if not write(temporary):
                temporary.unlink(missing_ok=True)
                return None
            size = temporary.stat().st_size
            if size > self.cap_bytes:
                temporary.unlink(missing_ok=True)
                return None
            sha = _sha256(temporary)
            for old in [e for e in self.entries
                        if e.path == final or tuple(ids[:len(e.ids)]) == e.ids]:
                self.forget(old)
            os.replace(temporary, final)
        except OSError as error:
            log.warning("kv state not saved (%s)", error)
            temporary.unlink(missing_ok=True)
            return None
        entry = SavedState(final, tuple(ids), size, sha, time.time())
        self._write_meta(entry)
        self.entries.append(entry)
        self._evict()
        return entry

    def _write_meta(self, entry: SavedState) -> None:
        meta = {"format": FORMAT, "identity": self.identity, "ids": list(entry.ids),
                "size": entry.size, "sha256": entry.sha256, "used": entry.used}
        atomic.write_text(entry.path.with_suffix(_META), json.dumps(meta))

    def _evict(self) -> None:
        while self.entries and sum(e.size for e in self.entries) > self.cap_bytes:
            self.forget(self.entries[0])

    def total_bytes(self) -> int:
        """Bytes of the state files kept."""
        return sum(e.size for e in self.entries)
