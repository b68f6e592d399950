"""`limamono data draft`: a base model drafts whole conversations for a person to edit.

Registered on the data group (``limamono.cli.data_cmd.data_app``); the logic is in
``limamono.dataset.draft``. The engine comes from ``chat_cmd.make_engine`` so the tests'
scripted engine covers this command too, as it does ``card generate``.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from limamono.cli import chat_cmd
from limamono.cli.common import (
    BACKEND_HELP,
    FLASH_ATTN_OPTION,
    GPU_LAYERS_OPTION,
    KV_TYPE_OPTION,
    err,
    fail,
    llama_options,
    out,
)
from limamono.core.conversation import Conversation
from limamono.util import atomic


def draft_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the drafts (created); "
                                "each is a conversation YAML marked `meta: {draft: true}`."),
    card: Path | None = typer.Option(None, "--card", help="Character: a card (.png/.json), "
                                     "a conversation header (.yaml) or a sheet (.txt)."),
    continue_from: Path | None = typer.Option(None, "--continue", help="A conversation YAML "
                                              "to extend (its turns stay as they are)."),
    user: str = typer.Option("User", "--user", help="The user's name (also {{user}} in the "
                             "card)."),
    persona: str = typer.Option("", "--persona", help="A line about the user, kept in the "
                                "draft's user.persona (the prompt format has no place for "
                                "it)."),
    turns: int = typer.Option(6, "--turns", min=1, help="Turns to write (the greeting counts)."),
    card_greeting: bool = typer.Option(False, "--card-greeting", help="Start from the card's "
                                       "own greeting (first_mes) instead of drafting one; it "
                                       "is not counted in --turns."),
    user_lengths: str = typer.Option("tiny,short", "--user-lengths", help="Labels of user "
                                     "turns, one picked per turn."),
    char_lengths: str = typer.Option("long,massive", "--char-lengths", help="Labels of "
                                     "character turns after the greeting."),
    greeting_length: str = typer.Option("huge", "--greeting-length", help="Label of the "
                                        "greeting."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model: smollm2-135m (embedded), "
                              "an HF folder, a GGUF file or a cached hub id."),
    adapter: str = typer.Option("none", "--adapter", help="Adapter folder, 'demo' or 'none' "
                                "(a base model drafts, as the card's data was made)."),
    preset: str | None = typer.Option(None, "--preset", help="Sampler preset (default: the "
                                      "adapter's, else limamono)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the first draft (draft j "
                                    "uses seed + 10000 j); default: a random one, recorded."),
    count: int = typer.Option(1, "-n", min=1, help="Number of drafts."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="Most tokens per turn."),
    force: bool = typer.Option(False, "--force", help="Replace existing draft files."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "model (default: the engine's choice)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    gpu_layers: str | None = GPU_LAYERS_OPTION,
    kv_type: str = KV_TYPE_OPTION,
    flash_attn: str = FLASH_ATTN_OPTION,
) -> None:
    """Draft conversations with a model in text-completion mode, turn by turn, each turn
    asked for with its length label and generated up to the next header. Every draft is
    normalised, linted and saved with `meta: {draft: true, ...}`; Ctrl-C keeps the finished
    turns. `data build` refuses drafts unless --include-drafts."""
    from limamono.dataset.draft import DraftPlan, parse_lengths

    if (card is None) == (continue_from is None):
        fail("give --card (a new conversation) or --continue FILE (extend one), not both")
    try:
        plan = DraftPlan(turns=turns, user_lengths=parse_lengths(user_lengths, "--user-lengths"),
                         char_lengths=parse_lengths(char_lengths, "--char-lengths"),
                         greeting_length=greeting_length, max_new_tokens=max_tokens)
    except ValueError as exc:
        fail(str(exc))
    start, stem = _start(card, continue_from, user, persona, card_greeting)
    base_seed = seed if seed is not None else random.SystemRandom().randrange(2**31 - 20000 * count)
    seeds = [base_seed + 10000 * j for j in range(count)]
    targets = [output / f"{stem}-draft-{s}.yaml" for s in seeds]
    try:  # before the model is loaded: a draft must never be generated and then lost
        for target in targets:
            atomic.check_name(target)
    except OSError as exc:
        fail(f"{output}: cannot write the drafts there ({exc.strerror})")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        fail(f"{existing[0]} exists; pass --force to replace it or another --seed")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{output}: cannot create the folder ({exc.strerror})")
    # The adapter's card (trigger, length bounds, stop strings, samplers) as chat uses it.
    settings, policy = chat_cmd.adapter_defaults(adapter, model, preset, None, None)
    engine = chat_cmd.make_engine(model, None if adapter == "none" else adapter, threads,
                                  backend, llama_options(gpu_layers, kv_type, flash_attn))
    for draft_seed, target in zip(seeds, targets, strict=True):
        if not _one_draft(engine, settings, policy, start, plan, draft_seed, target, model,
                          adapter):
            break


def _start(card: Path | None, continue_from: Path | None, user: str, persona: str,
           card_greeting: bool = False) -> tuple[Conversation, str]:
    """The conversation to extend and the stem of the draft file names."""
    from limamono.cards import CardError, card_to_conversation, read_card
    from limamono.core.conversation import ConversationError, User, load_yaml

    if continue_from is not None:
        try:
            conv = load_yaml(continue_from)
        except ConversationError as exc:
            fail(str(exc))
        return conv, atomic.bounded_stem(continue_from.stem)
    assert card is not None
    try:
        header = card_to_conversation(read_card(card), user)
    except CardError as exc:
        fail(str(exc))
    if card_greeting and not header.messages:
        fail(f"{card}: the card has no greeting (first_mes) to start from")
    start = Conversation(header.character, User(user, persona), header.scenario,
                         list(header.messages) if card_greeting else [],
                         {k: v for k, v in header.meta.items() if k == "source"})
    return start, _slug(header.character.name)


def _slug(name: str) -> str:
    """The file stem for a character's name: ASCII letters, digits and ``-``, at most
    ``atomic.STEM_BYTES`` long (a card's name may be 100,000 characters)."""
    return atomic.bounded_stem(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                               or "character")


def _one_draft(engine: Any, settings: Any, policy: Any, start: Conversation, plan: Any,
               seed: int, target: Path, model: str, adapter: str) -> bool:
    """Write one draft; False when drafting was cancelled (no further drafts)."""
    from limamono.cli.engine_cmd import ctrl_c_sets
    from limamono.cli.progress import counting
    from limamono.core.conversation import dump_yaml
    from limamono.dataset.draft import draft_conversation, mark_draft

    cancel = threading.Event()
    with counting() as bar, ctrl_c_sets(cancel):
        task = bar.add_task(f"draft {target.name}: turns", total=plan.turns)
        draft = draft_conversation(engine, settings, start, plan, seed, policy, cancel=cancel,
                                   on_turn=lambda done, total, _m: bar.update(task,
                                                                              completed=done))
    if draft.new_turns == 0:
        err.print(Text(f"nothing drafted for {target.name} ({draft.finish}); nothing saved",
                       style="yellow"))
        return draft.finish != "cancelled"
    final = mark_draft(draft, model, adapter, seed, settings.replace(seed=seed))
    try:
        atomic.write_text(target, dump_yaml(final))
    except OSError as exc:
        fail(f"{target}: cannot write the draft ({exc.strerror or exc})")
    for note in draft.notes:
        err.print(Text(f"note: {note}", style="yellow"))
    lint = final.meta["lint"]
    state = {"done": "", "cancelled": " (cancelled: finished turns kept)",
             "empty": " (stopped at an empty turn)"}[draft.finish]
    out.print(f"wrote {target}: {draft.new_turns} new turn(s){state}, {len(lint)} lint "
              f"finding(s) in meta.lint")
    return draft.finish != "cancelled"


def register(app: typer.Typer) -> None:
    """Add ``draft`` to the ``limamono data`` group."""
    from limamono.cli.data_cmd import data_app

    data_app.command("draft")(draft_cmd)
