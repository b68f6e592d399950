"""Token log-probabilities in each API's shape (``logprobs`` in replies and stream chunks).

- OpenAI/text-generation-webui ``/v1/completions``: ``{"tokens", "token_logprobs",
  "top_logprobs": [{text: logprob}], "text_offset"}`` (SillyTavern reads
  ``choices[0].logprobs.top_logprobs``).
- ``/v1/chat/completions`` and the Kobold routes (KoboldCpp answers ``logprobs``/``n_probs``
  in this shape): ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.

The values are the model's distribution before the samplers (see ``TokenLogprob``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from limamono.engine.protocol import TokenLogprob


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int = 0,
                        ) -> dict[str, Any] | None:
    """The legacy completions shape; ``offset``: the reply characters before ``entries``."""
    if not entries:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text: lp for text, _, lp in e.top} for e in entries],
            "text_offset": offsets}


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any] | None:
    """The chat shape (``content`` entries with UTF-8 ``bytes``)."""
    if not entries:
        return None
    return {"content": [{"token": e.token, "logprob": e.logprob,
                         "bytes": list(e.token.encode("utf-8")),
                         "top_logprobs": [{"token": text, "logprob": lp,
                                           "bytes": list(text.encode("utf-8"))}
                                          for text, _, lp in e.top]}
                        for e in entries]}
