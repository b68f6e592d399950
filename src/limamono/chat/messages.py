"""The chat session's settings, prompt plans and results (the chat is a ``Conversation``)."""

from __future__ import annotations

from dataclasses import dataclass

from limamono import format as fmt
from limamono.conversation import LENGTHS, Cut


class ChatError(ValueError):
    """A chat operation that cannot be done in the session's current state."""


@dataclass(frozen=True)
class ChatConfig:
    """How a session builds prompts and generates.

    Attributes:
        max_new_tokens: the most tokens of one reply (reserved out of the context).
        response_length: length label of the next reply (``long`` by default, card advice).
        input_length: length label of the latest user message (``tiny``, card advice).
        trigger: the trigger phrase: ``card``, ``preset`` or a literal phrase.
        drop_fraction: share of the history left out at once when it does not fit.
        length_bounds: word bounds of the labels of past turns (the dataset builder's).
    """

    max_new_tokens: int = 200
    response_length: str = fmt.DEFAULT_RESPONSE_LENGTH
    input_length: str = fmt.DEFAULT_INPUT_LENGTH
    trigger: str = fmt.DEFAULT_TRIGGER
    drop_fraction: float = 0.25
    length_bounds: tuple[int, ...] = fmt.DEFAULT_LENGTH_BOUNDS

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ChatError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        for name in ("response_length", "input_length"):
            if getattr(self, name) not in LENGTHS:
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
    """

    text: str
    tokens: int
    dropped: int
    budget: int


@dataclass(frozen=True)
class ReplyResult:
    """How the last generation ended (set when its stream is exhausted or closed)."""

    text: str
    finish_reason: str
    cut: Cut | None
    prompt_tokens: int
    completion_tokens: int
    dropped: int
