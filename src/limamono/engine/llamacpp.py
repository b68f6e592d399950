"""The llama.cpp engine: GGUF files (quantized) at llama.cpp speed, limamono's own samplers.

Through ``llama-cpp-python``'s C API (``llama_cpp``): the model and one context with
``parallel`` sequences (slots), each in its own KV stream of ``context_length`` cells
(``kv_unified`` off, so a ContextShift in one slot never moves another's cells). Layers 2-3
and the decode loop are the shared ones (:mod:`limamono.engine.loop`); each token's logits
(``llama_get_logits_ith``) go through limamono's sampler chain, since upstream llama.cpp
removed tail-free sampling.

**Continuous batching.** Every running stream owns one sequence. Its
:meth:`~limamono.engine.loop.KVSlot.eval` does not decode alone: it queues its tokens (one
row while generating, a prompt chunk while reading) and the step runs once every open slot
has queued (or after :data:`BATCH_WAIT_S`): one ``llama_batch`` with every slot's rows, one
``llama_decode``, and each slot gets the logits row of its last token. A stream that joins
is in the next step; one that ends leaves at once (the step no longer waits for it).

KV reuse keeps several recent conversations: the ones the idle sequences still hold, and
saved sequence states (``llama_state_seq_get_data``; bytes proportional to their tokens, so
the memory follows what is cached, not a fixed number of full contexts). A new prompt takes
the entry with the most reusable tokens, even a sequence another stream is using (its KV
stream is copied, ``llama_memory_seq_cp``; this is how ``n`` choices read a prompt once): a
common prefix, or a ContextShift (:mod:`limamono.engine.kvreuse`) that removes the dropped
turns with ``llama_memory_seq_rm`` and moves the kept ones down with
``llama_memory_seq_add`` (llama.cpp re-rotates their keys).

**LoRA adapters at run time.** Several GGUF LoRA files stay loaded (one
``llama_adapter_lora`` handle each, with a scale); every stream runs under an adapter set,
the loaded ones at their scales unless its thread chose another
(:meth:`LlamaCppEngine.using_adapters`). llama.cpp applies adapters per context, not per
sequence, so one step batches only the slots of one set and the context's adapters are set
before its decode (``llama_set_adapters_lora``). Every cached sequence carries the set it
was computed under (:attr:`_Seq.adapters`): KV reuse only looks at caches of the same set,
and a set names adapters by load number, so an adapter loaded again under the same name
never meets its predecessor's caches.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limamono.engine.kvreuse import Reuse, plan_reuse
from limamono.engine.kvstore import DEFAULT_CAP_MB, KVStore, SavedState, file_identity
from limamono.engine.loop import (
    PREFILL_CHUNK,
    Cancelled,
    EngineBase,
    GrammarState,
    KVSlot,
    SlotStart,
)
from limamono.engine.protocol import AdapterUnloadedError, GrammarError
from limamono.models import llama_lib
from limamono.models.resolve import ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from limamono.samplers.settings import Grammar

log = logging.getLogger("limamono.engine")

#: Conversations whose KV caches are kept (the live one and saved states).
DEFAULT_CACHE_ENTRIES = 4
#: Context when the caller gives none: the model's training context, at most this (the
#: KV cells are allocated up front: SmolLM2-135M needs ~23 KiB a token in f16).
MAX_DEFAULT_CONTEXT = 8192
#: Threads when the caller gives none (llama.cpp's own default is 4 as well).
DEFAULT_THREADS = 4
#: Longest wait of a slot's tokens for the other open slots' before a step runs without
#: them (a slot busy sampling or sending a chunk); measured: sampling one token with the
#: limamono chain takes 1-5 ms on SmolLM2's 49k vocabulary.
BATCH_WAIT_S = 0.02
#: How often a step that reads a prompt looks whether all its streams were cancelled (then
#: llama.cpp stops the decode at its next graph node: the engine is free within about this).
ABORT_POLL_S = 0.01
#: KV-cache element types (``--kv-type``); a quantized V cache needs flash attention.
KV_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2}
#: Flash-attention modes (``--flash-attn``), llama.cpp's ``llama_flash_attn_type``.
FLASH_ATTN: dict[str, int] = {"auto": -1, "off": 0, "on": 1}


#: An adapter set: (load number, scale) of each adapter applied, by load number. The KV
#: caches computed under one set are reused only under the same set.
AdapterKey = tuple[tuple[int, float], ...]


@dataclass
class Adapter:
    """A loaded GGUF LoRA adapter.

    Attributes:
        name: What clients call it (unique among the loaded ones).
        path: The GGUF LoRA file.
        scale: Its scale when a request does not choose one.
        number: Load number (unique over the engine's life; the KV caches' key).
        handle: llama.cpp's ``llama_adapter_lora`` pointer.
    """

    name: str
    path: Path
    scale: float
    number: int
    handle: Any = field(repr=False, default=None)


@dataclass(eq=False)  # entries are compared by identity, not by their (large) states
class _Entry:
    ids: list[int]  # the tokens the saved sequence held
    state: bytes  # llama_state_seq_get_data of that sequence
    adapters: AdapterKey = ()  # the adapter set the state was computed under


class _Grammar:
    """llama.cpp's grammar sampler (``llama_sampler_init_grammar``) as one stream's
    :class:`~limamono.engine.loop.GrammarState`: ``mask`` runs ``llama_sampler_apply`` on
    the whole vocabulary as a candidate array, ``accept`` is ``llama_sampler_accept``,
    ``rewind`` is ``llama_sampler_reset`` (llama.cpp parses the grammar again) and the
    replay of the kept tokens."""

    def __init__(self, ll: Any, handle: Any, n_vocab: int, field: str) -> None:
        import numpy as np

        self._ll, self._handle, self._field = ll, handle, field
        self._data: np.ndarray = np.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"),
                                                           ("p", "<f4")])
        self._data["id"] = np.arange(n_vocab, dtype=np.int32)
        self._array = ll.llama_token_data_array(
            self._data.ctypes.data_as(ll.llama_token_data_p), n_vocab, -1, False)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        self._data["logit"] = logits.numpy()
        self._array.size, self._array.selected, self._array.sorted = len(self._data), -1, False
        self._ll.llama_sampler_apply(self._handle, ctypes.byref(self._array))
        masked = np.ascontiguousarray(self._data["logit"])
        if not np.isfinite(masked).any():
            raise GrammarError(self._field, "no token can continue the grammar here")
        return torch.from_numpy(masked)

    def accept(self, token: int) -> None:
        self._ll.llama_sampler_accept(self._handle, token)

    def rewind(self, tokens: Sequence[int]) -> None:
        self._ll.llama_sampler_reset(self._handle)
        for token in tokens:
            self._ll.llama_sampler_accept(self._handle, token)

    def close(self) -> None:
        if self._handle:
            self._ll.llama_sampler_free(self._handle)
            self._handle = None


#: Serialises grammar parsing: llama.cpp writes its parse errors to the process's stderr
#: (``fprintf``), which is captured for the duration of the parse.
_PARSE_LOCK = threading.Lock()


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """What is written to file descriptor 2 inside the block (llama.cpp's ``fprintf``),
    as one string in the yielded list; text before llama.cpp's message (another thread's
    output) is written back to stderr."""
    import tempfile

    out: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 20).decode("utf-8", "replace")
            head, mark, tail = text.partition("error parsing grammar: ")
            if mark:
                other = head.rsplit("\n", 1)[0] + "\n" if "\n" in head else ""
                out.append(tail.split("\n\n", 1)[0].strip())
            else:
                other = text
            if other.strip():
                os.write(2, other.encode())


class _Seq:
    """One llama.cpp sequence (a :class:`~limamono.engine.loop.KVSlot` while a stream holds it)."""

    def __init__(self, engine: LlamaCppEngine, seq_id: int) -> None:
        self.engine = engine
        self.id = seq_id
        self.ids: list[int] = []  # the tokens the sequence holds (position = index)
        self.adapters: AdapterKey = ()  # the adapter set its tokens were computed under
        self.busy = False  # a stream holds it
        self.used = 0  # when a stream last released it (LRU among idle sequences)
        #: A KV-stream copy into it waits for the next decode (llama.cpp copies the
        #: buffers then): its state cannot be saved yet.
        self.copy_pending = False
        #: The cancel event of the stream holding it (a step of cancelled streams stops).
        self.cancel: threading.Event | None = None

    def eval(self, ids: Sequence[int]) -> torch.Tensor:
        return self.engine._eval(self, ids)

    def crop(self, keep: int) -> None:
        with self.engine._ctx_lock:
            self.engine._seq_rm(self.id, keep, -1)
            del self.ids[keep:]


@dataclass(eq=False)
class _Request:
    """A slot's tokens waiting for the next step, and what the step hands back."""

    seq: _Seq
    ids: list[int]
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False
    queued: float = field(default_factory=time.monotonic)


class LlamaCppEngine(EngineBase):
    """A GGUF model in llama.cpp, ready to stream replies (``limamono.engine.protocol.Engine``).

    Args:
        path: The ``.gguf`` file.
        name: Shown by the server and in reports (default: the file name).
        context_length: Tokens of context of each slot; default the model's training
            context, at most :data:`MAX_DEFAULT_CONTEXT`.
        cache_entries: Conversations whose KV caches are kept as saved states besides the
            ones idle slots hold (0: none, and slots forget their tokens).
        threads: CPU threads (default :data:`DEFAULT_THREADS`, at most the CPU count).
        shift: Allow ContextShift (when the model's cache can shift positions).
        lora: A GGUF LoRA adapter file to apply (``limamono.models.gguf_lora`` converts PEFT
            ones); more can be loaded later (:meth:`load_adapter`).
        lora_name: What clients call ``lora`` (default: its file name without ``.gguf``).
        parallel: Slots: streams decoded together in one batch (KV memory grows with it:
            each slot has ``context_length`` cells).
        gpu_layers: Layers offloaded to a GPU; None or -1: all when llama.cpp was built
            with a GPU backend (else 0).
        kv_type: KV-cache element type (:data:`KV_TYPES`); quantized types need
            ``flash_attn`` on or auto.
        flash_attn: ``auto``, ``on`` or ``off`` (:data:`FLASH_ATTN`).
        state_dir: Where finished conversations' sequence states are saved and restored
            across restarts (:mod:`limamono.engine.kvstore`); None: not on disk.
        state_cap_mb: Most MiB of saved states (least recently used go first).

    Raises:
        limamono.models.resolve.ModelError: The file is missing or llama.cpp cannot load it.
    """

    backend = "llamacpp"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None,
                 context_length: int | None = None,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES, threads: int | None = None,
                 shift: bool = True, lora: str | os.PathLike[str] | None = None,
                 lora_name: str | None = None, parallel: int = 1,
                 gpu_layers: int | None = None, kv_type: str = "f16",
                 flash_attn: str = "auto", state_dir: str | os.PathLike[str] | None = None,
                 state_cap_mb: int = DEFAULT_CAP_MB) -> None:
        super().__init__(parallel)
        if cache_entries < 0:
            raise ValueError(f"cache_entries={cache_entries}: must be >= 0 (0 disables reuse)")
        if threads is not None and threads < 1:
            raise ModelError(f"threads={threads}: must be at least 1; fix: pass --threads N "
                             "with N >= 1, or leave it out")
        if kv_type not in KV_TYPES:
            raise ModelError(f"kv_type={kv_type!r}: must be one of {', '.join(KV_TYPES)}")
        if flash_attn not in FLASH_ATTN:
            raise ModelError(f"flash_attn={flash_attn!r}: must be one of "
                             f"{', '.join(FLASH_ATTN)}")
        if kv_type not in ("f32", "f16", "bf16") and flash_attn == "off":
            raise ModelError(f"kv_type={kv_type}: a quantized KV cache needs flash attention; "
                             "fix: pass --flash-attn on (or auto), or --kv-type f16")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such GGUF file; fix: pass an existing .gguf")
        self.model_name = name or self.path.name
        self.cache_entries = cache_entries
        self.kv_type, self.flash_attn = kv_type, flash_attn
        self._ll = llama_lib.load()
        # ctypes handles from llama.cpp (None until loaded, and again after close)
        self.gpu_offload = bool(self._ll.llama_supports_gpu_offload())
        self.gpu_layers = (-1 if self.gpu_offload else 0) if gpu_layers is None else gpu_layers
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._adapters: dict[str, Adapter] = {}  # by name, in load order
        self._numbers = itertools.count(1)
        self._applied: AdapterKey = ()  # the set the context has now
        self._choice = threading.local()  # a thread's adapter choice (using_adapters)
        self._ctx_lock = threading.RLock()  # every call on the context and the slots' books
        self._step = threading.Condition(threading.Lock())  # the batching rendezvous
        self._pending: list[_Request] = []
        self._stepping = False  # a thread is running a step (outside the condition's lock)
        self._open = 0  # slots held by streams (a step waits for each one's tokens)
        self._ticks = itertools.count(1)
        #: Steps run and the most slots one step held (for tests and the benchmark).
        self.steps = self.widest_step = 0
        #: Steps that llama.cpp stopped half-way because all their streams were cancelled.
        self.aborted_steps = 0
        self._watch = threading.Condition(threading.Lock())  # the abort watcher's books
        self._watched: list[_Request] | None = None  # the running step, while it reads
        self._closing = False
        self._load(context_length, threads or min(DEFAULT_THREADS, os.cpu_count() or 1))
        self._abort_flag, self._abort_callback = _abort_flag(), None
        if self._abort_flag is not None:
            flag, callback = self._abort_flag
            self._abort_callback = self._ll.ggml_abort_callback(callback)
            self._ll.llama_set_abort_callback(self._ctx, self._abort_callback,
                                              ctypes.addressof(flag))
            self.interrupts_eval = True
            threading.Thread(target=self._watch_steps, name="limamono-abort-watch",
                             daemon=True).start()
        if lora is not None:
            self.load_adapter(lora_name or Path(lora).stem, Path(lora))
        self.lora_path = None if lora is None else Path(lora)
        #: The set the server started with: the only one whose KV states go to disk.
        self._base_key = self._default_key()
        self.shift = shift and bool(self._ll.llama_memory_can_shift(self._mem))
        self._seqs = [_Seq(self, i) for i in range(self.parallel)]
        self._saved: list[_Entry] = []  # least recently used first
        self._store = None if state_dir is None else KVStore(
            Path(state_dir), {"model": file_identity(self.path),
                              "adapter": file_identity(self.lora_path),
                              "llama_cpp": str(getattr(self._ll, "__version__", "?")),
                              "kv_type": self.kv_type}, state_cap_mb * 1024 * 1024)
        #: Prompt tokens restored from disk instead of read (for tests and the benchmark).
        self.restored_tokens = 0

    def _load(self, context_length: int | None, threads: int) -> None:
        ll = self._ll
        llama_lib.log_lines.clear()
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = self.gpu_layers
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), model_params)
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
        # One KV stream of context_length cells per slot (llama.cpp gives each sequence
        # n_ctx / n_seq_max cells when the cache is not unified).
        params.n_ctx, params.n_seq_max = self.context_length * self.parallel, self.parallel
        params.kv_unified = False
        params.n_batch = _batch_capacity(self.parallel)
        params.n_ubatch = PREFILL_CHUNK
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = KV_TYPES[self.kv_type]
        params.flash_attn_type = FLASH_ATTN[self.flash_attn]
        self._ctx = ll.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ModelError(f"{self.path}: llama.cpp cannot make a context of "
                             f"{self.context_length} tokens x {self.parallel} slot(s) "
                             f"({'; '.join(llama_lib.log_lines)}); fix: "
                             "lower the context length or --parallel")
        self._mem = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self._batch = ll.llama_batch_init(_batch_capacity(self.parallel), 0, 1)
        self.eos_ids = frozenset(t for t in range(self.n_vocab)
                                 if ll.llama_vocab_is_eog(self._vocab, t))
        # BOS first where the GGUF's tokenizer convention adds it (limamono.models.tokens).
        if ll.llama_vocab_get_add_bos(self._vocab):
            self.start_ids = (int(ll.llama_vocab_bos(self._vocab)),)

    # -- LoRA adapters at run time ---------------------------------------------------

    def load_adapter(self, name: str, path: str | os.PathLike[str], scale: float = 1.0) -> Adapter:
        """Load the GGUF LoRA file ``path`` as ``name``; new streams apply it at ``scale``
        unless their thread chooses another set (:meth:`using_adapters`).

        Waits for the current step (the context is locked while llama.cpp reads the file).

        Raises:
            ValueError: ``name`` is loaded already. ModelError: llama.cpp cannot load it.
        """
        path = Path(path)
        with self._ctx_lock:
            if name in self._adapters:
                raise ValueError(f"adapter {name!r} is loaded already; unload it first")
            llama_lib.log_lines.clear()
            handle = self._ll.llama_adapter_lora_init(self._model, str(path).encode())
            if not handle:
                raise ModelError(f"{path}: llama.cpp cannot load this LoRA adapter ("
                                 f"{'; '.join(llama_lib.log_lines) or 'no reason given'}); "
                                 "fix: use --backend torch")
            adapter = Adapter(name, path, float(scale), next(self._numbers), handle)
            self._adapters[name] = adapter
            return adapter

    def unload_adapter(self, name: str) -> None:
        """Unload adapter ``name`` and forget the KV caches computed under it.

        Raises:
            KeyError: No adapter of that name. RuntimeError: A running stream uses it.
        """
        with self._ctx_lock:
            adapter = self._adapters.get(name)
            if adapter is None:
                raise KeyError(name)
            if any(seq.busy and any(n == adapter.number for n, _ in seq.adapters)
                   for seq in self._seqs):
                raise RuntimeError(f"adapter {name!r} is in use by a running reply; try "
                                   "again when it ends")
            if self._applied and any(n == adapter.number for n, _ in self._applied):
                self._set_context_adapters(())
            for seq in self._seqs:
                if any(n == adapter.number for n, _ in seq.adapters):
                    self._seq_rm(seq.id, -1, -1)
                    seq.ids, seq.adapters = [], ()
            self._saved = [e for e in self._saved
                           if all(n != adapter.number for n, _ in e.adapters)]
            del self._adapters[name]
            self._ll.llama_adapter_lora_free(adapter.handle)

    def set_adapter_scale(self, name: str, scale: float) -> None:
        """The scale new streams apply adapter ``name`` at (its caches stay apart: the
        scale is part of their key).

        Raises:
            KeyError: No adapter of that name.
        """
        with self._ctx_lock:
            self._adapters[name].scale = float(scale)

    def adapters(self) -> list[Adapter]:
        """The loaded adapters, in load order."""
        with self._ctx_lock:
            return list(self._adapters.values())

    @contextlib.contextmanager
    def using_adapters(self, choice: Mapping[str, float] | None) -> Iterator[None]:
        """Streams this thread starts inside the block apply ``choice`` (adapter name to
        scale; empty: the base model) instead of every loaded adapter at its own scale.

        A name at scale 0 that is no longer loaded is left out (it changes nothing).

        Raises:
            AdapterUnloadedError: A name with another scale that is not loaded (unloaded
                since the request chose it; checked now and when a stream starts).
        """
        if choice is not None:
            with self._ctx_lock:
                missing = [name for name, scale in choice.items()
                           if scale != 0 and name not in self._adapters]
                if missing:
                    raise AdapterUnloadedError(missing[0])
        before = getattr(self._choice, "value", None)
        self._choice.value = None if choice is None else dict(choice)
        try:
            yield
        finally:
            self._choice.value = before

    def _default_key(self) -> AdapterKey:
        return tuple(sorted((a.number, a.scale) for a in self._adapters.values()))

    def _chosen_key(self) -> AdapterKey:
        """The adapter set of a stream this thread starts now (under the context lock)."""
        choice: dict[str, float] | None = getattr(self._choice, "value", None)
        if choice is None:
            return self._default_key()
        key = []
        for name, scale in choice.items():
            if scale == 0:
                continue
            adapter = self._adapters.get(name)
            if adapter is None:  # unloaded since the request was checked
                raise AdapterUnloadedError(name)
            key.append((adapter.number, float(scale)))
        return tuple(sorted(key))

    def _set_context_adapters(self, key: AdapterKey) -> None:
        """Apply adapter set ``key`` to the context (under the context lock)."""
        if key == self._applied:
            return
        ll = self._ll
        by_number = {a.number: a for a in self._adapters.values()}
        handles = (ll.llama_adapter_lora_p_ctypes * max(1, len(key)))(
            *[by_number[n].handle for n, _ in key])
        scales = (ctypes.c_float * max(1, len(key)))(*[s for _, s in key])
        if ll.llama_set_adapters_lora(self._ctx, handles, len(key), scales):
            names = [a.name for a in self._adapters.values() if a.number in dict(key)]
            raise RuntimeError(f"llama.cpp could not apply the LoRA adapters {names}")
        self._applied = key

    def close(self) -> None:
        """Free the model, the context and the batch (the engine is unusable afterwards)."""
        ll = self._ll
        with self._watch:
            self._closing = True
            self._watch.notify_all()
        for adapter in self._adapters.values():
            ll.llama_adapter_lora_free(adapter.handle)
        self._adapters.clear()
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
        if getattr(self, "_ll", None) is not None and hasattr(self, "_watch"):
            self.close()

    # -- grammars -----------------------------------------------------------------------

    supports_grammar = True

    def _open_grammar(self, grammar: Grammar) -> GrammarState:
        """llama.cpp's grammar sampler for ``grammar`` (start rule ``root``).

        Raises:
            GrammarError: llama.cpp cannot parse it (its message: the parser's, from its
                stderr, or its log line: no ``root`` rule, left recursion).
        """
        ll = self._ll
        with _PARSE_LOCK:
            llama_lib.log_lines.clear()
            with _stderr_captured() as parse_errors:
                handle = ll.llama_sampler_init_grammar(self._vocab, grammar.gbnf.encode(),
                                                       b"root")
            logged = list(llama_lib.log_lines)
        if not handle:
            reasons = [*parse_errors, *(line for line in logged
                                        if line != "failed to parse grammar")]
            raise GrammarError(grammar.field, "llama.cpp cannot parse this grammar: "
                               + ("; ".join(reasons) or "no reason given"))
        return _Grammar(ll, handle, self.n_vocab, grammar.field)

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

    # -- the batched step (layer 1) -------------------------------------------------------

    def _eval(self, seq: _Seq, ids: Sequence[int]) -> torch.Tensor:
        """Evaluate ``ids`` after ``seq``'s tokens in the next step; their last logits.

        The calling thread waits until every open slot has queued its tokens (or the
        oldest queued ones waited :data:`BATCH_WAIT_S`); then one of the waiting threads
        runs the step for all of them.
        """
        if not 0 < len(ids) <= PREFILL_CHUNK:
            raise ValueError(f"{len(ids)} tokens in one evaluation: must be 1..{PREFILL_CHUNK}")
        request = _Request(seq, list(ids))
        step = self._step
        with step:
            self._pending.append(request)
            step.notify_all()
            while not request.done:
                if self._stepping or not self._pending:
                    step.wait()
                    continue
                left = self._pending[0].queued + BATCH_WAIT_S - time.monotonic()
                if len(self._pending) < self._open and left > 0:
                    step.wait(left)
                    continue
                batch = self._take_batch()
                self._stepping = True
                step.release()
                try:
                    self._run_step(batch)
                finally:
                    step.acquire()
                    self._stepping = False
                    step.notify_all()
        if request.error is not None:
            raise request.error
        assert request.logits is not None
        return request.logits

    def _take_batch(self) -> list[_Request]:
        """The queued requests of the next step: every generating slot's row, then prompt
        chunks (oldest first) while they fit the batch."""
        room = _batch_capacity(self.parallel)
        # llama.cpp applies adapters per context: a step holds one adapter set (the oldest
        # queued request's); the others wait for the next step.
        key = min(self._pending, key=lambda r: r.queued).seq.adapters
        rows = sorted(self._pending, key=lambda r: len(r.ids) > 1)  # stable: FIFO within
        batch: list[_Request] = []
        for request in rows:
            if request.seq.adapters == key and len(request.ids) <= room:
                batch.append(request)
                room -= len(request.ids)
        for request in batch:
            self._pending.remove(request)
        return batch

    def _run_step(self, batch: list[_Request]) -> None:
        """One ``llama_decode`` of every request in ``batch``; hands each its logits row."""
        import numpy as np
        import torch

        ll, llama_batch = self._ll, self._batch
        try:
            with self._ctx_lock:
                self._set_context_adapters(batch[0].seq.adapters)
                n, last = 0, []
                for request in batch:
                    pos = len(request.seq.ids)
                    for i, token in enumerate(request.ids):
                        llama_batch.token[n] = token
                        llama_batch.pos[n] = pos + i
                        llama_batch.n_seq_id[n] = 1
                        llama_batch.seq_id[n][0] = request.seq.id
                        llama_batch.logits[n] = i == len(request.ids) - 1
                        n += 1
                    last.append(n - 1)
                llama_batch.n_tokens = n
                self.steps += 1
                self.widest_step = max(self.widest_step, len(batch))
                watched = self.interrupts_eval and n > len(batch)  # a prompt chunk is in it
                if watched:
                    with self._watch:
                        self._watched = batch
                        self._watch.notify_all()
                code = ll.llama_decode(self._ctx, llama_batch)
                if watched:
                    with self._watch:  # after this, the watcher cannot raise the flag
                        self._watched = None
                        assert self._abort_flag is not None
                        aborted = self._abort_flag[0][0] != b"\0"
                        self._abort_flag[0][0] = b"\0"
                    if aborted and code == 2:  # llama.cpp stopped it: every stream cancelled
                        self.aborted_steps += 1
                        raise Cancelled()
                if code != 0:
                    raise RuntimeError(
                        f"llama_decode failed with code {code} ({n} tokens of "
                        f"{len(batch)} slot(s); "
                        f"{'; '.join(llama_lib.log_lines) or 'the KV cache may be full'})")
                for request, row in zip(batch, last, strict=True):
                    pointer = ll.llama_get_logits_ith(self._ctx, row)
                    # A copy: llama.cpp reuses the buffer on the next decode.
                    request.logits = torch.from_numpy(
                        np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
                    request.seq.ids.extend(request.ids)
                    request.seq.copy_pending = False
        except BaseException as error:  # every slot in the step learns it, in its own thread
            for request in batch:
                request.error = error
        finally:
            for request in batch:
                request.done = True

    def _watch_steps(self) -> None:
        """The abort watcher's thread: while a step reads a prompt chunk, raise llama.cpp's
        abort flag once every stream in the step is cancelled."""
        watch = self._watch
        with watch:
            while not self._closing:
                batch = self._watched
                if batch is None:
                    watch.wait()
                    continue
                if all(r.seq.cancel is not None and r.seq.cancel.is_set() for r in batch):
                    assert self._abort_flag is not None
                    self._abort_flag[0][0] = b"\1"
                    watch.wait()  # until the step ends
                else:
                    watch.wait(ABORT_POLL_S)

    def _watch_cancel(self, slot: KVSlot, cancel: threading.Event | None) -> None:
        if isinstance(slot, _Seq):  # a test may wrap the engine's slots
            slot.cancel = cancel

    # -- the KV cache (layer 1) -----------------------------------------------------------

    def _seq_rm(self, seq_id: int, start: int, end: int) -> None:
        self._ll.llama_memory_seq_rm(self._mem, seq_id, start, end)

    def _open_slot(self, ids: list[int]) -> SlotStart:
        import torch

        # torch only samples here (vector ops on the 49k logits), in the stream's thread:
        # one OpenMP thread. With two, every op waits at a barrier for the other core:
        # 10x slower while another process uses it (docs/BENCHMARKS.md, "Parallel slots").
        # The setting is per thread (omp_set_num_threads): other threads keep theirs.
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        with self._ctx_lock:
            key = self._chosen_key()
            seq, plan = self._place(ids, key)
            seq.adapters = key
            if plan.dropped:
                start, end = plan.prefix, plan.prefix + plan.dropped
                self._seq_rm(seq.id, start, end)
                self._ll.llama_memory_seq_add(self._mem, seq.id, end, -1, -plan.dropped)
            self._seq_rm(seq.id, plan.reused, -1)
            seq.ids = list(ids[:plan.reused])
            seq.busy = True
        with self._step:
            self._open += 1
        return SlotStart(seq, plan.reused, plan.dropped)

    def _place(self, ids: list[int], key: AdapterKey) -> tuple[_Seq, Reuse]:
        """An idle sequence loaded with the cached tokens that ``ids`` reuses best (before
        the shift and the cut) among the caches of adapter set ``key``, and the plan."""
        best: _Seq | _Entry | None = None
        plan = Reuse(0)
        sources: list[_Seq | _Entry] = [*self._seqs, *self._saved]
        for source in sources:
            if source.adapters != key:  # computed under other adapters: never reused
                continue
            candidate = plan_reuse(source.ids, ids, shift=self.shift)
            if candidate.reused > plan.reused:
                best, plan = source, candidate
        idle = [s for s in self._seqs if not s.busy]  # never empty: one permit per slot
        disk = (self._store.best(ids, plan.reused)
                if self._store is not None and key == self._base_key else None)
        if disk is not None:
            seq = min(idle, key=lambda s: (bool(s.ids), s.used))
            parked = self._park(seq)
            loaded = self._load_file(disk[0], seq)
            if parked is not None:
                self._keep_saved(parked)
            if loaded:
                self.restored_tokens += disk[1]
                return seq, Reuse(disk[1])
            return self._place(ids, key)  # the bad file is forgotten: the next best
        if isinstance(best, _Seq) and not best.busy:
            if 2 * plan.reused < len(best.ids):  # another conversation: keep this one too
                self._keep_saved(_Entry(list(best.ids), self._save_state(best.id),
                                        best.adapters))
            return best, plan
        # The idle sequence that cached least recently (an empty one first) takes it.
        seq = min(idle, key=lambda s: (bool(s.ids), s.used))
        parked = self._park(seq)
        if isinstance(best, _Seq):  # a running stream's sequence: copy its KV stream
            self._ll.llama_memory_seq_cp(self._mem, best.id, seq.id, -1, -1)
            seq.ids, seq.copy_pending = list(best.ids), True
        elif isinstance(best, _Entry):
            self._restore(best, seq, take=2 * plan.reused >= len(best.ids))
        if parked is not None:  # joins the LRU after the restore: it cannot evict it
            self._keep_saved(parked)
        return seq, plan

    def _park(self, seq: _Seq) -> _Entry | None:
        """Empty an idle sequence; its saved state (if it held tokens and saved states are
        kept), for the caller to add to the LRU."""
        parked = None
        if seq.ids and self.cache_entries > 1:
            parked = _Entry(list(seq.ids), self._save_state(seq.id), seq.adapters)
        self._seq_rm(seq.id, -1, -1)
        seq.ids = []
        return parked

    def _keep_saved(self, entry: _Entry) -> None:
        """Add a saved state as the most recent entry; at most ``cache_entries - 1``."""
        if self.cache_entries > 1:
            self._saved.append(entry)
            del self._saved[:max(0, len(self._saved) - (self.cache_entries - 1))]

    def _save_state(self, seq_id: int) -> bytes:
        ll = self._ll
        size = ll.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self._ctx, buf, size, seq_id)
        return bytes(buf)[:written]

    def _restore(self, entry: _Entry, seq: _Seq, take: bool) -> None:
        """Load ``entry``'s state into ``seq``; ``take``: it leaves the LRU, else it becomes
        the most recently used saved entry."""
        buf = (ctypes.c_uint8 * len(entry.state)).from_buffer_copy(entry.state)
        if self._ll.llama_state_seq_set_data(self._ctx, buf, len(entry.state), seq.id) == 0:
            raise RuntimeError("llama_state_seq_set_data could not restore a saved sequence")
        seq.ids = list(entry.ids)
        self._saved.remove(entry)
        if not take:
            self._saved.append(entry)

    def _load_file(self, entry: SavedState, seq: _Seq) -> bool:
        """Restore a state saved on disk into ``seq`` (emptied); False (logged, the entry
        forgotten) when the file does not match what was saved."""
        assert self._store is not None
        if not self._store.check(entry):
            return False
        capacity = len(entry.ids) + 1
        tokens = (self._ll.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        read = self._ll.llama_state_seq_load_file(self._ctx, str(entry.path).encode(), seq.id,
                                                  tokens, capacity, ctypes.byref(count))
        if read == 0 or tuple(tokens[:count.value]) != entry.ids:
            log.warning("kv state %s: llama.cpp refused it or gave back other tokens; "
                        "ignored", entry.path.name)
            self._seq_rm(seq.id, -1, -1)
            self._store.forget(entry)
            return False
        seq.ids = list(entry.ids)
        self._store.touch(entry)
        return True

    def _save_file(self, seq: _Seq, path: Path) -> bool:
        """Write ``seq``'s state and tokens to ``path`` (``llama_state_seq_save_file``)."""
        tokens = (self._ll.llama_token * len(seq.ids))(*seq.ids)
        return bool(self._ll.llama_state_seq_save_file(self._ctx, str(path).encode(), seq.id,
                                                       tokens, len(seq.ids)))

    # -- llama.cpp server's /slots/{id}?action=save|restore|erase -----------------------

    def _idle_seq(self, index: int) -> _Seq:
        if not 0 <= index < self.parallel:
            raise ValueError(f"slot {index}: there are {self.parallel} slots (0-"
                             f"{self.parallel - 1})")
        seq = self._seqs[index]
        if seq.busy:
            raise RuntimeError(f"slot {index} is generating; try again when it is idle")
        return seq

    def slot_tokens(self) -> list[tuple[bool, int]]:
        """(busy, tokens cached) of every slot."""
        with self._ctx_lock:
            return [(seq.busy, len(seq.ids)) for seq in self._seqs]

    def save_slot(self, index: int, path: Path) -> int:
        """Write idle slot ``index``'s KV state and tokens to ``path``; the tokens saved.

        Raises:
            ValueError: No such slot. RuntimeError: It is generating, or the write failed.
        """
        with self._ctx_lock:
            seq = self._idle_seq(index)
            if seq.copy_pending or not self._save_file(seq, path):
                raise RuntimeError(f"slot {index}: llama.cpp could not write {path.name}")
            return len(seq.ids)

    def restore_slot(self, index: int, path: Path) -> int:
        """Load a state written by :meth:`save_slot` (of this model) into idle slot
        ``index``; the tokens restored.

        Raises:
            ValueError: No such slot, or the file is not a state of this model and build.
            RuntimeError: The slot is generating.
        """
        with self._ctx_lock:
            seq = self._idle_seq(index)
            capacity = self.context_length
            tokens = (self._ll.llama_token * capacity)()
            count = ctypes.c_size_t(0)
            self._seq_rm(seq.id, -1, -1)
            seq.ids = []
            read = self._ll.llama_state_seq_load_file(self._ctx, str(path).encode(), seq.id,
                                                      tokens, capacity, ctypes.byref(count))
            if read == 0:
                self._seq_rm(seq.id, -1, -1)
                raise ValueError(f"{path.name}: not a slot state of this model and build "
                                 f"({'; '.join(llama_lib.log_lines) or 'llama.cpp refused it'})")
            seq.ids = list(tokens[:count.value])
            seq.adapters = self._base_key  # a slot file does not record its adapters
            return len(seq.ids)

    def erase_slot(self, index: int) -> int:
        """Forget idle slot ``index``'s cached tokens; how many there were."""
        with self._ctx_lock:
            seq = self._idle_seq(index)
            erased = len(seq.ids)
            self._seq_rm(seq.id, -1, -1)
            seq.ids = []
            return erased

    def _close_slot(self, slot: KVSlot, ids: list[int] | None) -> None:
        assert isinstance(slot, _Seq)
        with self._ctx_lock:
            if ids is None or self.cache_entries == 0 or slot.copy_pending:
                self._seq_rm(slot.id, -1, -1)
                slot.ids = []
            elif (self._store is not None and slot.adapters == self._base_key
                  and not any(e.ids == tuple(slot.ids) for e in self._store.entries)):
                self._store.save(slot.ids, lambda path: self._save_file(slot, path))
            slot.busy = False
            slot.cancel = None
            slot.used = next(self._ticks)
        with self._step:
            self._open -= 1
            self._step.notify_all()  # a step waiting for this slot's tokens goes now

    def _clear_slots(self) -> None:
        with self._ctx_lock:
            self._saved.clear()
            for seq in self._seqs:
                if not seq.busy:
                    self._seq_rm(seq.id, -1, -1)
                    seq.ids = []


def _abort_flag() -> tuple[ctypes.Array[ctypes.c_char], int] | None:
    """A two-byte flag and the address of a C function that tells whether it is raised,
    for ``llama_set_abort_callback``; None where libc's ``strlen`` cannot be found.

    ggml calls the abort callback (``bool (*)(void *)``) from its compute thread before
    every graph node, hundreds of times a decode. A Python callback would take the GIL for
    each call, and wait up to the 5 ms switch interval behind the server's threads every
    time; libc's ``strlen`` reads the flag without Python: on a buffer of one byte and a
    NUL it returns 0 or 1, a valid ``bool`` in the return register (x86-64 AL, AArch64 w0).
    """
    try:
        strlen = ctypes.CDLL(None).strlen
    except (OSError, AttributeError):
        return None
    address = ctypes.cast(strlen, ctypes.c_void_p).value
    if not address:
        return None
    return ctypes.create_string_buffer(2), address


def _batch_capacity(parallel: int) -> int:
    """Tokens one step may hold: a prompt chunk and a row for every other slot."""
    return PREFILL_CHUNK + parallel - 1


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
