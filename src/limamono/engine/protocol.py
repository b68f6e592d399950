"""What every consumer of generation shares: the Engine protocol and the text-chunk types.

The engines (``torch_engine.Engine``, ``llamacpp.LlamaCppEngine``) implement this protocol;
the server, the chat and the evaluation take any object that does, so their tests inject a
scripted fake.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from limamono.samplers import SamplerSettings

FinishReason = Literal["stop", "length", "cancelled"]
Truncation = Literal["left", "error"]


class GrammarError(ValueError):
    """A grammar the engine cannot run: it does not parse, or the engine has no grammars.

    ``field`` is the wire field the grammar came from (the server's 400 names it).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AdapterUnloadedError(RuntimeError):
    """A request chose an adapter (with a scale other than 0) that was unloaded before its
    generation started (it waited in the queue meanwhile). ``name`` is the adapter's."""

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} was unloaded after this request chose it; send "
                         "the request again (GET /v1/lora lists the loaded adapters)")
        self.name = name


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, with the most likely ones.

    Attributes:
        token: The token's text.
        id: Its id.
        logprob: Natural log of its probability in the model's distribution (before the
            samplers, as vLLM and text-generation-webui report it).
        top: The ``n`` most likely tokens there, as (text, id, logprob), most likely first.
    """

    token: str
    id: int
    logprob: float
    top: tuple[tuple[str, int, float], ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """One piece of streamed text (layer 2 of generation).

    ``text`` never ends inside a UTF-8 character and never contains (part of) a stop string.
    The last chunk of a stream has ``finish_reason`` set (its text may be empty).
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The stop string that ended the reply, when ``finish_reason == "stop"`` by a string.
    stop_string: str | None = None
    #: Log-probabilities of the tokens this chunk completes (when the settings ask for them).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A whole reply (layer 3): the joined text and how it ended."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_string: str | None = None


class Engine(Protocol):
    """A text generator with a tokenizer, as the chat, the server and the evaluation use it."""

    model_name: str
    context_length: int

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        ...

    def stream_text(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: Truncation = "left") -> Iterator[TextChunk]:
        """Stream the reply to ``prompt``; the last chunk carries the finish reason."""
        ...

    def generate(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: Truncation = "left") -> Completion:
        """The whole reply to ``prompt``."""
        ...
