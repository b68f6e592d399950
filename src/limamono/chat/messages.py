"""The chat session's settings, prompt plans and results (the chat is a ``Conversation``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Cut
from limamono.core.policy import PromptPolicy


class ChatError(ValueError):
    """A chat operation that cannot be done in the session's current state."""


@dataclass(frozen=True)
class ChatConfig:
    """How a session builds prompts and generates.

    Attributes:
        max_new_tokens: the most tokens of one reply (reserved out of the context).
        response_length: length label of the next reply (``long`` by default, card advice).
        input_length: length label of the latest user message; None: the policy's rule
            (``training``: its word count, like every other turn).
        drop_fraction: share of the history left out at once when it does not fit.
        policy: the prompt policy: labels, trigger, length bounds, stop strings, fitting
            (the adapter's card gives it; see ``limamono.models.adapter_card``).
    """

    max_new_tokens: int = 200
    response_length: str = fmt.DEFAULT_RESPONSE_LENGTH
    input_length: str | None = None
    drop_fraction: float = 0.25
    policy: PromptPolicy = field(default_factory=PromptPolicy)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ChatError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        for name in ("response_length", "input_length"):
            if getattr(self, name) not in LENGTHS and (name, getattr(self, name)) != (
                    "input_length", None):
                raise ChatError(f"{name} {getattr(self, name)!r} is not one of "
                                f"{', '.join(LENGTHS)}")
        if not 0 < self.drop_fraction <= 1:
            raise ChatError(f"drop_fraction must be in (0, 1], got {self.drop_fraction}")


@dataclass(frozen=True)
class PromptPlan:
    """A prompt ready for the engine and what was left out to make it fit.

    Attributes:
        text: the prompt.
        tokens: its length in the engine's tokens.
        dropped: how many of the oldest messages are out of context.
        budget: the most prompt tokens allowed (context length minus the reply's tokens).
        tokens_before: the length of the whole prompt, nothing left out.
    """

    text: str
    tokens: int
    dropped: int
    budget: int
    tokens_before: int = 0


@dataclass(frozen=True)
class ReplyResult:
    """How the last generation ended (set when its stream is exhausted or closed)."""

    text: str
    finish_reason: str
    cut: Cut | None
    prompt_tokens: int
    completion_tokens: int
    dropped: int
    #: The prompt's length before the oldest messages were left out (0: nothing was).
    tokens_before: int = 0
