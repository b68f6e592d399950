"""`limamono chat`, `limamono chats ...` and `limamono demo`: roleplay in the terminal.

The chat loop reads one line at a time, so it works the same typed or piped (scripts, tests).
Replies stream through Rich with the house style made visible: thoughts dim italic, dialogue
bold, sounds in magenta, titles underlined, narration plain. Every change is saved to the
chat store as it happens. Tests replace ``make_engine`` with a scripted engine.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer
from rich.text import Text

from limamono.cli.common import err, fail, out

if TYPE_CHECKING:
    from limamono.chat import ChatMessage, ChatSession
    from limamono.generation import Engine
    from limamono.store import ChatStore

#: How each span kind of the house style is shown (``limamono.style.split_spans`` kinds).
SPAN_STYLES: dict[str, str] = {"narration": "", "dialogue": "bold", "thought": "dim italic",
                               "sound": "magenta", "title": "underline"}

#: The demo's scripted user turns: generic enough for any bundled character.
DEMO_TURNS = (
    "Hello. I hope I'm not intruding; someone told me you might be willing to talk.",
    "Then tell me the story from the beginning, if you would. Where did it all start?",
)

HELP = """\
/regen           another reply (every alternative is kept as a swipe)
/swipe N         show swipe N of the last reply
/continue        make the last reply longer
/length X        length of the next replies: micro tiny short medium long massive huge
/input-length X  length label of your messages
/edit TEXT       replace the text of the last message
/undo            undo the last change
/chats           list saved chats
/save [FILE]     say where the chat is saved; with FILE, also export it (.jsonl or .yaml)
/help            this help
/quit            leave (Ctrl-D too); Ctrl-C stops a reply without leaving"""

chats_app = typer.Typer(name="chats", help="Saved chats: list, show, export, import, delete.",
                        no_args_is_help=True)


# --------------------------------------------------------------------------- factories

def make_engine(model: str, adapter: str | None, threads: int | None = None) -> Engine:
    """Load the engine (tests replace this function with a scripted engine)."""
    from limamono.engine import load_engine
    from limamono.models import ModelError

    try:
        return load_engine(model, adapter=adapter, threads=threads,
                           progress=lambda what, done, total: err.print(
                               f"[dim]{what} {done}/{total}[/]", highlight=False))
    except ModelError as exc:
        fail(str(exc))


def make_settings(preset: str, seed: int | None) -> Any:
    """The sampler preset, with ``seed`` when given."""
    from limamono.samplers import SamplerError, get_preset

    try:
        settings = get_preset(preset)
        return settings if seed is None else replace(settings, seed=seed)
    except SamplerError as exc:
        fail(str(exc))


def open_store(db: Path | None) -> ChatStore:
    """The chat database (``--db`` or the default), or a clean exit naming the problem."""
    from limamono.store import ChatStore, StoreError, default_db_path

    try:
        return ChatStore(db or default_db_path())
    except StoreError as exc:
        fail(str(exc))


@dataclass(frozen=True)
class CharacterStart:
    """What a card gives a new chat: the sheet, the scenario and the greetings."""

    character: Any
    scenario: str
    greetings: list[str]
    source: str


def load_character(path: Path, user_name: str, house_style: bool = False) -> CharacterStart:
    """Read a card (PNG/JSON V1-V3, a conversation .yaml or a .txt sheet) for a chat."""
    from limamono.cards import CardError, card_to_conversation, greetings, read_card

    try:
        card = read_card(path)
        conv = card_to_conversation(card, user_name, house_style=house_style)
        texts = greetings(card, user_name, house_style=house_style)
    except CardError as exc:
        fail(str(exc))
    return CharacterStart(conv.character, conv.scenario, texts, str(path))


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


def show_message(message: ChatMessage, char_name: str, user_name: str) -> None:
    """Print a message with its speaker, styled, and its swipe position."""
    name = char_name if message.role == "char" else user_name
    line = Text(f"{name}: ", style="bold cyan" if message.role == "char" else "bold green")
    line.append_text(styled(message.text))
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
        notes.append(f"{result.dropped} oldest messages are out of context")
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
        from limamono.format import FormatError
        from limamono.generation import ContextOverflowError

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
        except (ChatError, FormatError, ContextOverflowError) as exc:
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
        self.session.input_length = argument
        out.print(f"your messages are now labelled {argument}")
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
        table.add_row(str(c.id), Text(c.character_name), Text(c.user_name), str(c.messages),
                      c.updated, Text(c.title))
    return table


def export_chat(store: ChatStore, chat_id: int, path: Path, force: bool) -> None:
    """Export a chat as SillyTavern JSONL (``.jsonl``) or a conversation file (``.yaml``)."""
    from limamono.conversation import Conversation, Message, dump_yaml
    from limamono.store import StoreError, export_sillytavern, write_file_safely

    try:
        chat = store.load_chat(chat_id)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            text = export_sillytavern(chat)
        elif suffix in (".yaml", ".yml"):
            conv = Conversation(chat.character, chat.user, chat.scenario,
                                [Message(m.role, m.text, m.length) for m in chat.messages
                                 if not m.hidden])
            text = dump_yaml(conv)
        else:
            raise StoreError(f"{path}: unknown export type {suffix or '(none)'!r} (use .jsonl "
                             "for SillyTavern or .yaml for a conversation file)")
        write_file_safely(path, text, force=force)
    except StoreError as exc:
        fail(str(exc))


def start_session(store: ChatStore, chat_id: int, engine: Engine, settings: Any,
                  max_tokens: int) -> ChatSession:
    """A session over a stored chat that saves every change back to it."""
    from limamono.chat import ChatConfig, ChatError, ChatSession
    from limamono.store import StoreError

    try:
        stored = store.load_chat(chat_id)
        config = ChatConfig(max_new_tokens=max_tokens)
    except (StoreError, ChatError) as exc:
        fail(str(exc))
    return ChatSession(stored.character, stored.user, engine, settings, stored.scenario,
                       stored.messages, config,
                       on_change=lambda s: store.sync_messages(chat_id, s.history))


def new_chat(store: ChatStore, start: CharacterStart, user: Any) -> int:
    """Save a new chat that opens with the card's greetings (as swipes)."""
    from limamono.chat import ChatMessage, Swipe

    history = [ChatMessage("char", [Swipe(g) for g in start.greetings])] \
        if start.greetings else []
    return store.create_chat(start.character, user, start.scenario, history,
                             title=Path(start.source).stem, source=start.source)


# --------------------------------------------------------------------------- commands

def chat_cmd(
    card: Path | None = typer.Option(None, "--card", help="Character card: .png/.json "
                                     "(SillyTavern V1-V3), .yaml conversation or .txt sheet."),
    user: str = typer.Option("User", "--user", help="Your name in the chat."),
    persona: str = typer.Option("", "--persona", help="A short description of you (kept "
                                "with the chat; the prompt format has no place for it)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model: smollm2-135m (embedded), "
                              "an HF folder or a cached hub id."),
    adapter: str = typer.Option("demo", "--adapter", help="LoRA adapter folder, 'demo' (the "
                                "bundled one, if present) or 'none'."),
    preset: str = typer.Option("limamono", "--preset", help="Sampler preset."),
    chat_id: int | None = typer.Option(None, "--chat", help="Resume a saved chat by id "
                                       "(see `limamono chats list`)."),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, help="Most tokens per reply."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the first reply (each "
                                    "later one uses the next number)."),
    house_style: bool = typer.Option(False, "--house-style", help="Convert the card's "
                                     "asterisk-style greeting and sheet to the house style."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "model (default: the engine's choice)."),
    db: Path | None = typer.Option(None, "--db", help="Chat database (default: "
                                   "$LIMAMONO_HOME/chats.db)."),
) -> None:
    """Chat with a character in the terminal (one line a message; /help for commands)."""
    from limamono.conversation import User

    if (card is None) == (chat_id is None):
        fail("give either --card FILE (a new chat) or --chat ID (resume a saved one)")
    store = open_store(db)
    start = load_character(card, user, house_style) if card is not None else None
    if chat_id is not None:  # fail before the model loads, not after
        _check_chat(store, chat_id)
    settings = make_settings(preset, seed)
    engine = make_engine(model, None if adapter == "none" else adapter, threads)
    if start is not None:
        chat_id = new_chat(store, start, User(user, persona))
    assert chat_id is not None
    session = start_session(store, chat_id, engine, settings, max_tokens)
    loop = ChatLoop(session, store, chat_id, seed)
    out.print(Text(f"Chat {chat_id} with {session.character.name} (saved in {store.path}). "
                   "/help for commands.", style="dim"))
    for i in range(max(0, len(session.history) - 4), len(session.history)):
        print_message(session, i)
    if not session.history:
        loop._generate(lambda c: session.reply(cancel=c), new=True)
    loop.run(sys.stdin)


def demo_cmd(
    character: Path | None = typer.Option(None, "--character", help="Character file (default: "
                                          "the first of examples/characters/*.yaml)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model (default: embedded)."),
    adapter: str = typer.Option("demo", "--adapter", help="Adapter: 'demo', 'none' or a "
                                "folder."),
    max_tokens: int = typer.Option(120, "--max-tokens", min=1, help="Most tokens per reply."),
    seed: int = typer.Option(7, "--seed", help="Seed of the first reply."),
    user: str = typer.Option("Sam", "--user", help="The scripted user's name."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads for the model. One "
                                "by default: on a busy machine two threads that wait for "
                                "each other decode about 6 times slower (measured here)."),
    db: Path | None = typer.Option(None, "--db", help="Chat database (default: "
                                   "$LIMAMONO_HOME/chats.db)."),
) -> None:
    """Run a short scripted roleplay on the embedded model and save it (the main job)."""
    from limamono.conversation import User

    path = character or _first_example()
    store = open_store(db)
    start = load_character(path, user)
    settings = make_settings("limamono", seed)
    err.print(f"[dim]loading {model} (adapter: {adapter})...[/]", highlight=False)
    setup = time.monotonic()
    engine = make_engine(model, None if adapter == "none" else adapter, threads)
    err.print(f"[dim]model ready in {time.monotonic() - setup:.1f} s[/]", highlight=False)
    chat_id = new_chat(store, start, User(user))
    session = start_session(store, chat_id, engine, settings, max_tokens)
    loop = ChatLoop(session, store, chat_id, seed)
    out.print(Text(f"Demo: {user} visits {session.character.name} ({path.name})\n",
                   style="bold"))
    if session.history:
        print_message(session, 0)
    else:
        loop._generate(lambda c: session.reply(cancel=c), new=True)
    for turn in DEMO_TURNS:
        out.print()
        out.print(Text(f"{user}: ", style="bold green") + Text(turn), soft_wrap=True)
        began = time.monotonic()
        loop.handle(turn)
        result = session.last_result
        if result is not None:  # the time includes reading the prompt (no cache the first time)
            err.print(f"[dim]{result.completion_tokens} tokens after a {result.prompt_tokens}-"
                      f"token prompt in {time.monotonic() - began:.1f} s[/]", highlight=False)
    err.print(f"[dim]demo took {time.monotonic() - setup:.1f} s after setup[/]", highlight=False)
    out.print(f"\nSaved as chat {chat_id} in {store.path}. Go on with: "
              f"limamono chat --chat {chat_id}" + (f" --db {db}" if db else ""), soft_wrap=True)


def _check_chat(store: ChatStore, chat_id: int) -> None:
    from limamono.store import StoreError

    try:
        store.load_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))


def _first_example() -> Path:
    folder = Path(__file__).resolve().parents[3] / "examples" / "characters"
    found = sorted(folder.glob("*.yaml"))
    if not found:
        fail(f"no bundled character in {folder}; pass --character FILE")
    return found[0]


# --------------------------------------------------------------------------- `chats`

@chats_app.command("list")
def chats_list_cmd(db: Path | None = typer.Option(None, "--db", help="Chat database.")) -> None:
    """List saved chats, most recent first."""
    out.print(chats_table(open_store(db)))


@chats_app.command("show")
def chats_show_cmd(chat_id: int = typer.Argument(..., help="Chat id."),
                   db: Path | None = typer.Option(None, "--db", help="Chat database.")) -> None:
    """Print a saved chat."""
    from limamono.store import StoreError

    store = open_store(db)
    try:
        stored = store.load_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))
    out.print(Text(f"Chat {chat_id}: {stored.character.name} and {stored.user.name}",
                   style="bold"))
    for message in stored.messages:
        show_message(message, stored.character.name, stored.user.name)


@chats_app.command("export")
def chats_export_cmd(
    chat_id: int = typer.Argument(..., help="Chat id."),
    output: Path = typer.Option(..., "-o", "--output", help="File: .jsonl (SillyTavern chat) "
                                "or .yaml (conversation file)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing chat file."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
) -> None:
    """Export a chat as SillyTavern JSONL or a conversation YAML."""
    export_chat(open_store(db), chat_id, output, force)
    out.print(f"wrote {output}")


@chats_app.command("import")
def chats_import_cmd(
    file: Path = typer.Argument(..., help="SillyTavern chat .jsonl (the file is only read)."),
    card: Path | None = typer.Option(None, "--card", help="The character's card, so the chat "
                                     "has its sheet (default: the name only)."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
) -> None:
    """Import a SillyTavern chat file as a new chat."""
    from limamono.store import StoreError, import_sillytavern

    store = open_store(db)
    start = load_character(card, "User") if card else None
    try:
        chat_id = import_sillytavern(store, file, start.character if start else None,
                                     start.scenario if start else "")
    except StoreError as exc:
        fail(str(exc))
    out.print(f"imported {file} as chat {chat_id}")


@chats_app.command("delete")
def chats_delete_cmd(
    chat_id: int = typer.Argument(..., help="Chat id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    db: Path | None = typer.Option(None, "--db", help="Chat database."),
) -> None:
    """Delete a saved chat."""
    from limamono.store import StoreError

    store = open_store(db)
    if not yes and not typer.confirm(f"Delete chat {chat_id}?"):
        raise typer.Exit(1)
    try:
        store.delete_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))
    out.print(f"deleted chat {chat_id}")


def register(app: typer.Typer) -> None:
    """Add ``chat``, ``chats`` and ``demo`` to the CLI."""
    app.command("chat")(chat_cmd)
    app.command("demo")(demo_cmd)
    app.add_typer(chats_app, name="chats")
