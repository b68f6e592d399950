"""The generation engine: a token loop with KV-cache reuse, text streaming, stop strings.

Three layers (DESIGN.md "Layers of generation"), each built on the one below:

1. :meth:`Engine.stream_tokens`: token ids from a manual decode loop over a ``DynamicCache``.
   The engine keeps the caches of a few recent prompts (:class:`PromptCache`) and evaluates
   only the tokens after the longest common prefix, so turn N+1 of a chat costs only the
   new message, not the whole history again.
2. :meth:`Engine.stream_text`: tokenises and fits the prompt to the context, detokenises
   incrementally (never half a UTF-8 character), applies stop strings, and ends with a
   :class:`~limamono.generation.TextChunk` that carries the finish reason and token counts.
3. :meth:`Engine.generate`: the joined text as a :class:`~limamono.generation.Completion`.

One generation runs at a time (a lock): a server queues requests behind it (one worker
thread that runs each stream to its end). A thread that starts a stream while its own
earlier stream is still open gets a RuntimeError instead of a deadlock, so do not hand
half-consumed streams between pool threads that may also start new ones.
"""

from __future__ import annotations

import copy
import inspect
import re
import secrets
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limamono import format as fmt
from limamono.generation import (
    Completion,
    ContextOverflowError,
    FinishReason,
    TextChunk,
    Truncation,
)
from limamono.models import DEFAULT_MODEL, ProgressFn, load_model, resolve_model
from limamono.textstream import IncrementalDecoder, StopMatcher

if TYPE_CHECKING:
    import torch

    from limamono.samplers import SamplerSettings

#: Prompt tokens evaluated per forward pass during prefill (bounds the attention memory).
PREFILL_CHUNK = 512
#: Conversations whose KV caches are kept (SmolLM2: ~22.5 KiB a token in bf16).
DEFAULT_CACHE_ENTRIES = 4

#: A turn header of the Limamono format, where a left truncation may cut.
_TURN_START = re.compile(
    re.escape(fmt.BLOCK_SEP) + f"(?:{re.escape(fmt.INPUT)}|{re.escape(fmt.RESPONSE)})")


@dataclass
class CacheStats:
    """Prompt-token counters of the KV-cache reuse (for tests and the benchmark).

    Attributes:
        reused_tokens: Prompt tokens taken from a cache, summed over all calls.
        evaluated_tokens: Prompt tokens run through the model (prefill), summed.
        last_reused: ``reused_tokens`` of the latest call.
        last_evaluated: ``evaluated_tokens`` of the latest call.
    """

    reused_tokens: int = 0
    evaluated_tokens: int = 0
    last_reused: int = 0
    last_evaluated: int = 0


@dataclass
class _Entry:
    ids: list[int]  # exactly the tokens whose keys/values the cache holds
    cache: Any  # transformers DynamicCache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """A small LRU of (token ids, KV cache) pairs, one per recent conversation.

    :meth:`take` picks the entry with the longest common prefix with a new prompt. When
    that prefix covers at least half of the entry (the same conversation, one turn later, or
    a regenerated reply), the entry is taken over and cropped; when it covers less (another
    conversation sharing only the trigger and perhaps the sheet), the entry is copied and the
    copy cropped, so the other conversation keeps its cache. At least one prompt token is
    always left to evaluate, since the next token's logits come from evaluating one.

    Args:
        capacity: Entries kept; 0 disables reuse.
        new_cache: Factory of an empty cache.
    """

    def __init__(self, capacity: int, new_cache: Any) -> None:
        if capacity < 0:
            raise ValueError(f"cache_entries={capacity}: must be >= 0 (0 disables reuse)")
        self.capacity = capacity
        self._new_cache = new_cache
        self._entries: list[_Entry] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached prompt."""
        self._entries.clear()

    def take(self, ids: Sequence[int]) -> tuple[Any, int]:
        """A cache holding the first ``n`` tokens of ``ids``, and ``n`` (< ``len(ids)``)."""
        best, best_len = None, 0
        for entry in self._entries:
            length = common_prefix(entry.ids, ids)
            if length > best_len:
                best, best_len = entry, length
        reuse = min(best_len, len(ids) - 1)
        if best is None or reuse <= 0 or not best.cache.is_croppable:
            return self._new_cache(), 0
        if 2 * reuse >= len(best.ids):
            self._entries.remove(best)
            cache = best.cache
        else:
            cache = copy.deepcopy(best.cache)
        cache.crop(reuse - cache.get_seq_length())  # a negative count removes from the end
        return cache, reuse

    def put(self, ids: list[int], cache: Any) -> None:
        """Store a cache (holding exactly ``ids``) as the most recently used entry."""
        if self.capacity == 0:
            return
        self._entries.append(_Entry(ids, cache))
        del self._entries[:-self.capacity]

    def token_ids(self) -> list[list[int]]:
        """The token ids of every entry, least recently used first."""
        return [list(e.ids) for e in self._entries]


class Engine:
    """A loaded model, ready to stream replies (implements ``limamono.generation.Engine``).

    Args:
        model: A transformers causal LM in eval mode.
        tokenizer: Its tokenizer.
        name: Shown by the server and in reports.
        context_length: Tokens of context (prompt + reply); default the model config's
            ``max_position_embeddings``.
        cache_entries: Conversations whose KV caches are kept for reuse (0: none).
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "model",
                 context_length: int | None = None,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        from transformers import DynamicCache

        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name
        limit = context_length or getattr(model.config, "max_position_embeddings", None)
        if not limit or limit < 2:
            raise ValueError(f"context_length={limit}: must be at least 2; fix: pass "
                             "context_length explicitly")
        self.context_length = int(limit)
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.stats = CacheStats()
        self.prompt_cache = PromptCache(cache_entries, lambda: DynamicCache(config=model.config))
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id of the running stream (deadlock guard)
        # transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns).
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens included (the exact inverse of ``tokenize``)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def _reply_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def clear_cache(self) -> None:
        """Drop every kept KV cache (the next call evaluates its whole prompt)."""
        if self._owner == threading.get_ident():
            raise RuntimeError("this thread still holds an unfinished stream of this engine; "
                               "fix: exhaust or close() it before clearing the cache")
        with self._lock:
            self.prompt_cache.clear()

    # -- layer 1 --------------------------------------------------------------------------

    def stream_tokens(self, prompt_ids: Sequence[int], settings: SamplerSettings,
                      max_new_tokens: int, cancel: threading.Event | None = None,
                      ) -> Generator[int, None, None]:
        """Yield sampled token ids (layer 1); the last is EOS when the model ended the reply.

        Stops after EOS, after ``max_new_tokens`` or as soon as ``cancel`` is set (checked
        before every token and between prefill chunks). With ``settings.seed`` set, the
        same prompt gives the same tokens whether or not a cached prefix was reused (up to
        floating-point differences between chunked and whole prefill).

        Raises:
            ValueError: Empty prompt, or ``max_new_tokens`` < 0.
            RuntimeError: This thread has another stream of this engine open (waiting for
                it would deadlock).
        """
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: a prompt needs at least one token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0")
        if self._owner == threading.get_ident():
            raise RuntimeError("this thread still holds an unfinished stream of this engine; "
                               "fix: exhaust or close() it before starting another one")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield from self._decode_loop(list(prompt_ids), settings, max_new_tokens,
                                             cancel)
            finally:
                self._owner = None

    def _decode_loop(self, ids: list[int], settings: SamplerSettings, max_new_tokens: int,
                     cancel: threading.Event | None) -> Generator[int, None, None]:
        import torch

        from limamono.samplers import make_sampler

        if max_new_tokens == 0 or (cancel is not None and cancel.is_set()):
            return
        sampler = make_sampler(settings)
        seed = settings.seed if settings.seed is not None else secrets.randbits(62)
        generator = torch.Generator().manual_seed(seed)
        # Sampling runs on CPU in fp32: same draws on every device and dtype of the model.
        context = torch.zeros(len(ids) + max_new_tokens, dtype=torch.long)
        context[:len(ids)] = torch.tensor(ids)
        cache, reused = self.prompt_cache.take(ids)
        fed = ids[:reused]  # the tokens the cache holds, always
        consistent = True  # False while a forward pass may have half-updated the cache
        try:
            for start in range(reused, len(ids), PREFILL_CHUNK):
                if cancel is not None and cancel.is_set():
                    return
                consistent = False
                logits = self._forward(ids[start:start + PREFILL_CHUNK], cache)
                fed = ids[:start + PREFILL_CHUNK]
                consistent = True
            self._count(reused, len(ids) - reused)
            for step in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    return
                n = len(ids) + step
                token = sampler.sample(context[:n], logits, generator)
                context[n] = token
                yield token
                if token in self.eos_ids or step == max_new_tokens - 1:
                    return
                consistent = False
                logits = self._forward([token], cache)
                fed.append(token)
                consistent = True
        finally:
            if consistent:
                self.prompt_cache.put(fed, cache)

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Run ``ids`` after the cached tokens; next-token logits [vocab], fp32 on CPU."""
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        # inference_mode only here: a generator must not leave it switched on for its caller.
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                             **{self._cache_arg: cache})
        return out.logits[0, -1].float().cpu()

    def _count(self, reused: int, evaluated: int) -> None:
        s = self.stats
        s.last_reused, s.last_evaluated = reused, evaluated
        s.reused_tokens += reused
        s.evaluated_tokens += evaluated

    # -- layer 2 --------------------------------------------------------------------------

    def fit_prompt(self, prompt: str, max_new_tokens: int,
                   truncation: Truncation = "left") -> list[int]:
        """The prompt's token ids, cut so that they and ``max_new_tokens`` fit the context.

        ``left`` truncation of a Limamono prompt (one that starts with a trigger phrase)
        keeps the trigger and the Instruction block and drops the oldest whole turns, so
        the result is still a well-formed prompt; any other prompt, or one whose kept
        blocks still do not fit, keeps its last tokens.

        Raises:
            ContextOverflowError: ``truncation="error"`` and the prompt does not fit, or
                ``max_new_tokens`` alone fills the context.
        """
        ids = self.tokenize(prompt)
        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise ContextOverflowError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                f"context of {self.context_length} tokens; fix: lower max_new_tokens")
        if len(ids) <= budget:
            return ids
        if truncation == "error":
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {max_new_tokens}: "
                f"{len(ids) + max_new_tokens} > context length {self.context_length}; fix: "
                "shorten the prompt, lower max_new_tokens or allow truncation='left'")
        if truncation != "left":
            raise ValueError(f"truncation={truncation!r}: must be 'left' or 'error'")
        return self._drop_old_turns(prompt, budget) or ids[len(ids) - budget:]

    def _drop_old_turns(self, prompt: str, budget: int) -> list[int] | None:
        """Trigger + Instruction + the newest turns that fit, or None when that fails."""
        if not prompt.startswith(tuple(fmt.TRIGGERS.values())):
            return None
        starts = [m.start() for m in _TURN_START.finditer(prompt)]
        if not starts:
            return None
        head = prompt[:starts[0]]
        blocks = [prompt[a:b] for a, b in zip(starts, [*starts[1:], len(prompt)], strict=True)]
        # Estimate with per-block counts, then confirm on the joined text (BPE may merge
        # across a boundary, so the real count can differ by a token or two).
        sizes = [len(self.tokenize(b)) for b in blocks]
        first, total = 0, len(self.tokenize(head)) + sum(sizes)
        while first < len(blocks) - 1 and total > budget:
            total -= sizes[first]
            first += 1
        for keep_from in range(first, len(blocks)):
            ids = self.tokenize(head + "".join(blocks[keep_from:]))
            if len(ids) <= budget:
                return ids
        return None

    def stream_text(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: Truncation = "left") -> Iterator[TextChunk]:
        """Stream the reply to ``prompt`` as text chunks (layer 2).

        No chunk ends inside a UTF-8 character or contains any part of a stop string; the
        last chunk has ``finish_reason``: ``stop`` (a stop string or EOS), ``length``
        (``max_new_tokens`` reached) or ``cancelled``.

        Raises:
            ContextOverflowError: See :meth:`fit_prompt`.
        """
        ids = self.fit_prompt(prompt, max_new_tokens, truncation)
        decoder = IncrementalDecoder(self._reply_text)
        matcher = StopMatcher(stop)
        count, ended_by_eos = 0, False
        tokens = self.stream_tokens(ids, settings, max_new_tokens, cancel)
        try:
            for token in tokens:
                count += 1
                if token in self.eos_ids:
                    ended_by_eos = True
                    break
                result = matcher.feed(decoder.add(token))
                if result.text:
                    yield TextChunk(result.text, prompt_tokens=len(ids), completion_tokens=count)
                if result.stop is not None:
                    break
        finally:
            tokens.close()
        tail = "" if matcher.stopped else matcher.feed(decoder.flush()).text + matcher.flush()
        reason: FinishReason = "stop"
        if matcher.stopped is None and not ended_by_eos:
            cancelled = cancel is not None and cancel.is_set() and count < max_new_tokens
            reason = "cancelled" if cancelled else "length"
        yield TextChunk(tail, finish_reason=reason, prompt_tokens=len(ids),
                        completion_tokens=count, stop_string=matcher.stopped)

    # -- layer 3 --------------------------------------------------------------------------

    def generate(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: Truncation = "left") -> Completion:
        """The whole reply to ``prompt`` (layer 3): the joined chunks of :meth:`stream_text`."""
        parts: list[str] = []
        last = TextChunk("")
        for last in self.stream_text(prompt, settings, max_new_tokens, stop, cancel,
                                     truncation):
            parts.append(last.text)
        return Completion("".join(parts), last.finish_reason or "length", last.prompt_tokens,
                          last.completion_tokens, last.stop_string)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the tokenizer and the generation config (int or list)."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id,
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return frozenset(found)


def load_engine(model: str = DEFAULT_MODEL, adapter: str | None = None, dtype: str = "auto",
                threads: int | None = None, context_length: int | None = None,
                progress: ProgressFn | None = None,
                cache_entries: int = DEFAULT_CACHE_ENTRIES) -> Engine:
    """Resolve, load and wrap a model (and adapter) as an :class:`Engine`.

    Args:
        model: ``smollm2-135m`` (default), a model folder or a cached hub id.
        adapter: None/"none", "demo" or a PEFT adapter folder (merged into the weights).
        dtype: ``auto`` (bf16 on CPU), ``bf16``, ``fp16`` or ``fp32``.
        threads: torch CPU threads.
        context_length: Override the model's ``max_position_embeddings``.
        progress: Progress of the one-time conversion of the embedded model.
        cache_entries: Conversations whose KV caches are kept.

    Raises:
        limamono.models.ModelError: The model or adapter cannot be loaded (names the fix).
    """
    spec = resolve_model(model, progress=progress)
    loaded, tokenizer = load_model(spec, adapter=adapter, dtype=dtype, threads=threads)
    return Engine(loaded, tokenizer, name=spec.name, context_length=context_length,
                  cache_entries=cache_entries)
