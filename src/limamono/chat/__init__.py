"""Roleplay chat sessions: history with swipes, length control, context budget, guard.

``messages`` holds the data (``ChatMessage`` with its ``Swipe`` list, ``ChatConfig``),
``guard`` the impersonation guard and thought extraction, ``session`` the ``ChatSession``
that turns the history into prompts and streams replies. Import everything from here.
"""

from limamono.chat.guard import ImpersonationGuard, thoughts
from limamono.chat.messages import (
    ChatConfig,
    ChatError,
    ChatMessage,
    Cut,
    PromptPlan,
    ReplyResult,
    Swipe,
)
from limamono.chat.session import ChatSession, drop_chunk, label_for_prompt

__all__ = [
    "ChatConfig",
    "ChatError",
    "ChatMessage",
    "ChatSession",
    "Cut",
    "ImpersonationGuard",
    "PromptPlan",
    "ReplyResult",
    "Swipe",
    "drop_chunk",
    "label_for_prompt",
    "thoughts",
]
