"""Roleplay chat sessions: history with swipes, length control, context budget, guard.

The chat itself is a ``limamono.core.conversation.Conversation`` (messages with their swipes).
``messages`` holds the session's settings and results (``ChatConfig``, ``PromptPlan``,
``ReplyResult``), ``guard`` the impersonation guard and thought extraction, ``session`` the
``ChatSession`` that turns the chat into prompts and streams replies, ``start`` a new chat
from a card. Import from here.
"""

from limamono.chat.guard import ImpersonationGuard, thoughts
from limamono.chat.messages import (
    ChatConfig,
    ChatError,
    Cut,
    PromptPlan,
    ReplyResult,
)
from limamono.chat.session import ChatSession, drop_chunk
from limamono.chat.start import chat_from_card

__all__ = [
    "ChatConfig",
    "ChatError",
    "ChatSession",
    "Cut",
    "ImpersonationGuard",
    "PromptPlan",
    "ReplyResult",
    "chat_from_card",
    "drop_chunk",
    "thoughts",
]
