"""The `limamono` command: a thin dispatch table over importable functions.

Each command group lives in its own small module under ``limamono.cli`` and registers its
commands on the one Typer app. Heavy libraries (torch, transformers) are imported inside
the commands, so ``limamono --help`` stays instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="limamono",
    help="Build, train, serve and evaluate Limamono-style roleplay models, and chat with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' own "
                                 "warnings, logs and progress bars (hidden by default)."),
) -> None:
    """Build, train, serve and evaluate Limamono-style roleplay models, and chat with them."""
    from limamono.cli import quiet

    quiet.setup(verbose)
    if version:
        from limamono import __version__

        typer.echo(f"limamono {__version__}")
        raise typer.Exit()


#: Command modules, each exposing ``register(app)``.
COMMAND_MODULES = [
    "limamono.cli.style_cmd",
    "limamono.cli.format_cmd",
    "limamono.cli.eval_cmd",
    "limamono.cli.card_cmd",
    "limamono.cli.data_cmd",
    "limamono.cli.train_cmd",
    "limamono.cli.export_cmd",
    "limamono.cli.chat_cmd",
    "limamono.cli.cardgen_cmd",
    "limamono.cli.draft_cmd",
    "limamono.cli.serve_cmd",
    "limamono.cli.samplers_cmd",
    "limamono.cli.engine_cmd",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point."""
    app()
