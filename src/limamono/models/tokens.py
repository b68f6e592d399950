"""Token identity: text becomes token ids one way, for training samples and prompts alike.

A training sample and a prompt are each tokenised whole, in one tokenizer call, never piece
by piece: SentencePiece tokenizers (Llama, Mistral) put a ``▁`` before the first word of
every separate call, so text tokenised in pieces gives other ids than the same text
tokenised whole (``.`` ``▁`` ``\\n`` ``\\n`` ``###`` against ``.`` ``\\n`` ``\\n`` ``###``).

The special tokens a tokenizer's own convention puts before any text (Mistral and Llama:
BOS ``<s>``; SmolLM2: none) come first, in training samples and in every prompt the engine
feeds, text-completion routes included, as KoboldCpp does for Llama-family models. Special
tokens a convention appends after the text (an EOS) are never added: a prompt goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Character span ``(start, end)`` of a token in the text; BOS spans nothing, ``(0, 0)``.
Span = tuple[int, int]

_PROBE = "a"


def start_ids(tokenizer: Any) -> list[int]:
    """The special ids the tokenizer's convention puts before any text (its BOS, or none).

    Found by encoding a probe with and without special tokens: whatever the tokenizer adds
    in front of the probe's own ids (``add_bos_token``, a template post-processor).
    """
    full = list(tokenizer(_PROBE, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k]
    return []


def encode(tokenizer: Any, text: str) -> list[int]:
    """The ids of a whole text as the model sees it: :func:`start_ids`, then the text."""
    return start_ids(tokenizer) + list(
        tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_spans(tokenizer: Any, text: str,
                 start: Sequence[int] | None = None) -> tuple[list[int], list[Span]]:
    """:func:`encode` plus the character span of every token (for loss masks by offset).

    Args:
        tokenizer: a fast (``tokenizers``-backed) Hugging Face tokenizer.
        text: the whole text, tokenised in one call.
        start: :func:`start_ids` when the caller already has them (saves two probes).

    Raises:
        ValueError: the tokenizer gives no offsets (a slow, Python-only tokenizer).
    """
    head = list(start_ids(tokenizer) if start is None else start)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise ValueError(f"{type(tokenizer).__name__} gives no character offsets; fix: use "
                         "the model's fast tokenizer (tokenizer.json)") from exc
    spans = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return head + list(enc["input_ids"]), [(0, 0)] * len(head) + spans
