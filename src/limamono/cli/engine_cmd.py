"""`limamono models` and `limamono generate` (alias `complete`): the engine from the shell."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

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
    visible,
)
from limamono.models.resolve import DTYPE_HELP


class ConversionProgress:
    """A Rich progress bar that appears only if the embedded model needs converting."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, step: str, done: int, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self._progress is None:
            err.print("converting the embedded model once (later loads read the cache)")
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TimeElapsedColumn(), console=err, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(step, total=total)
        self._progress.update(self._task, description=step, completed=done)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Stop the bar (safe to call when it never started)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def load_engine_for_cli(model: str, adapter: str | os.PathLike[str] | None, dtype: str = "auto",
                        threads: int | None = None, backend: str = "auto",
                        context: int | None = None, llama: Any = None) -> Any:
    """The one engine loader of the CLI (generate, chat, demo, serve, eval).

    ``limamono.engine.load_engine`` with a conversion progress bar (shown only when the
    embedded model needs converting); a model that cannot be loaded ends the command with
    its error and fix (exit 2).
    """
    from transformers.utils import logging as hf_logging

    from limamono.engine import load_engine
    from limamono.models.resolve import ModelError

    hf_logging.disable_progress_bar()  # our own bar, not one tqdm bar per weight file
    progress = ConversionProgress()
    try:
        return load_engine(model, adapter=adapter, dtype=dtype, threads=threads,
                           context_length=context, progress=progress, backend=backend,
                           llama=llama)
    except (ModelError, ValueError) as exc:
        fail(str(exc))
    finally:
        progress.close()


def prepare_model_for_cli(model: str) -> None:
    """Resolve ``model`` now, converting the embedded one with a progress bar if needed.

    Commands that show their own live display (eval) call this first, since Rich allows
    one live display at a time. Model errors end the command (exit 2).
    """
    from transformers.utils import logging as hf_logging

    from limamono.models.resolve import ModelError, resolve_model

    hf_logging.disable_progress_bar()  # our own bar, not transformers' per-step bars
    progress = ConversionProgress()
    try:
        resolve_model(model, progress=progress)
    except ModelError as exc:
        fail(str(exc))
    finally:
        progress.close()


@contextmanager
def ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While inside, the first Ctrl-C sets ``event`` (a clean cancel); a second one aborts."""
    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def models_cmd(
    prepare: bool = typer.Option(False, "--prepare", help="Convert the embedded default model "
                                 "into the cache now (once, about a minute and a half), so the "
                                 "first chat or demo starts at once. `make demo` runs this."),
) -> None:
    """List the models that can be loaded here (no network), and the dtype --dtype auto picks.

    The embedded default, converted folders under $LIMAMONO_HOME/models and models in the
    local Hugging Face cache; and the dtype that --dtype auto picks on this machine, with the
    reason."""
    from rich.table import Table

    from limamono.models.resolve import DEFAULT_MODEL, choose_dtype, limamono_home, list_models

    if prepare:
        prepare_model_for_cli(DEFAULT_MODEL)

    table = Table("name", "kind", "state", "path")
    for info in list_models():
        table.add_row(info.name, info.kind, info.state, str(info.path))
    out.print(table)
    out.print(f"cache folder: {limamono_home()} (set LIMAMONO_HOME to move it)")
    choice = choose_dtype("auto")
    out.print(f"dtype auto: {choice.dtype}: {choice.reason} (--dtype to choose)")


def _read_prompt(prompt: str | None, file: Path | None) -> str:
    if (prompt is None) == (file is None):
        fail("give exactly one of --prompt TEXT or --file F (use --file - for stdin)")
    if prompt is not None:
        return prompt
    assert file is not None
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{file}: cannot read the prompt ({exc}); fix: pass a UTF-8 text file")


def generate_cmd(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt text."),
    file: Path | None = typer.Option(None, "--file", "-f", help="Read the prompt from a file "
                                     "('-' for stdin), e.g. the output of `limamono render "
                                     "--open`."),
    preset: str = typer.Option("limamono", "--preset", help="Sampler preset: 'limamono' "
                               "(the card's settings), 'limamono-dry' or 'greedy'."),
    max_tokens: int = typer.Option(200, "--max-tokens", "-n", min=1,
                                   help="Most new tokens to generate."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (same seed, same "
                                    "prompt: same text)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
    adapter: str | None = typer.Option(None, "--adapter", "-a", help="PEFT LoRA adapter "
                                       "folder, 'demo' or 'none'."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "model (on a busy machine 1 is often much faster)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    gpu_layers: str | None = GPU_LAYERS_OPTION,
    kv_type: str = KV_TYPE_OPTION,
    flash_attn: str = FLASH_ATTN_OPTION,
    stop: list[str] = typer.Option([], "--stop", "-s", help="Stop string (repeatable); the "
                                   "text never includes it. Escapes like \\n are understood."),
    ban: list[str] = typer.Option([], "--ban", help="A phrase never to generate (repeatable; "
                                  "case-insensitive): the engine rewinds and resamples."),
    soft_landing: bool = typer.Option(True, "--soft-landing/--no-soft-landing",
                                      help=SOFT_LANDING_HELP),
) -> None:
    """Continue a prompt with a model, streaming the text to stdout.

    The finish reason (stop, length, cancelled) and the speed go to stderr. Ctrl-C stops the
    generation cleanly (a second Ctrl-C aborts).
    """
    from dataclasses import replace

    from limamono.samplers import SamplerError, get_preset

    text = _read_prompt(prompt, file)
    try:
        settings = get_preset(preset)
        if seed is not None:
            settings = replace(settings, seed=seed)
        if ban:
            settings = settings.replace(banned_strings=(*settings.banned_strings, *ban))
        if not soft_landing:
            settings = settings.replace(soft_landing=False)
    except (SamplerError, ValueError) as exc:
        fail(str(exc))
    stops = [s.encode("utf-8").decode("unicode_escape") if "\\" in s else s for s in stop]
    engine = load_engine_for_cli(model, adapter, dtype, threads, backend, None,
                                 llama_options(gpu_layers, kv_type, flash_attn))
    _stream_to_stdout(engine, text, settings, max_tokens, stops)


def _stream_to_stdout(engine: Any, prompt: str, settings: Any, max_tokens: int,
                      stops: list[str]) -> None:
    from limamono.core.policy import ContextOverflowError

    cancel = threading.Event()
    start = time.perf_counter()
    first: float | None = None
    last = None
    try:
        with ctrl_c_sets(cancel):
            for last in engine.stream_text(prompt, settings, max_tokens, stop=stops,
                                           cancel=cancel):
                if first is None and last.completion_tokens:
                    first = time.perf_counter()
                sys.stdout.write(visible(last.text))
                sys.stdout.flush()
    except ContextOverflowError as exc:
        fail(str(exc))
    sys.stdout.write("\n")
    if last is None:
        return
    total = time.perf_counter() - start
    decode = total - (first - start) if first is not None else 0.0
    speed = (last.completion_tokens - 1) / decode if decode > 0 else 0.0
    reason = last.finish_reason + (f" ({last.stop_string!r})" if last.stop_string else "")
    err.print(dim(f"finish: {reason} · prompt {last.prompt_tokens} tokens, reply "
                  f"{last.completion_tokens} tokens · first token "
                  f"{((first or start) - start):.2f} s · {speed:.1f} tokens/s"))


def register(app: typer.Typer) -> None:
    """Add `models`, `generate` and its alias `complete` to the CLI."""
    app.command("models")(models_cmd)
    app.command("generate")(generate_cmd)
    app.command("complete", help="Alias of `generate`: continue a prompt, streaming to "
                "stdout.")(generate_cmd)
