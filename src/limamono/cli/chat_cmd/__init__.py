"""`limamono chat`, `limamono chats ...` and `limamono demo`: roleplay in the terminal.

The chat loop reads one line at a time, so it works the same typed or piped (scripts, tests).
Replies stream through Rich with the house style made visible: thoughts dim italic, dialogue
bold, sounds in magenta, titles underlined, narration plain. Every change is saved to the
chat store as it happens. Tests replace ``make_engine`` with a scripted engine.

Modules: ``session`` (store, card, session set-up), ``terminal`` (display and the line loop),
``chats`` (the ``chats`` group); the commands and the engine factory are here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from limamono.cli.chat_cmd.chats import chats_app
from limamono.cli.chat_cmd.session import load_character, open_store, start_session
from limamono.cli.chat_cmd.terminal import ChatLoop, print_message
from limamono.cli.common import (
    BACKEND_HELP,
    FLASH_ATTN_OPTION,
    GPU_LAYERS_OPTION,
    KV_TYPE_OPTION,
    MODEL_HELP,
    SOFT_LANDING_HELP,
    dim,
    err,
    fail,
    llama_options,
    out,
)

if TYPE_CHECKING:
    from limamono.engine.protocol import Engine
    from limamono.store import ChatStore

#: The demo's scripted user turns: generic enough for any bundled character.
DEMO_TURNS = (
    "Hello. I hope I'm not intruding; someone told me you might be willing to talk.",
    "Then tell me the story from the beginning, if you would. Where did it all start?",
)


def make_engine(model: str, adapter: str | None, threads: int | None = None,
                backend: str = "auto", llama: Any = None) -> Engine:
    """Load the engine through the CLI's one loader (tests replace this function with a
    scripted engine); ``llama``: the llama.cpp switches (``common.llama_options``)."""
    from limamono.cli.engine_cmd import load_engine_for_cli

    return load_engine_for_cli(model, adapter, threads=threads, backend=backend, llama=llama)


def make_settings(preset: str, seed: int | None) -> Any:
    """The sampler preset, with ``seed`` when given."""
    from limamono.samplers import SamplerError, get_preset

    try:
        settings = get_preset(preset)
        return settings if seed is None else replace(settings, seed=seed)
    except SamplerError as exc:
        fail(str(exc))


def adapter_defaults(adapter: str | None, model: str, preset: str | None,
                     policy: str | None, seed: int | None) -> tuple[Any, Any]:
    """Samplers and prompt policy: the options, else the adapter's card, else the defaults.

    A note is printed for every option that overrides the card.
    """
    from limamono.models import adapter_card
    from limamono.models.resolve import resolve_adapter

    try:
        chosen = adapter_card.defaults(resolve_adapter(adapter, model), preset=preset,
                                       policy=policy)
    except ValueError as exc:
        fail(str(exc))
    for note in chosen.notes:
        err.print(dim(f"note: {note}"))
    settings = chosen.samplers if seed is None else replace(chosen.samplers, seed=seed)
    return settings, chosen.policy


# --------------------------------------------------------------------------- commands

def chat_cmd(
    card: Path | None = typer.Option(None, "--card", help="Character card: .png/.json "
                                     "(SillyTavern V1-V3), .yaml conversation or .txt sheet."),
    user: str = typer.Option("User", "--user", help="Your name in the chat."),
    persona: str = typer.Option("", "--persona", help="A short description of you (kept "
                                "with the chat; the prompt format has no place for it)."),
    model: str = typer.Option("smollm2-135m", "--model", help=MODEL_HELP),
    adapter: str = typer.Option("demo", "--adapter", help="LoRA adapter folder, 'demo' (the "
                                "bundled one, if present) or 'none'."),
    preset: str | None = typer.Option(None, "--preset", help="Sampler preset (default: the "
                                      "adapter's, else limamono)."),
    policy: str | None = typer.Option(None, "--policy", help="Prompt policy: training or "
                                      "sillytavern (default: the adapter's, else training)."),
    chat_id: int | None = typer.Option(None, "--chat", help="Resume a saved chat by id "
                                       "(see `limamono chats list`)."),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, help="Most tokens per reply."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the first reply (each "
                                    "later one uses the next number)."),
    house_style: bool = typer.Option(False, "--house-style", help="Convert the card's "
                                     "asterisk-style greeting and sheet to the house style."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "model (default: the engine's choice)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    gpu_layers: str | None = GPU_LAYERS_OPTION,
    kv_type: str = KV_TYPE_OPTION,
    flash_attn: str = FLASH_ATTN_OPTION,
    db: Path | None = typer.Option(None, "--db", help="Chat database (default: "
                                   "$LIMAMONO_HOME/chats.db)."),
    ban: list[str] = typer.Option([], "--ban", help="A phrase never to generate (repeatable; "
                                  "case-insensitive): the engine rewinds and resamples."),
    soft_landing: bool = typer.Option(True, "--soft-landing/--no-soft-landing",
                                      help=SOFT_LANDING_HELP),
) -> None:
    """Chat with a character in the terminal (one line a message; /help for commands)."""
    from limamono.core.conversation import User

    if (card is None) == (chat_id is None):
        fail("give either --card FILE (a new chat) or --chat ID (resume a saved one)")
    store = open_store(db)
    start = load_character(card, User(user, persona), house_style) if card else None
    if chat_id is not None:  # fail before the model loads, not after
        _check_chat(store, chat_id)
    settings, prompt_policy = adapter_defaults(adapter, model, preset, policy, seed)
    if not soft_landing:
        settings = settings.replace(soft_landing=False)
    if ban:
        try:
            settings = settings.replace(banned_strings=(*settings.banned_strings, *ban))
        except ValueError as error:  # SamplerError: a phrase too long, too many
            fail(f"--ban: {error}")
    engine = make_engine(model, None if adapter == "none" else adapter, threads, backend,
                         llama_options(gpu_layers, kv_type, flash_attn))
    if start is not None:
        chat_id = store.create_chat(start, source=str(card))
    assert chat_id is not None
    session = start_session(store, chat_id, engine, settings, max_tokens, prompt_policy)
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
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    gpu_layers: str | None = GPU_LAYERS_OPTION,
    kv_type: str = KV_TYPE_OPTION,
    flash_attn: str = FLASH_ATTN_OPTION,
    db: Path | None = typer.Option(None, "--db", help="Chat database (default: "
                                   "$LIMAMONO_HOME/chats.db)."),
) -> None:
    """Run a short scripted roleplay on the embedded model and save it (the main job)."""
    from limamono.core.conversation import User

    path = character or _first_example()
    store = open_store(db)
    start = load_character(path, User(user))
    settings, prompt_policy = adapter_defaults(adapter, model, None, None, seed)
    err.print(dim(f"loading {model} (adapter: {adapter})..."))
    setup = time.monotonic()
    engine = make_engine(model, None if adapter == "none" else adapter, threads, backend,
                         llama_options(gpu_layers, kv_type, flash_attn))
    loaded_by = getattr(engine, "backend", None)  # the real engines say which they are
    err.print(dim(f"model ready in {time.monotonic() - setup:.1f} s"
                  + (f" ({loaded_by})" if loaded_by else "")))
    chat_id = store.create_chat(start, source=str(path))
    session = start_session(store, chat_id, engine, settings, max_tokens, prompt_policy)
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
            stats = getattr(engine, "stats", None)  # the real engine's KV-cache counters
            cached = f", {stats.last_reused} of them cached" if stats is not None else ""
            err.print(dim(f"{result.completion_tokens} tokens after a {result.prompt_tokens}-"
                          f"token prompt{cached}, in {time.monotonic() - began:.1f} s"))
    err.print(dim(f"demo took {time.monotonic() - setup:.1f} s after setup"))
    out.print(f"\nSaved as chat {chat_id} in {store.path}. Go on with: "
              f"limamono chat --chat {chat_id}" + (f" --db {db}" if db else ""), soft_wrap=True)


def _check_chat(store: ChatStore, chat_id: int) -> None:
    from limamono.store import StoreError

    try:
        store.load_chat(chat_id)
    except StoreError as exc:
        fail(str(exc))


def _first_example() -> Path:
    import limamono

    # The examples sit next to src/ in the repository (installed editable, as `make` does).
    folder = Path(limamono.__file__).resolve().parents[2] / "examples" / "characters"
    found = sorted(folder.glob("*.yaml"))
    if not found:
        fail(f"no bundled character in {folder}; pass --character FILE")
    return found[0]


def register(app: typer.Typer) -> None:
    """Add ``chat``, ``chats`` and ``demo`` to the CLI."""
    app.command("chat")(chat_cmd)
    app.command("demo")(demo_cmd)
    app.add_typer(chats_app, name="chats")
