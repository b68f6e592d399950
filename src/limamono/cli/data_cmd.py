"""`limamono data lint|build|stats`: check, build and measure a training dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.text import Text

from limamono.cli.common import EXIT_BAD_INPUT, EXIT_PROBLEMS, err, fail, out
from limamono.util.untrusted import quote

data_app = typer.Typer(help="Check, build and measure a training dataset (a folder of "
                            "conversation YAML, JSONL and LimaRP YAML files); draft "
                            "conversations; preference pairs from swipes.",
                       no_args_is_help=True)

if TYPE_CHECKING:
    from limamono.dataset.build import Overflow
    from limamono.dataset.samples import EndOfTurn


def _bounds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"--length-bounds {text!r}: expected six increasing integers, e.g. "
             "10,30,60,120,240,480")


def _tokenizer(model: str) -> Any:
    from limamono.models.resolve import ModelError, load_tokenizer

    folder = Path(model)
    if (folder / "tokenizer_config.json").is_file() and not (folder / "config.json").exists():
        # A tokenizer-only folder is enough to build a dataset.
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    try:
        return load_tokenizer(model)
    except ModelError as exc:
        fail(str(exc))


_FOLLOW = typer.Option(False, "--follow-links", help="Also read symbolic links to files "
                       "and folders outside the dataset folder (skipped by default, each "
                       "with a note).")


@data_app.command("lint")
def lint_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (searched recursively) or one file."),
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Run the quality "
                                 "checks (DQ...): duplicate and near-duplicate turns, repeats, "
                                 "stock phrases, assistant-speak, refusals, speaking for the "
                                 "user, lengths against labels, thought rate."),
    phrases: Path | None = typer.Option(None, "--phrases", help="Stock-phrase list (one "
                                        "phrase a line, optional '| weight'); default: the "
                                        "shipped limamono/data/slop.txt."),
    near: float | None = typer.Option(None, "--near", help="Jaccard similarity of word "
                                      "3-grams from which two turns are near duplicates "
                                      "(default 0.6)."),
    follow_links: bool = _FOLLOW,
) -> None:
    """List every problem in every dataset file: schema, style rules, alternation, empty
    turns, missing Scenario, duplicate conversations, and the quality checks (DQ...).
    Exit 0 clean (warnings allowed unless --strict), 1 problems found, 2 unusable input."""
    from dataclasses import asdict

    from limamono.dataset import lint_dir
    from limamono.quality import load_phrases

    try:
        listed = load_phrases(phrases) if phrases is not None else None
        problems = lint_dir(path, quality, listed, near, follow_links)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps([asdict(p) for p in problems]))
    else:
        for p in problems:
            colour = {"error": "red", "warning": "yellow"}.get(p.severity, "cyan")
            out.print(Text.assemble(f"{p.where()}: ", (p.severity, colour), " ",
                                    (p.rule, "bold"), f" {p.message}"))
        errors = sum(p.severity == "error" for p in problems)
        warnings = sum(p.severity == "warning" for p in problems)
        notes = len(problems) - errors - warnings
        err.print(f"{errors} error(s), {warnings} warning(s)"
                  + (f", {notes} file(s) skipped" if notes else ""))
    if any(p.severity == "error" or (strict and p.severity == "warning") for p in problems):
        raise typer.Exit(EXIT_PROBLEMS)


def _build_config(seq_len: int, val: float, seed: int, overflow: str, end_of_turn: str,
                  train_on_inputs: bool, length_bounds: str, window_overlap: int,
                  trigger: str, normalize: bool, include_drafts: bool = False) -> Any:
    from limamono.dataset import BuildConfig

    try:
        # BuildConfig checks both values against its own lists when it is built.
        return BuildConfig(seq_len=seq_len, val=val, seed=seed,
                           overflow=cast("Overflow", overflow),
                           end_of_turn=cast("EndOfTurn", end_of_turn),
                           train_on_inputs=train_on_inputs,
                           length_bounds=_bounds(length_bounds),
                           window_overlap=window_overlap, trigger=trigger, normalize=normalize,
                           include_drafts=include_drafts)
    except ValueError as exc:
        fail(str(exc))


_SEQ = typer.Option(4096, "--seq-len", help="Most tokens in one sample.")
_VAL = typer.Option(0.05, "--val", help="Fraction of conversations held out for eval.")
_SEED = typer.Option(42, "--seed", help="Seed of the train/eval split.")
_OVERFLOW = typer.Option("window", "--overflow", help="Over-long conversations: window "
                         "(split at turns, keep the Instruction block), truncate, drop, error.")
_EOT = typer.Option("header", "--end-of-turn", help="Trained end of a character turn: header "
                    "(the next '\\n\\n###') or eos (the EOS token).")
_TOI = typer.Option(False, "--train-on-inputs", help="Train every token (no masking).")
_BOUNDS = typer.Option("10,30,60,120,240,480", "--length-bounds", help="Upper word counts "
                       "of micro,tiny,short,medium,long,massive (above: huge).")
_OVERLAP = typer.Option(2, "--window-overlap", help="Turns of context repeated (masked) at "
                        "the start of the next window.")
_TRIGGER = typer.Option("card", "--trigger", help="Trigger phrase: card, preset or the text.")
_NORMALIZE = typer.Option(True, "--normalize/--no-normalize", help="Apply the style "
                          "module's safe fixes (quotes, ellipses, spaces); each is reported.")
_MODEL = typer.Option("smollm2-135m", "--model", "-m", help="Model whose tokenizer is used.")
_DRAFTS = typer.Option(False, "--include-drafts", help="Use conversations marked "
                       "`meta: {draft: true}` (unreviewed `data draft` output), which are "
                       "refused otherwise.")


@data_app.command("build")
def build_cmd(
    path: Path = typer.Argument(..., help="Dataset folder or file."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the build to."),
    model: str = _MODEL, seq_len: int = _SEQ, val: float = _VAL, seed: int = _SEED,
    overflow: str = _OVERFLOW, end_of_turn: str = _EOT, train_on_inputs: bool = _TOI,
    length_bounds: str = _BOUNDS, window_overlap: int = _OVERLAP, trigger: str = _TRIGGER,
    normalize: bool = _NORMALIZE, include_drafts: bool = _DRAFTS,
    follow_links: bool = _FOLLOW,
) -> None:
    """Build masked training samples: tokenized/{train,eval}.jsonl (input ids and labels,
    each sample tokenised whole), segments/ (the same samples as labelled text) and
    stats.json."""
    from limamono.dataset import DatasetError, OutputError, build, check_output, write_build
    from limamono.dataset.sources import walk_dataset

    try:
        check_output(output, path)
        skipped = walk_dataset(path, follow_links)[1]
    except OutputError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(str(exc))
    for note in skipped:  # said before the tokenizer loads, so they are seen first
        err.print(f"skipped: {note.file}: {note.message}")
    config = _build_config(seq_len, val, seed, overflow, end_of_turn, train_on_inputs,
                           length_bounds, window_overlap, trigger, normalize, include_drafts)
    tokenizer = _tokenizer(model)
    try:
        result = build(str(path), tokenizer, config, follow_links)
    except FileNotFoundError as exc:
        fail(str(exc))
    except DatasetError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    try:
        stats = write_build(result, output, tokenizer, model)
    except OutputError as exc:
        fail(str(exc))
    _report(stats)
    out.print(f"wrote {output}/tokenized/, segments/, stats.json")


def _report(stats: dict[str, Any]) -> None:
    """The build's reported events on stderr: fixes, duplicates, over-long, skipped."""
    for fix in stats["style_fixes"]:
        err.print(f"normalized: {fix['file']} message {fix['message_index']} "
                  f"({', '.join(fix.get('rules', []))})", highlight=False)
    for name in stats["duplicates_dropped"]:
        err.print(f"duplicate dropped: {name}", highlight=False)
    for event in stats["overlong"]["conversations"]:
        err.print(f"over-long: {event['source']} ({event['tokens']} tokens): "
                  f"{event['action']} -> {event['samples']} sample(s)", highlight=False)
    for name in stats["skipped_no_supervised_tokens"]:
        err.print(f"skipped (no trained token): {name}", highlight=False)
    for warning in stats["warnings"]:
        where = "" if warning["message_index"] is None else f" message {warning['message_index']}"
        err.print(f"warning: {warning['file']}{where} [{warning['rule']}] {warning['message']}",
                  highlight=False)
    _table(stats)


def _table(stats: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="dataset")
    table.add_column("figure")
    for split in ("all", "train", "eval"):
        table.add_column(split, justify="right")
    splits = stats["splits"]
    rows = [("conversations", stats["conversations"]), ("samples", stats["samples"]),
            ("tokens", stats["sample_tokens"]), ("supervised tokens",
                                                 stats["supervised_tokens"])]
    keys = ["conversations", "samples", "tokens", "supervised_tokens"]
    for (label, total), key in zip(rows, keys, strict=True):
        table.add_row(label, str(total), str(splits["train"][key]), str(splits["eval"][key]))
    table.add_row("messages", str(stats["messages"]), "", "")
    table.add_row("tokens (whole conversations)", str(stats["tokens"]), "", "")
    table.add_row("over-long conversations", str(stats["overlong"]["count"]), "", "")
    out.print(table)
    roles = Table(title="per role")
    for col in ("role", "messages", "mean words", "mean tokens", "max tokens", "labels"):
        roles.add_column(col)
    for role, fig in stats["roles"].items():
        labels = ", ".join(f"{k} {v}" for k, v in stats["length_labels"][role].items())
        roles.add_row(role, str(fig["words"]["count"]), str(fig["words"]["mean"]),
                      str(fig["tokens"]["mean"]), str(int(fig["tokens"]["max"])), labels)
    out.print(roles)


@data_app.command("stats")
def stats_cmd(
    path: Path = typer.Argument(..., help="A built folder (has stats.json) or a dataset "
                                "folder (built in memory, nothing written)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    model: str = _MODEL, seq_len: int = _SEQ, val: float = _VAL, seed: int = _SEED,
    overflow: str = _OVERFLOW, end_of_turn: str = _EOT, train_on_inputs: bool = _TOI,
    length_bounds: str = _BOUNDS, window_overlap: int = _OVERLAP, trigger: str = _TRIGGER,
    plots: Path | None = typer.Option(None, "--plots", help="Folder to draw the length-label "
                                      "distribution and the tokens per conversation into "
                                      "(length_labels.png, conversation_tokens.png)."),
    include_drafts: bool = _DRAFTS,
) -> None:
    """Show a dataset's figures: conversations, messages, tokens, supervised tokens,
    per-role lengths, the length-label histogram, over-long counts and the quality figures
    (slop index, thought/sound/title rates); --plots draws them."""
    from limamono.dataset import (
        BuiltFolderError,
        DatasetError,
        build,
        compute_stats,
        is_built,
        read_stats,
    )

    if is_built(path):
        try:
            stats = read_stats(path)
        except BuiltFolderError as exc:
            fail(str(exc))
    else:
        config = _build_config(seq_len, val, seed, overflow, end_of_turn, train_on_inputs,
                               length_bounds, window_overlap, trigger, True, include_drafts)
        tokenizer = _tokenizer(model)
        try:
            stats = compute_stats(build(str(path), tokenizer, config), tokenizer)
        except FileNotFoundError as exc:
            fail(str(exc))
        except DatasetError as exc:
            fail(str(exc))
    if as_json:
        out.print_json(json.dumps(stats))
    else:
        try:
            _table(stats)
            _quality_table(stats)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # Only a damaged or hand-made stats.json lacks what a build writes.
            fail(f"{path}: its stats.json lacks what a build writes ({type(exc).__name__}: "
                 f"{quote(str(exc))}); rebuild it with `limamono data build`")
    if plots is not None:
        from limamono.dataset.plots import plot_stats

        for written in plot_stats(stats, plots):
            err.print(f"wrote {written}")


def _quality_table(stats: dict[str, Any]) -> None:
    """The quality figures of character turns (absent from builds made before them)."""
    from rich.table import Table

    figures = stats.get("quality")
    if not figures:
        return
    table = Table(title=f"quality ({figures['char_turns']} character turns)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    index = figures["slop_index"]
    table.add_row("stock phrases per 1,000 words", "n/a" if index is None else f"{index:.2f}")
    for key in ("thought", "sound", "title"):
        rate = figures[f"{key}_rate"]
        table.add_row(f"turns with a {key}", "n/a" if rate is None else f"{rate:.1%}")
    out.print(table)


@data_app.command("prefs")
def prefs_cmd(
    paths: list[Path] | None = typer.Argument(None, help="SillyTavern chat .jsonl files or "
                                              "limamono conversation .yaml files with "
                                              "swipes, or folders searched for them."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write pairs.jsonl "
                                "and prefs.json to (an earlier prefs folder is replaced)."),
    db: Path | None = typer.Option(None, "--db", help="Chat database for --chat/--all-chats "
                                   "(default: the chat command's)."),
    chat_ids: list[int] | None = typer.Option(None, "--chat", help="A stored chat's id "
                                              "(repeat it for more chats)."),
    all_chats: bool = typer.Option(False, "--all-chats", help="Every stored chat."),
    card: Path | None = typer.Option(None, "--card", help="The character's card, so the "
                                     "SillyTavern files have its sheet (such a file holds "
                                     "only the names)."),
    lint_rejects: bool = typer.Option(False, "--lint-rejects", help="Also reject a reply "
                                      "that fails a lint: house style, impersonation, "
                                      "speaking for the user, stock phrases, more words "
                                      "than its length label allows; a kept swipe that "
                                      "fails one skips its turn."),
    policy: str = typer.Option("training", "--policy", help="Prompt policy that labels the "
                               "prompt: training (as data build labels samples) or "
                               "sillytavern (as the exported presets make SillyTavern "
                               "send)."),
    phrases: Path | None = typer.Option(None, "--phrases", help="Stock-phrase list for "
                                        "--lint-rejects (default: the shipped one)."),
    model: str = _MODEL, seq_len: int = _SEQ, end_of_turn: str = _EOT,
    length_bounds: str = _BOUNDS, trigger: str = _TRIGGER, normalize: bool = _NORMALIZE,
    val: float = typer.Option(0.0, "--val", help="Fraction of chats held out for eval."),
    seed: int = _SEED,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Preference pairs (for `train` with method dpo or orpo) from chats with swipes: at
    each character turn with several swipes the kept swipe is chosen and each other one
    rejected. Prompts are the prompt policy's; samples are masked and tokenised as `data
    build` does. Reports the counts and every skipped turn with its reason."""
    from limamono.dataset.prefs import PrefsConfig, PrefsError, build_prefs, write_prefs
    from limamono.quality import load_phrases

    if not paths and not chat_ids and not all_chats:
        fail("nothing to read: give SillyTavern chat files or folders, --chat ID or "
             "--all-chats")
    try:
        config = PrefsConfig(seq_len=seq_len, end_of_turn=end_of_turn,  # type: ignore[arg-type]
                             length_bounds=_bounds(length_bounds), trigger=trigger,
                             policy=policy, normalize=normalize, lint_rejects=lint_rejects,
                             val=val, seed=seed)
        listed = load_phrases(phrases) if phrases is not None else None
    except (OSError, ValueError) as exc:
        fail(str(exc))
    chats = _prefs_chats(paths or [], card) + _stored_chats(db, chat_ids or [], all_chats)
    tokenizer = _tokenizer(model)
    try:
        result = build_prefs(chats, tokenizer, config, listed)
        report = write_prefs(result, output, tokenizer, model)
    except PrefsError as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(report))
        return
    for skip in report["skipped_turns"]:
        swipe = "" if skip["swipe"] is None else f" swipe {skip['swipe']}"
        err.print(Text(f"skipped: {skip['source']} message {skip['message_index']}{swipe}: "
                       f"{skip['reason']}"))
    out.print(Text(f"{report['pairs']} pair(s) from {report['turns_used']} of "
                   f"{report['turns_with_swipes']} turn(s) with swipes ({report['char_turns']} "
                   f"character turn(s), {report['chats']} chat(s)); "
                   f"train {report['splits']['train']}, eval {report['splits']['eval']}"))
    for reason, count in report["rejected_because"].items():
        out.print(Text(f"rejected because {reason}: {count}"))
    for reason, count in report["skipped_because"].items():
        out.print(Text(f"skipped because {reason}: {count}"))
    out.print(Text(f"wrote {output}/pairs.jsonl, prefs.json"))


#: Chat files ``data prefs`` reads: SillyTavern chat JSONL, and limamono conversation YAML
#: (which keeps swipes, and the sheet a SillyTavern file lacks).
_CHAT_SUFFIXES = (".jsonl", ".yaml", ".yml")


def _prefs_chats(paths: list[Path], card: Path | None) -> list[tuple[str, Any]]:
    """(name, chat) of every chat file under ``paths``; a bad file stops with its line
    named. Names are file names, or paths below a folder given."""
    from limamono.core.conversation import ConversationError, load
    from limamono.store import StoreError, parse_sillytavern

    start = None
    if card is not None:
        from limamono.cli.chat_cmd.session import load_character
        from limamono.core.conversation import User

        start = load_character(card, User("User"))
    chats = []
    for path in paths:
        if path.is_dir():
            found = [(f.relative_to(path).as_posix(), f) for f in sorted(path.rglob("*"))
                     if f.is_file() and f.suffix.lower() in _CHAT_SUFFIXES]
        elif path.is_file():
            found = [(path.name, path)]
        else:
            fail(f"{path}: no such file or folder")
        for name, file in found:
            try:
                if file.suffix.lower() == ".jsonl":
                    read = [parse_sillytavern(file.read_text(encoding="utf-8"), str(file))]
                    if start is not None:
                        read[0].character, read[0].scenario = start.character, start.scenario
                else:
                    read = load(file)
            except UnicodeDecodeError as exc:
                fail(f"{file}: not UTF-8 text (byte {exc.start})")
            except (OSError, StoreError, ConversationError) as exc:
                fail(str(exc))
            chats += [(name if len(read) == 1 else f"{name}#{k}", chat)
                      for k, chat in enumerate(read)]
    return chats


def _stored_chats(db: Path | None, ids: list[int], every: bool) -> list[tuple[str, Any]]:
    """(``chat ID``, chat) of the chats asked for from the store."""
    if not ids and not every:
        return []
    from limamono.cli.chat_cmd.session import open_store
    from limamono.store import StoreError

    store = open_store(db)
    try:
        wanted = [s.id for s in store.list_chats()] if every else ids
        return [(f"chat {i}", store.load_chat(i)) for i in wanted]
    except StoreError as exc:
        fail(str(exc))
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the CLI."""
    app.add_typer(data_app, name="data")
