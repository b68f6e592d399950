"""The llama.cpp engine: GGUF files (quantized) at llama.cpp speed, limamono's own samplers.

Through ``llama-cpp-python``'s C API (``llama_cpp``): the model and one context with one
live sequence (seq 0). Layers 2-3 and the decode loop are the shared ones
(:mod:`limamono.engine.loop`); each token's logits (``llama_get_logits_ith``) go through
limamono's sampler chain, since upstream llama.cpp removed tail-free sampling.

KV reuse keeps several recent conversations: the live one in seq 0, the others as saved
sequence states (``llama_state_seq_get_data``; bytes proportional to their tokens, so the
memory follows what is cached, not a fixed number of full contexts). A new prompt takes the
entry with the most reusable tokens: a common prefix, or a ContextShift
(:mod:`limamono.engine.kvreuse`) that removes the dropped turns with ``llama_memory_seq_rm`` and
moves the kept ones down with ``llama_memory_seq_add`` (llama.cpp re-rotates their keys).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limamono.engine.kvreuse import Reuse, plan_reuse
from limamono.engine.loop import PREFILL_CHUNK, EngineBase, KVSlot, SlotStart
from limamono.models import llama_lib
from limamono.models.resolve import ModelError

if TYPE_CHECKING:
    import torch

#: Conversations whose KV caches are kept (the live one and saved states).
DEFAULT_CACHE_ENTRIES = 4
#: Context when the caller gives none: the model's training context, at most this (the
#: KV cells are allocated up front: SmolLM2-135M needs ~23 KiB a token in f16).
MAX_DEFAULT_CONTEXT = 8192
#: Threads when the caller gives none (llama.cpp's own default is 4 as well).
DEFAULT_THREADS = 4
_LIVE = 0  # the sequence id every generation runs in



@dataclass(eq=False)  # entries are compared by identity, not by their (large) states
class _Entry:
    ids: list[int]  # the tokens the sequence holds
    state: bytes | None  # a saved sequence state; None for the live sequence


class _Seq:
    """The live sequence of a context (a :class:`~limamono.engine.loop.KVSlot`)."""

    def __init__(self, engine: LlamaCppEngine, held: int) -> None:
        self.engine = engine
        self.held = held  # tokens in the cache = the position of the next one

    def eval(self, ids: Sequence[int]) -> torch.Tensor:
        self.engine._decode(ids, self.held)
        self.held += len(ids)
        return self.engine._last_logits()

    def crop(self, keep: int) -> None:
        self.engine._seq_rm(keep, -1)
        self.held = keep


class LlamaCppEngine(EngineBase):
    """A GGUF model in llama.cpp, ready to stream replies (``limamono.engine.protocol.Engine``).

    Args:
        path: The ``.gguf`` file.
        name: Shown by the server and in reports (default: the file name).
        context_length: Tokens of context; default the model's training context, at most
            :data:`MAX_DEFAULT_CONTEXT`.
        cache_entries: Conversations whose KV caches are kept for reuse (0: none).
        threads: CPU threads (default :data:`DEFAULT_THREADS`, at most the CPU count).
        shift: Allow ContextShift (when the model's cache can shift positions).
        lora: A GGUF LoRA adapter file to apply (``limamono.models.gguf_lora`` converts PEFT ones).

    Raises:
        limamono.models.resolve.ModelError: The file is missing or llama.cpp cannot load it.
    """

    backend = "llamacpp"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None,
                 context_length: int | None = None,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES, threads: int | None = None,
                 shift: bool = True, lora: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if cache_entries < 0:
            raise ValueError(f"cache_entries={cache_entries}: must be >= 0 (0 disables reuse)")
        if threads is not None and threads < 1:
            raise ModelError(f"threads={threads}: must be at least 1; fix: pass --threads N "
                             "with N >= 1, or leave it out")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such GGUF file; fix: pass an existing .gguf")
        self.model_name = name or self.path.name
        self.cache_entries = cache_entries
        self._ll = llama_lib.load()
        # ctypes handles from llama.cpp (None until loaded, and again after close)
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._lora: Any = None
        self._load(context_length, threads or min(DEFAULT_THREADS, os.cpu_count() or 1))
        if lora is not None:
            self._apply_lora(Path(lora))
        self.shift = shift and bool(self._ll.llama_memory_can_shift(self._mem))
        self._entries: list[_Entry] = []  # least recently used first; at most one live

    def _load(self, context_length: int | None, threads: int) -> None:
        ll = self._ll
        llama_lib.log_lines.clear()
        self._model = ll.llama_model_load_from_file(str(self.path).encode(),
                                                    ll.llama_model_default_params())
        if not self._model:
            raise ModelError(f"{self.path}: llama.cpp cannot load this file ("
                             f"{'; '.join(llama_lib.log_lines) or 'no reason given'}); fix: pass a "
                             "GGUF model file (not an adapter) of an architecture llama.cpp "
                             "supports")
        trained = int(ll.llama_model_n_ctx_train(self._model))
        limit = context_length or min(trained, MAX_DEFAULT_CONTEXT)
        if limit < 2:
            raise ValueError(f"context_length={limit}: must be at least 2")
        self.context_length = int(limit)
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_seq_max = self.context_length, 1
        params.n_batch = params.n_ubatch = PREFILL_CHUNK
        params.n_threads = params.n_threads_batch = threads
        self._ctx = ll.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ModelError(f"{self.path}: llama.cpp cannot make a context of "
                             f"{self.context_length} tokens "
                             f"({'; '.join(llama_lib.log_lines)}); fix: "
                             "lower the context length")
        self._mem = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self._batch = ll.llama_batch_init(PREFILL_CHUNK, 0, 1)
        self.eos_ids = frozenset(t for t in range(self.n_vocab)
                                 if ll.llama_vocab_is_eog(self._vocab, t))
        # BOS first where the GGUF's tokenizer convention adds it (limamono.models.tokens).
        if ll.llama_vocab_get_add_bos(self._vocab):
            self.start_ids = (int(ll.llama_vocab_bos(self._vocab)),)

    def _apply_lora(self, path: Path) -> None:
        ll = self._ll
        llama_lib.log_lines.clear()
        self._lora = ll.llama_adapter_lora_init(self._model, str(path).encode())
        if not self._lora:
            raise ModelError(f"{path}: llama.cpp cannot load this LoRA adapter ("
                             f"{'; '.join(llama_lib.log_lines) or 'no reason given'}); fix: use "
                             "--backend torch")
        adapters = (ll.llama_adapter_lora_p_ctypes * 1)(self._lora)
        if ll.llama_set_adapters_lora(self._ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
            raise ModelError(f"{path}: llama.cpp could not apply this LoRA adapter")

    def close(self) -> None:
        """Free the model, the context and the batch (the engine is unusable afterwards)."""
        ll = self._ll
        if self._lora:
            ll.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        if getattr(self, "_ll", None) is not None:
            self.close()

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added; special tokens in it parsed)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (self._ll.llama_token * size)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, size, False, True)
        if n < 0:  # cannot happen with a byte per token plus room, but never read garbage
            raise RuntimeError(f"llama_tokenize needed {-n} tokens for {len(data)} bytes")
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens included (the exact inverse of ``tokenize``)."""
        return self._text(ids, special=True)

    def _reply_text(self, ids: Sequence[int]) -> str:
        return self._text(ids, special=False)

    def _text(self, ids: Sequence[int], special: bool) -> str:
        tokens = (self._ll.llama_token * max(len(ids), 1))(*ids)
        size = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self._ll.llama_detokenize(self._vocab, tokens, len(ids), buf, size, False,
                                          special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise RuntimeError(f"llama_detokenize kept asking for more room ({size} bytes)")

    # -- the KV cache (layer 1) -----------------------------------------------------------

    def _decode(self, ids: Sequence[int], pos: int) -> None:
        """Evaluate ``ids`` at positions ``pos``... in the live sequence; logits of the last."""
        batch = self._batch
        count = len(ids)
        if not 0 < count <= PREFILL_CHUNK:
            raise ValueError(f"{count} tokens in one batch: must be 1..{PREFILL_CHUNK}")
        batch.n_tokens = count
        for i, token in enumerate(ids):
            batch.token[i] = token
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = _LIVE
            batch.logits[i] = i == count - 1
        code = self._ll.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} at position {pos} "
                               f"({'; '.join(llama_lib.log_lines) or 'the KV cache may be full'})")

    def _last_logits(self) -> torch.Tensor:
        import numpy as np
        import torch

        pointer = self._ll.llama_get_logits_ith(self._ctx, -1)
        # A copy: llama.cpp reuses the buffer on the next decode.
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())

    def _seq_rm(self, start: int, end: int) -> None:
        self._ll.llama_memory_seq_rm(self._mem, _LIVE, start, end)

    def _open_slot(self, ids: list[int]) -> SlotStart:
        best, plan = None, Reuse(0)
        for entry in self._entries:
            candidate = plan_reuse(entry.ids, ids, shift=self.shift)
            if candidate.reused > plan.reused:
                best, plan = entry, candidate
        live = next((e for e in self._entries if e.state is None), None)
        if best is not None and best is live:
            self._entries.remove(live)
            if 2 * plan.reused < len(live.ids):  # another conversation: keep this one too
                self._keep_saved(_Entry(live.ids, self._save_state()))
        else:  # the parked conversation joins the LRU after the restore: it cannot evict it
            parked = self._park(live)
            if best is not None:
                self._restore(best, take=2 * plan.reused >= len(best.ids))
            if parked is not None:
                self._keep_saved(parked)
        if best is None:
            return SlotStart(_Seq(self, 0), 0)
        if plan.dropped:
            start, end = plan.prefix, plan.prefix + plan.dropped
            self._seq_rm(start, end)
            self._ll.llama_memory_seq_add(self._mem, _LIVE, end, -1, -plan.dropped)
        self._seq_rm(plan.reused, -1)
        return SlotStart(_Seq(self, plan.reused), plan.reused, plan.dropped)

    def _park(self, live: _Entry | None) -> _Entry | None:
        """Empty the live sequence; its saved state (if it held tokens and more than one
        entry is kept), for the caller to add to the LRU."""
        parked = None
        if live is not None:
            self._entries.remove(live)
            if live.ids and self.cache_entries > 1:
                parked = _Entry(live.ids, self._save_state())
        self._seq_rm(-1, -1)
        return parked

    def _keep_saved(self, entry: _Entry) -> None:
        """Add a saved state as the most recent entry; the live one leaves room for itself."""
        if self.cache_entries > 1:
            self._entries.append(entry)
            saved = [e for e in self._entries if e.state is not None]
            for old in saved[:max(0, len(saved) - (self.cache_entries - 1))]:
                self._entries.remove(old)

    def _save_state(self) -> bytes:
        ll = self._ll
        size = ll.llama_state_seq_get_size(self._ctx, _LIVE)
        buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self._ctx, buf, size, _LIVE)
        return bytes(buf)[:written]

    def _restore(self, entry: _Entry, take: bool) -> None:
        """Load ``entry``'s state into the live sequence; ``take``: it leaves the LRU, else
        it becomes the most recently used saved entry."""
        assert entry.state is not None
        buf = (ctypes.c_uint8 * len(entry.state)).from_buffer_copy(entry.state)
        if self._ll.llama_state_seq_set_data(self._ctx, buf, len(entry.state), _LIVE) == 0:
            raise RuntimeError("llama_state_seq_set_data could not restore a saved sequence")
        self._entries.remove(entry)
        if not take:
            self._entries.append(entry)

    def _close_slot(self, slot: KVSlot, ids: list[int] | None) -> None:
        if ids is None or self.cache_entries == 0:
            self._seq_rm(-1, -1)
            ids = []
        self._entries.append(_Entry(list(ids), None))

    def _clear_slots(self) -> None:
        self._entries.clear()
        self._seq_rm(-1, -1)


def load_llamacpp(path: str | os.PathLike[str], name: str | None = None,
                  context_length: int | None = None, threads: int | None = None,
                  cache_entries: int = DEFAULT_CACHE_ENTRIES) -> LlamaCppEngine:
    """A :class:`LlamaCppEngine` for ``path`` (see there)."""
    return LlamaCppEngine(path, name=name, context_length=context_length,
                          cache_entries=cache_entries, threads=threads)


def self_check() -> str:
    """Load the embedded model in llama.cpp and decode a few tokens (``make setup`` runs it).

    Raises:
        limamono.models.resolve.ModelError: llama-cpp-python is missing or cannot load the model.
        RuntimeError: Decoding failed.
    """
    from limamono.models.resolve import embedded_gguf
    from limamono.samplers import get_preset

    engine = LlamaCppEngine(embedded_gguf(), context_length=256, threads=1)
    try:
        reply = engine.generate("The capital of France is", get_preset("greedy"), 4)
    finally:
        engine.close()
    return f"llama.cpp engine works: {reply.completion_tokens} tokens decoded"


if __name__ == "__main__":
    print(self_check())
