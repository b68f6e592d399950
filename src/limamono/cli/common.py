"""Helpers every command module shares: the consoles and the one way to fail.

Both consoles print user-controlled text (file names, card fields, chat messages, error
messages quoting values) verbatim and safely:

- markup is off by default, so ``[bold]x.yaml`` or ``[/x]`` in a path is printed as written
  and never parsed as Rich markup (a command that wants styling builds ``Text`` objects or
  passes ``markup=True`` with the user's part escaped);
- control characters are neutralised on the way to the terminal (``\\x1b[31m`` in an
  imported chat is shown as ``␛[31m``, never sent as an escape sequence); storage and
  exports keep them. Invisible format characters (bidi overrides and isolates such as
  U+202E, zero-width joiners and spaces, the BOM) are shown as ``<U+202E>``, so a name
  can never render reversed or hide text; a lone surrogate (from an undecodable file name)
  as ``�``;
- nothing is hard-wrapped: a path or an error stays greppable on one line, whatever the
  terminal width (the terminal wraps it for display).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import (
    Console,
    ConsoleOptions,
    ConsoleRenderable,
    RenderableType,
    RenderHook,
    RenderResult,
)
from rich.measure import Measurement
from rich.segment import Segment
from rich.text import Text

#: C0 controls except newline and tab, DEL, and the C1 controls (ESC, BEL, CSI, OSC, ...);
#: Unicode's format characters (category Cf, Unicode 14: bidi embeddings, overrides and
#: isolates, zero-width space/joiners, word joiner, BOM, tags, ...) and the line and paragraph
#: separators (Zl, Zp), written out so no table of the Unicode database is built at start-up
#: (a test compares it with ``unicodedata``); and the surrogates.
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f\ud800-\udfff]")


#: ``--backend`` help, the same on every command that loads a model.
BACKEND_HELP = ("auto (llama.cpp for GGUF models, the embedded one included, with no "
                "adapter or a plain LoRA one), llamacpp (GGUF files only) or torch (HF "
                "folders, hub ids and the embedded model; no other .gguf file).")
#: The llama.cpp switches of every command that loads a GGUF (one definition, shared).
GPU_LAYERS_OPTION: Any = typer.Option(
    None, "--gpu-layers", help="llama.cpp: layers to offload to the GPU, a number or 'all' "
    "(default: all when llama.cpp was built with a GPU backend, else 0).")
KV_TYPE_OPTION: Any = typer.Option(
    "f16", "--kv-type", help="llama.cpp: KV-cache type: f16, bf16, f32, q8_0 or q4_0 (the "
    "quantized ones halve or quarter the cache and need flash attention).")
FLASH_ATTN_OPTION: Any = typer.Option(
    "auto", "--flash-attn", help="llama.cpp: flash attention: auto, on or off.")


def llama_options(gpu_layers: str | None, kv_type: str, flash_attn: str,
                  parallel: int = 1, **more: Any) -> Any:
    """The :class:`~limamono.engine.load.LlamaOptions` of the switches; a bad value ends
    the command naming the option (exit 2)."""
    from limamono.engine.llamacpp import FLASH_ATTN, KV_TYPES
    from limamono.engine.load import LlamaOptions

    layers: int | None = None
    if gpu_layers is not None:
        if gpu_layers == "all":
            layers = -1
        elif gpu_layers.isdigit():
            layers = int(gpu_layers)
        else:
            fail(f"--gpu-layers {gpu_layers!r}: give a number of layers (0: none) or 'all'")
    if kv_type not in KV_TYPES:
        fail(f"--kv-type {kv_type!r}: must be one of {', '.join(KV_TYPES)}")
    if flash_attn not in FLASH_ATTN:
        fail(f"--flash-attn {flash_attn!r}: must be one of {', '.join(FLASH_ATTN)}")
    return LlamaOptions(parallel=parallel, gpu_layers=layers, kv_type=kv_type,
                        flash_attn=flash_attn, **more)


MODEL_HELP = ("Model: smollm2-135m (embedded; either backend), a .gguf file (llama.cpp "
              "backend), an HF folder or a cached hub id (torch backend).")

#: ``--soft-landing/--no-soft-landing`` help, the same on every command that generates.
SOFT_LANDING_HELP = ("Steer a reply near its token budget to end at a sentence end with its "
                     "quote or thought closed (on where the sampler preset has it: "
                     "limamono); --no-soft-landing turns it off.")


def visible(text: str) -> str:
    """``text`` with every control and invisible format character shown visibly.

    C0 controls become their Unicode control pictures (ESC -> ``␛``, BEL -> ``␇``), DEL
    becomes ``␡``, C1 controls and lone surrogates ``�`` (one cell each, so a control
    character never shifts a table); format characters (U+202E, U+2066-U+2069, ZWJ, BOM,
    ...) become ``<U+202E>``. Newline and tab are kept.

    Rich drops BEL, BS, VT, FF and CR from any text it is given, so text that may hold them
    goes through this before it becomes a ``Text`` (``chats list/show`` do); the consoles
    apply it to everything else on the way out.
    """
    return _CONTROL.sub(_picture, text)


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if code <= 0x9F or 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return f"<U+{code:04X}>"


class _Visible:
    """Renders another renderable with its text segments passed through ``visible``."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control or not _CONTROL.search(segment.text):
                yield segment
            else:
                yield Segment(visible(segment.text), segment.style)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.renderable)


class _NeutraliseControls(RenderHook):
    def process_renderables(self, renderables: list[ConsoleRenderable],
                            ) -> list[ConsoleRenderable]:
        return [_Visible(r) for r in renderables]


def _console(**kwargs: object) -> Console:
    console = Console(highlight=False, markup=False, soft_wrap=True,
                      **kwargs)  # type: ignore[arg-type]  # Console's keywords differ in type
    console.push_render_hook(_NeutraliseControls())
    return console


#: Results go to stdout; progress, warnings and errors to stderr.
out = _console()
err = _console(stderr=True)

#: Exit codes shared by every command: 0 ok, 1 problems found, 2 unusable input.
EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2


def labelled(label: str, style: str, message: str) -> Text:
    """``label message`` with only the label styled; the message is never parsed as markup."""
    return Text.assemble((label, style), " ", message)


def dim(message: str) -> Text:
    """A dimmed progress or statistics line (the message is printed as written)."""
    return Text(message, style="dim")


def warn(message: str) -> None:
    """Print ``warning: message`` to stderr."""
    err.print(labelled("warning:", "yellow", message))


def refuse_overwrite(path: Path, force: bool) -> None:
    """The one rule for output files: an existing file is replaced only with ``--force``."""
    if not force and path.exists():
        fail(f"{path} exists; pass --force to replace it")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (no traceback)."""
    err.print(labelled("error:", "bold red", message))
    raise typer.Exit(code)

