"""The torch engine (any transformers causal LM) and ``load_engine``, the one loader.

Layers 2-3 and the decode loop live in :mod:`limamono.engine.loop` and are shared with the
llama.cpp engine; this module supplies the torch KV cache: a small LRU of ``DynamicCache``
objects (:class:`PromptCache`), one per recent conversation, so turn N+1 of a chat costs
only the new message, not the whole history again.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limamono.engine.kvreuse import Reuse, plan_reuse
from limamono.engine.loop import (
    EngineBase,
    KVSlot,
    SlotStart,
)
from limamono.models import tokens

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_CACHE_ENTRIES", "Engine", "PromptCache", "RopeShift", "rope_shifter"]

#: Conversations whose KV caches are kept (SmolLM2: ~22.5 KiB a token in bf16).
DEFAULT_CACHE_ENTRIES = 4


@dataclass
class _Entry:
    ids: list[int]  # exactly the tokens whose keys/values the cache holds
    cache: Any  # transformers DynamicCache


class PromptCache:
    """A small LRU of (token ids, KV cache) pairs, one per recent conversation.

    :meth:`take` picks the entry that lets a new prompt skip the most tokens: a common
    prefix or, with ``shift``, a ContextShift (:mod:`limamono.engine.kvreuse`). When the reused
    tokens cover at least half of the entry (the same conversation, one turn later, or a
    regenerated reply), the entry is taken over and cut; when they cover less (another
    conversation sharing only the trigger and perhaps the sheet), the entry is copied and
    the copy cut, so the other conversation keeps its cache. At least one prompt token is
    always left to evaluate, since the next token's logits come from evaluating one.

    Args:
        capacity: Entries kept; 0 disables reuse.
        new_cache: Factory of an empty cache.
        shift: ``shift(cache, start, count)`` removes ``count`` cached tokens at ``start``
            and moves the later ones down; None: no ContextShift.
    """

    def __init__(self, capacity: int, new_cache: Any, shift: Any = None) -> None:
        if capacity < 0:
            raise ValueError(f"cache_entries={capacity}: must be >= 0 (0 disables reuse)")
        self.capacity = capacity
        self._new_cache = new_cache
        self._shift = shift
        self._entries: list[_Entry] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached prompt."""
        self._entries.clear()

    def take(self, ids: Sequence[int]) -> tuple[Any, Reuse]:
        """A cache holding the first ``plan.reused`` tokens of ``ids`` (< ``len(ids)``)."""
        best, plan = None, Reuse(0)
        for entry in self._entries:
            candidate = plan_reuse(entry.ids, ids, shift=self._shift is not None)
            if candidate.reused > plan.reused:
                best, plan = entry, candidate
        if best is None or not best.cache.is_croppable:
            return self._new_cache(), Reuse(0)
        if 2 * plan.reused >= len(best.ids):
            self._entries.remove(best)
            cache = best.cache
        else:
            cache = copy.deepcopy(best.cache)
        if plan.dropped:
            self._shift(cache, plan.prefix, plan.dropped)
        drop = cache.get_seq_length() - plan.reused
        if drop > 0:
            cache.crop(-drop)  # transformers 5 takes the count to remove, negative
        return cache, plan

    def put(self, ids: list[int], cache: Any) -> None:
        """Store a cache (holding exactly ``ids``) as the most recently used entry."""
        if self.capacity == 0:
            return
        self._entries.append(_Entry(ids, cache))
        del self._entries[:-self.capacity]

    def token_ids(self) -> list[list[int]]:
        """The token ids of every entry, least recently used first."""
        return [list(e.ids) for e in self._entries]


class _TorchSlot:
    """A ``DynamicCache`` and the model that fills it (a :class:`KVSlot`)."""

    def __init__(self, engine: Engine, cache: Any) -> None:
        self.engine = engine
        self.cache = cache

    def eval(self, ids: Sequence[int]) -> torch.Tensor:
        return self.engine._forward(list(ids), self.cache)

    def crop(self, keep: int) -> None:
        drop = self.cache.get_seq_length() - keep
        if drop > 0:
            self.cache.crop(-drop)  # transformers 5 takes the count to remove, negative


class Engine(EngineBase):
    """A transformers model, ready to stream replies (implements ``engine.protocol.Engine``).

    Args:
        model: A transformers causal LM in eval mode.
        tokenizer: Its tokenizer.
        name: Shown by the server and in reports.
        context_length: Tokens of context (prompt + reply); default the model config's
            ``max_position_embeddings``.
        cache_entries: Conversations whose KV caches are kept for reuse (0: none).
    """

    backend = "torch"

    def __init__(self, model: Any, tokenizer: Any, name: str = "model",
                 context_length: int | None = None,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        from transformers import DynamicCache

        super().__init__()
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
        #: Size of the logits (token ids of a request must be below it).
        self.n_vocab = int(model.get_output_embeddings().weight.shape[0])
        self.start_ids = tuple(tokens.start_ids(tokenizer))
        self.rope = rope_shifter(model)
        self.prompt_cache = PromptCache(cache_entries, lambda: DynamicCache(config=model.config),
                                        self.rope)
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

    def _token_pieces(self, size: int) -> list[str]:
        known = min(size, len(self.tokenizer))  # logits may be padded past the tokenizer
        pieces = self.tokenizer.batch_decode([[i] for i in range(known)],
                                             skip_special_tokens=False,
                                             clean_up_tokenization_spaces=False)
        return [*pieces, *[""] * (size - known)]

    # -- the KV cache (layer 1) -----------------------------------------------------------

    def _open_slot(self, ids: list[int]) -> SlotStart:
        cache, plan = self.prompt_cache.take(ids)
        return SlotStart(_TorchSlot(self, cache), plan.reused, plan.dropped)

    def _close_slot(self, slot: KVSlot, ids: list[int] | None) -> None:
        if ids is not None:
            assert isinstance(slot, _TorchSlot)
            self.prompt_cache.put(ids, slot.cache)

    def _clear_slots(self) -> None:
        self.prompt_cache.clear()

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Run ``ids`` after the cached tokens; next-token logits [vocab], fp32 on CPU."""
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        # inference_mode only here: a generator must not leave it switched on for its caller.
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                             **{self._cache_arg: cache})
        return out.logits[0, -1].float().cpu()


class RopeShift:
    """ContextShift for a transformers cache: drop cached tokens, re-rotate the later keys.

    ``DynamicCache`` stores keys after RoPE, at the positions they were computed at. Moving
    a key from position p to p - d multiplies it by the rotation of -d (rotations compose),
    so the kept tokens need no forward pass; values carry no position. Only plain RoPE
    (``rope_type`` default, no attention scaling) in the ``rotate_half`` layout of the
    transformers Llama family is handled; :func:`rope_shifter` returns None otherwise.
    """

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.detach().float().cpu()  # [head_dim / 2]

    def __call__(self, cache: Any, start: int, count: int) -> None:
        import torch

        angles = -count * self.inv_freq
        cos = torch.cat([angles.cos(), angles.cos()])  # [head_dim]
        sin = torch.cat([angles.sin(), angles.sin()])
        for layer in cache.layers:
            keys, values = layer.keys, layer.values  # [batch, kv_heads, seq, head_dim]
            tail = keys[..., start + count:, :].float()
            half = tail.shape[-1] // 2
            rotated = torch.cat([-tail[..., half:], tail[..., :half]], dim=-1)
            tail = (tail * cos.to(tail.device) + rotated * sin.to(tail.device)).to(keys.dtype)
            layer.keys = torch.cat([keys[..., :start, :], tail], dim=-2)
            layer.values = torch.cat([values[..., :start, :], values[..., start + count:, :]],
                                     dim=-2)


def rope_shifter(model: Any) -> RopeShift | None:
    """A :class:`RopeShift` for ``model`` when its cache can be shifted, else None."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None or getattr(rotary, "rope_type", None) != "default" or \
            float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        return None
    if type(rotary).__name__ not in _ROTATE_HALF_ROPE:
        return None
    return RopeShift(inv_freq)


#: Rotary embeddings known to use transformers' ``rotate_half`` layout.
_ROTATE_HALF_ROPE = frozenset({"LlamaRotaryEmbedding", "MistralRotaryEmbedding",
                               "Qwen2RotaryEmbedding", "Qwen3RotaryEmbedding"})


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
