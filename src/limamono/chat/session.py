"""The chat session: prompts with length labels, the context budget, generation, editing.

A ``ChatSession`` turns the chat history into a Limamono prompt (through ``format.render``,
the only code that writes headers), streams the character's reply from any ``Engine`` and
keeps every alternative reply as a swipe. The terminal chat, the demo and the tests drive
it; ``limamono.store`` persists it. Nothing here prints.

Decisions (the spec leaves them open):

- Length labels and fitting are the prompt policy's (``config.policy``, see
  ``limamono.core.policy``): by default every turn is labelled from its word count, as in
  training; ``response_length`` (default ``long``) labels the open reply and
  ``input_length``, when set, the latest user message.
- Context budget: ``engine.context_length - max_new_tokens`` prompt tokens. When the history
  does not fit, the policy leaves out the oldest messages (never the latest user message)
  a quarter of the history at a time, and the count only grows while the chat grows: the
  rendered prefix changes once per chunk instead of every turn, so the engine's KV-cache
  reuse keeps working.
- Impersonation guard: a reply ends where a line starts with ``{user}:`` or where a ``###``
  header begins (also when the engine stopped there on a stop string); the kind of cut is
  recorded on the swipe, for the UI and the metrics.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from limamono.chat.guard import ImpersonationGuard
from limamono.chat.messages import ChatConfig, ChatError, PromptPlan, ReplyResult
from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.core.policy import token_counter
from limamono.engine.protocol import Engine, TextChunk
from limamono.samplers.settings import SamplerSettings, get_preset


def drop_chunk(history_size: int, fraction: float) -> int:
    """How many messages to leave out at once: ``fraction`` of the history, at least one."""
    return max(1, math.ceil(history_size * fraction))


# --------------------------------------------------------------------------- the session

class ChatSession:
    """A roleplay chat with one character: history, prompts, generation, swipes, undo.

    Args:
        chat: the chat (sheet, user, scenario and the messages so far, e.g. the greeting);
            the session changes it in place.
        engine: any ``Engine``; the session only calls ``tokenize``, ``context_length`` and
            ``stream_text``.
        settings: sampler settings passed to the engine as they are (default: the
            ``limamono`` preset, the chain's own default).
        config: prompt and generation settings.
        on_change: called with the session after every change of the history (persistence).
    """

    def __init__(self, chat: Conversation, engine: Engine,
                 settings: SamplerSettings | None = None, config: ChatConfig | None = None,
                 on_change: Callable[[ChatSession], None] | None = None) -> None:
        self.chat = chat
        self.engine = engine
        self.settings = settings if settings is not None else get_preset("limamono")
        self.config = config or ChatConfig()
        self.on_change = on_change
        self.dropped = 0
        self.last_result: ReplyResult | None = None
        self._undo: list[list[Message]] = []

    # ------------------------------------------------------------------ the chat

    @property
    def character(self) -> Character:
        """The character the model plays."""
        return self.chat.character

    @property
    def user(self) -> User:
        """The user (name, optional persona)."""
        return self.chat.user

    @property
    def scenario(self) -> str:
        """The sheet's ``Scenario:`` line."""
        return self.chat.scenario

    @property
    def history(self) -> list[Message]:
        """The chat's messages, oldest first."""
        return self.chat.messages

    @history.setter
    def history(self, messages: list[Message]) -> None:
        self.chat.messages = messages

    def reload(self, chat: Conversation) -> None:
        """Go on from ``chat`` (e.g. as saved by another process); the undo steps are gone."""
        self.chat = chat
        self._undo.clear()
        self.dropped = 0

    # ------------------------------------------------------------------ settings

    @property
    def response_length(self) -> str:
        """Length label of the next reply."""
        return self.config.response_length

    @response_length.setter
    def response_length(self, value: str) -> None:
        self.config = replace(self.config, response_length=value)

    @property
    def input_length(self) -> str | None:
        """Length label of the latest user message (None: the policy's rule)."""
        return self.config.input_length

    @input_length.setter
    def input_length(self, value: str | None) -> None:
        self.config = replace(self.config, input_length=value)

    # ------------------------------------------------------------------ prompts

    def conversation(self, messages: Sequence[Message] | None = None,
                     continuing: bool = False) -> Conversation:
        """The visible history as a labelled ``Conversation`` (what the prompt renders)."""
        visible = [m for m in (self.history if messages is None else messages) if not m.hidden]
        return self.config.policy.label(
            Conversation(self.character, self.user, self.scenario, visible),
            self.config.input_length, continuing, self.config.response_length)

    def build_prompt(self, messages: Sequence[Message] | None = None,
                     open_response: bool = True, continuing: bool = False) -> PromptPlan:
        """Render the prompt for the next reply; the policy leaves out old messages to fit.

        Raises:
            limamono.core.policy.PromptTooLongError: even the Instruction block, the latest user
                message and the open header do not fit (the message says how to fix it).
        """
        visible = [m for m in (self.history if messages is None else messages) if not m.hidden]
        fitted = self.config.policy.fit(
            Conversation(self.character, self.user, self.scenario, visible),
            token_counter(self.engine), self.engine.context_length,
            self.config.max_new_tokens, open_response=open_response,
            response_length=self.config.response_length,
            input_length=self.config.input_length, continuing=continuing,
            at_least=self.dropped, step=drop_chunk(len(visible), self.config.drop_fraction))
        self.dropped = fitted.dropped
        return PromptPlan(fitted.text, fitted.tokens, fitted.dropped, fitted.budget,
                          fitted.tokens_before)

    # ------------------------------------------------------------------ generation

    def send(self, text: str, cancel: threading.Event | None = None) -> Iterator[str]:
        """Add the user's message and stream the character's reply (see ``_stream_reply``)."""
        if not text.strip():
            raise ChatError("the message is empty")
        self._checkpoint()
        self.history.append(Message("user", text.strip(), send_date=_now()))
        self._changed()
        return self._stream_reply(cancel)

    def reply(self, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream a new character message after the history as it is (e.g. the greeting)."""
        self._checkpoint()
        return self._stream_reply(cancel)

    def regenerate(self, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream another alternative of the last reply, kept as a new swipe.

        When the last message is the user's, this generates the missing reply instead.
        """
        self._checkpoint()
        if self.history and self.history[-1].role == "char":
            return self._stream_reply(cancel, swipe_of=self.history[-1])
        return self._stream_reply(cancel)

    def continue_reply(self, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream more text for the last reply, appended to its current swipe."""
        if not self.history or self.history[-1].role != "char":
            raise ChatError("there is no reply to continue (the last message is not the "
                            "character's)")
        self._checkpoint()
        return self._stream_continuation(cancel)

    def _stream_reply(self, cancel: threading.Event | None,
                      swipe_of: Message | None = None) -> Iterator[str]:
        context = self.history[:-1] if swipe_of is not None else self.history
        plan = self.build_prompt(context, open_response=True)
        guard = ImpersonationGuard(self.user.name, at_line_start=True)
        result = yield from self._run(plan, guard, cancel)
        swipe = Swipe(guard.text, guard.cut, result.finish_reason)
        if swipe_of is None:
            self.history.append(Message("char", swipes=[swipe], send_date=_now()))
        else:
            swipe_of.swipes.append(swipe)
            swipe_of.swipe_id = len(swipe_of.swipes) - 1
        self.last_result = replace(result, text=guard.text, cut=guard.cut)
        self._changed()

    def _stream_continuation(self, cancel: threading.Event | None) -> Iterator[str]:
        message = self.history[-1]
        plan = self.build_prompt(open_response=False, continuing=True)
        guard = ImpersonationGuard(self.user.name, at_line_start=False)
        result = yield from self._run(plan, guard, cancel)
        old = message.current
        message.swipes[message.swipe_id] = replace(
            old, text=(old.text + guard.text).rstrip(), cut=guard.cut or old.cut,
            finish_reason=result.finish_reason)
        self.last_result = replace(result, text=guard.text, cut=guard.cut)
        self._changed()

    def _run(self, plan: PromptPlan, guard: ImpersonationGuard,
             cancel: threading.Event | None) -> Generator[str, None, ReplyResult]:
        """Stream through the guard; return the (unguarded) result when the stream ends."""
        stop = self.config.policy.stop_strings(self.user.name)
        stream = self.engine.stream_text(plan.text, self.settings, self.config.max_new_tokens,
                                         stop=stop, cancel=cancel)
        last = TextChunk("", "cancelled")
        try:
            for chunk in stream:
                last = chunk
                piece = guard.feed(chunk.text)
                if piece:
                    yield piece
                if guard.cut is not None:
                    break
                if chunk.stop_string is not None:
                    guard.cut = "header" if chunk.stop_string.startswith("#") else "user"
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        rest = guard.finish()
        if rest:
            yield rest
        reason = "stop" if guard.cut else (last.finish_reason or "cancelled")
        return ReplyResult(guard.text, reason, guard.cut, last.prompt_tokens or plan.tokens,
                           last.completion_tokens, plan.dropped,
                           plan.tokens_before if plan.dropped else 0)

    # ------------------------------------------------------------------ editing

    def choose_swipe(self, index: int, position: int = -1) -> Message:
        """Show swipe ``index`` (0-based) of the message at ``position`` (default: the last)."""
        message = self._message(position)
        if not 0 <= index < len(message.swipes):
            raise ChatError(f"swipe {index + 1} does not exist (the message has "
                            f"{len(message.swipes)})")
        self._checkpoint()
        message.swipe_id = index
        self._changed()
        return message

    def edit(self, text: str, position: int = -1) -> Message:
        """Replace the text of the current swipe of a message (default: the last)."""
        message = self._message(position)
        if not text.strip():
            raise ChatError("the new text is empty (use delete to remove a message)")
        self._checkpoint()
        message.swipes[message.swipe_id] = replace(message.current, text=text.strip(), cut=None)
        self._changed()
        return message

    def delete(self, position: int = -1) -> Message:
        """Remove a message (default: the last) and return it."""
        self._message(position)
        self._checkpoint()
        removed = self.history.pop(position)
        self.dropped = 0
        self._changed()
        return removed

    def undo(self) -> bool:
        """Go back to the history before the last change; False when there is nothing to undo."""
        if not self._undo:
            return False
        self.history = self._undo.pop()
        self.dropped = 0
        self._changed()
        return True

    def _message(self, position: int) -> Message:
        try:
            return self.history[position]
        except IndexError:
            raise ChatError(f"there is no message {position} (the chat has "
                            f"{len(self.history)})") from None

    def _checkpoint(self) -> None:
        self._undo.append(copy.deepcopy(self.history))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
