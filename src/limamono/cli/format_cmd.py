"""`limamono render` and `limamono presets export`: the prompt format from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from limamono.cli.common import fail, out


def render_cmd(
    file: Path = typer.Argument(..., help="Conversation file (.yaml or .jsonl; the first "
                                          "conversation of a .jsonl)."),
    open_response: bool = typer.Option(False, "--open", help="End with an open character "
                                       "turn, as sent to the model for the next reply."),
    length: str = typer.Option("long", "--length", help="Length label of the open turn."),
    input_length: str | None = typer.Option(None, "--input-length", help="Length label for "
                                            "user turns that have none (training: the "
                                            "newest; sillytavern: all)."),
    trigger: str = typer.Option("card", "--trigger", help="'card' (the model card's trigger "
                                "phrase) or 'preset' (the published SillyTavern preset's)."),
    policy: str = typer.Option("training", "--policy", help="Prompt policy: 'training' "
                               "(labels from word counts, as chat, serve and eval send by "
                               "default) or 'sillytavern' (as the exported presets send)."),
) -> None:
    """Print the Limamono prompt of a conversation file, byte for byte.

    Nothing is added: with --open the output ends at the open turn's `Name:`, exactly the
    text sent to the model (pipe it to `limamono generate --file -`). On a terminal,
    control characters are shown as visible stand-ins and the shell prompt starts on a new line.
    """
    from limamono.core import conversation, format
    from limamono.core.policy import get_policy

    try:
        conv = conversation.load(file)[0]
        text = get_policy(policy, trigger).render(conv, open_response=open_response,
                                                  response_length=length,
                                                  input_length=input_length)
    except (conversation.ConversationError, format.FormatError, ValueError) as exc:
        fail(str(exc))
    except IndexError:
        fail(f"{file}: holds no conversation")
    write_exact(text)


def write_exact(text: str) -> None:
    """Write ``text`` to stdout unchanged (no newline added) when it goes to a file or pipe.

    On a terminal, control characters are escaped and a final newline keeps the shell's
    prompt off the last line: what a person reads there is a display, not the bytes.
    """
    from limamono.cli.common import visible

    stream = sys.stdout
    if stream.isatty():
        text = visible(text) + ("" if text.endswith("\n") else "\n")
    stream.write(text)
    stream.flush()


presets_app = typer.Typer(help="SillyTavern presets for the Limamono format.",
                          no_args_is_help=True)


@presets_app.command("export")
def presets_export_cmd(
    directory: Path = typer.Argument(..., help="Folder to write the presets into (created)."),
    trigger: str = typer.Option("card", "--trigger", help="'card' or 'preset' trigger phrase."),
    preset: str = typer.Option("limamono", "--preset", help="Sampler preset for the "
                               "text-completion preset: 'limamono' (the card's) or "
                               "'limamono-dry' (the card's plus DRY; not the card's)."),
) -> None:
    """Write SillyTavern instruct, context, text-completion and master-import presets.

    Import `Limamono.master.json` in SillyTavern (AI Response Formatting > Master Import), or
    the three separate files. With them SillyTavern sends exactly the Limamono prompt. The
    HF chat template (`chat_template.jinja`) is written beside them.
    """
    from limamono.cards import presets

    try:
        written = presets.export(directory, trigger=trigger, preset=preset)
    except OSError as exc:
        fail(f"{directory}: cannot write the presets ({exc.strerror or exc})")
    except ValueError as exc:
        fail(str(exc))
    for path in written:
        out.print(str(path))


def register(app: typer.Typer) -> None:
    """Add the format commands to the CLI."""
    app.command("render")(render_cmd)
    app.add_typer(presets_app, name="presets")
