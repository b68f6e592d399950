"""Helpers every command module shares: the consoles and the one way to fail."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

#: Results go to stdout; progress, warnings and errors to stderr.
out = Console(highlight=False)
# Messages are never hard-wrapped: a path or an error must stay greppable on one line.
err = Console(stderr=True, highlight=False, soft_wrap=True)

#: Exit codes shared by every command: 0 ok, 1 problems found, 2 unusable input.
EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (no traceback)."""
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)
