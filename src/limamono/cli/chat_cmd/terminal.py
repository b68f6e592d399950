"""The terminal chat: styled streaming output, the slash commands, the line loop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.text import Text

from limamono.cli.common import err, out, visible

if TYPE_CHECKING:
    from limamono.chat import ChatSession
    from limamono.core.conversation import Message
    from limamono.store import ChatStore

#: How each span kind of the house style is shown (``limamono.style.split_spans`` kinds).
SPAN_STYLES: dict[str, str] = {"narration": "", "dialogue": "bold", "thought": "dim italic",
                               "sound": "magenta", "title": "underline"}

HELP = """\
/regen           another reply (every alternative is kept as a swipe)
/swipe N         show swipe N of the last reply
/continue        make the last reply longer
/length X        length of the next replies: micro tiny short medium long massive huge
/input-length X  length label of your latest message (auto: by its word count)
/edit TEXT       replace the text of the last message
/undo            undo the last change
/chats           list saved chats
/save [FILE]     say where the chat is saved; with FILE, also export it (.jsonl or .yaml)
/help            this help
/quit            leave (Ctrl-D too); Ctrl-C stops a reply without leaving"""


# --------------------------------------------------------------------------- display

def styled(text: str, start: int = 0) -> Text:
    """``text[start:]`` as Rich text, each part styled by its house-style span kind.

    Spans are computed on the whole text so a streamed piece gets the style of the span it
    continues (an unclosed ``"`` keeps the following words bold).
    """
    from limamono.style import split_spans

    out_text = Text()
    for span in split_spans(text):
        if span.end <= start:
            continue
        out_text.append(text[max(span.start, start):span.end], style=SPAN_STYLES[span.kind])
    return out_text


def print_message(session: ChatSession, index: int) -> None:
    """Print one message of a session's history."""
    show_message(session.history[index], session.character.name, session.user.name)


def show_message(message: Message, char_name: str, user_name: str) -> None:
    """Print a message with its speaker, styled, and its swipe position."""
    name = char_name if message.role == "char" else user_name
    line = Text(f"{visible(name)}: ",
                style="bold cyan" if message.role == "char" else "bold green")
    line.append_text(styled(visible(message.text)))
    out.print(line, soft_wrap=True)
    if len(message.swipes) > 1:
        out.print(Text(f"  (swipe {message.swipe_id + 1}/{len(message.swipes)})", style="dim"))


def stream_reply(session: ChatSession, start: Callable[[threading.Event], Iterator[str]],
                 prefix: str | None = None) -> str:
    """Print a streamed reply as it comes; Ctrl-C stops it (the partial reply is kept)."""
    cancel = threading.Event()
    previous = _catch_interrupt(cancel)
    shown = ""
    if prefix is not None:
        out.print(Text(prefix, style="bold cyan"), end="")
    base = "" if prefix is not None else session.history[-1].text
    try:
        for piece in start(cancel):
            before = len(base) + len(shown)
            shown += piece
            out.print(styled(base + shown, before), end="", soft_wrap=True)
    except BaseException:
        out.print()  # end the reply's line, so the error is shown on its own
        raise
    finally:
        _restore_interrupt(previous)
    out.print()
    _report(session)
    return shown


def _report(session: ChatSession) -> None:
    result = session.last_result
    if result is None:
        return
    notes = []
    if result.cut == "user":
        notes.append(f"cut where the model began writing {session.user.name}'s turn")
    elif result.cut == "header":
        notes.append("cut where the model began a new ### block")
    elif result.finish_reason == "length":
        notes.append("stopped at --max-tokens; /continue for more")
    elif result.finish_reason == "cancelled":
        notes.append("stopped")
    if result.dropped:
        notes.append(f"{result.dropped} oldest messages are out of context (prompt cut from "
                     f"{result.tokens_before} to {result.prompt_tokens} tokens)")
    last = session.history[-1]
    if len(last.swipes) > 1:
        notes.append(f"swipe {last.swipe_id + 1}/{len(last.swipes)}")
    if notes:
        out.print(Text(f"  ({'; '.join(notes)})", style="dim"))


def _catch_interrupt(cancel: threading.Event) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda *_: cancel.set())


def _restore_interrupt(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- the loop

class ChatLoop:
    """The terminal chat: reads lines, runs slash commands, streams replies, saves.

    Args:
        session: the chat session (its ``on_change`` saves to the store).
        store: the chat database.
        chat_id: this chat's id in the store.
        seed: base seed; each generation uses the next one so regenerations differ.
    """

    def __init__(self, session: ChatSession, store: ChatStore, chat_id: int,
                 seed: int | None = None) -> None:
        self.session = session
        self.store = store
        self.chat_id = chat_id
        self.seed = seed
        self.generations = 0
        self.commands: dict[str, Callable[[str], bool]] = {
            "/regen": self.regen, "/swipe": self.swipe, "/continue": self.continue_,
            "/length": self.length, "/input-length": self.input_length, "/edit": self.edit,
            "/undo": self.undo, "/chats": self.chats, "/save": self.save, "/help": self.help,
            "/quit": lambda _: False,
        }

    def run(self, stdin: TextIO) -> None:
        """Read and handle lines until ``/quit`` or the end of input."""
        interactive = stdin.isatty()
        while True:
            if interactive:
                out.print(Text(f"{self.session.user.name}> ", style="bold green"), end="")
            try:
                line = stdin.readline()
            except KeyboardInterrupt:
                out.print("\n(Ctrl-D or /quit to leave)")
                continue
            if not line:
                return
            if not self.handle(line.strip()):
                return

    def handle(self, line: str) -> bool:
        """Handle one line; False ends the chat."""
        from limamono.chat import ChatError
        from limamono.core.format import FormatError
        from limamono.core.policy import ContextOverflowError
        from limamono.store import StaleChatError, StoreError

        if not line:
            return True
        try:
            if line.startswith("/"):
                command, _, argument = line.partition(" ")
                action = self.commands.get(command)
                if action is None:
                    err.print(f"unknown command {command!r}; /help lists them", highlight=False)
                    return True
                return action(argument.strip())
            self._generate(lambda c: self.session.send(line, cancel=c), new=True)
        except StaleChatError as exc:  # the session was reloaded (``ChatSaver``)
            err.print(Text(f"error: {exc}", style="red"))
            out.print(Text(f"reloaded chat {self.chat_id} as saved (your last change is not "
                           "in it: make it again if you still want it); it now ends with:",
                           style="dim"), soft_wrap=True)
            for i in range(max(0, len(self.session.history) - 2), len(self.session.history)):
                print_message(self.session, i)
        except (ChatError, FormatError, ContextOverflowError, StoreError) as exc:
            err.print(Text(f"error: {exc}", style="red"))
        return True

    def _generate(self, start: Callable[[threading.Event], Iterator[str]], new: bool) -> None:
        if self.seed is not None and self.session.settings is not None:
            self.session.settings = replace(self.session.settings,
                                            seed=self.seed + self.generations)
        self.generations += 1
        prefix = f"{self.session.character.name}: " if new else None
        stream_reply(self.session, start, prefix)

    # ------------------------------------------------------------------ commands

    def regen(self, _: str) -> bool:
        self._generate(lambda c: self.session.regenerate(cancel=c), new=True)
        return True

    def continue_(self, _: str) -> bool:
        out.print(Text("(continuing)", style="dim"), end="")
        self._generate(lambda c: self.session.continue_reply(cancel=c), new=False)
        return True

    def swipe(self, argument: str) -> bool:
        from limamono.chat import ChatError

        if not argument.isdigit():
            raise ChatError(f"/swipe needs a number, got {argument!r}")
        self.session.choose_swipe(int(argument) - 1)
        print_message(self.session, -1)
        return True

    def length(self, argument: str) -> bool:
        self.session.response_length = argument
        out.print(f"replies are now {argument}")
        return True

    def input_length(self, argument: str) -> bool:
        if argument in ("", "auto"):
            self.session.input_length = None
            out.print("your latest message is labelled by its word count")
            return True
        self.session.input_length = argument
        out.print(f"your latest message is now labelled {argument}")
        return True

    def edit(self, argument: str) -> bool:
        self.session.edit(argument)
        print_message(self.session, -1)
        return True

    def undo(self, _: str) -> bool:
        if not self.session.undo():
            out.print("nothing to undo")
        elif self.session.history:
            out.print("undone; the chat now ends with:")
            print_message(self.session, -1)
        return True

    def chats(self, _: str) -> bool:
        out.print(chats_table(self.store))
        return True

    def save(self, argument: str) -> bool:
        out.print(f"saved as chat {self.chat_id} in {self.store.path} (every change is saved "
                  "as it happens)")
        if argument:
            export_chat(self.store, self.chat_id, Path(argument), force=False)
            out.print(f"exported to {argument}")
        return True

    def help(self, _: str) -> bool:
        out.print(HELP, markup=False, highlight=False)
        return True


# --------------------------------------------------------------------------- shared helpers

def chats_table(store: ChatStore) -> Any:
    """A table of the saved chats."""
    from rich.table import Table

    table = Table("id", "character", "user", "messages", "updated", "title")
    for c in store.list_chats():
        # visible() first: Rich would drop BEL and friends, and measure U+202E as nothing.
        table.add_row(str(c.id), Text(visible(c.character_name)), Text(visible(c.user_name)),
                      str(c.messages), Text(visible(c.updated)), Text(visible(c.title)))
    return table


def export_chat(store: ChatStore, chat_id: int, path: Path, force: bool) -> None:
    """Export a chat as SillyTavern JSONL (``.jsonl``) or a conversation file (``.yaml``).

    Raises:
        StoreError: unknown type, no such chat, or the file cannot or must not be written.
    """
    from limamono.core.conversation import dump_yaml
    from limamono.store import StoreError, export_sillytavern, write_file_safely

    chat = store.load_chat(chat_id)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = export_sillytavern(chat)
    elif suffix in (".yaml", ".yml"):
        text = dump_yaml(chat.transcript())
    else:
        raise StoreError(f"{path}: unknown export type {suffix or '(none)'!r} (use .jsonl "
                         "for SillyTavern or .yaml for a conversation file)")
    write_file_safely(path, text, force=force)
