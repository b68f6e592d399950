"""The chat's data: messages with swipes, the session config, prompt plans and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from limamono import format as fmt
from limamono.conversation import LENGTHS, Role

#: Kinds of impersonation-guard cut: the user's turn, or a ``###`` header.
Cut = Literal["user", "header"]


class ChatError(ValueError):
    """A chat operation that cannot be done in the session's current state."""


@dataclass
class Swipe:
    """One alternative text of a message.

    Attributes:
        text: the text, without the ``Name: `` prefix.
        cut: ``"user"`` or ``"header"`` when the impersonation guard ended the reply there.
        finish_reason: how generation ended (``stop``, ``length``, ``cancelled``); None for
            text a person wrote.
        info: data kept from an imported file (SillyTavern ``swipe_info``), never rendered.
    """

    text: str
    cut: Cut | None = None
    finish_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatMessage:
    """A message of the chat: who speaks and its alternatives (swipes).

    Attributes:
        role: ``char`` or ``user``.
        swipes: the alternatives, at least one; ``swipe_id`` picks the one shown and rendered.
        swipe_id: index into ``swipes``.
        length: a fixed length label; None labels the message from its word count.
        hidden: left out of the prompt (SillyTavern's ``is_system`` messages).
        send_date: when it was written, as the source wrote it (ISO 8601 for new messages).
        extra: fields of an imported file that limamono does not model, kept for export.
    """

    role: Role
    swipes: list[Swipe]
    swipe_id: int = 0
    length: str | None = None
    hidden: bool = False
    send_date: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.swipes:
            raise ChatError("a message needs at least one swipe")
        if not 0 <= self.swipe_id < len(self.swipes):
            raise ChatError(f"swipe_id {self.swipe_id} is out of range 0..{len(self.swipes) - 1}")

    @classmethod
    def of(cls, role: Role, text: str, **kwargs: Any) -> ChatMessage:
        """A message with a single swipe."""
        return cls(role, [Swipe(text)], **kwargs)

    @property
    def current(self) -> Swipe:
        """The swipe shown and rendered."""
        return self.swipes[self.swipe_id]

    @property
    def text(self) -> str:
        """The text of the current swipe."""
        return self.current.text


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
