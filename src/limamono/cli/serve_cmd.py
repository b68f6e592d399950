"""`limamono serve`: the HTTP API for SillyTavern and other clients, on uvicorn."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from limamono.cli.common import (
    BACKEND_HELP,
    FLASH_ATTN_OPTION,
    GPU_LAYERS_OPTION,
    KV_TYPE_OPTION,
    MODEL_HELP,
    SOFT_LANDING_HELP,
    err,
    fail,
    llama_options,
    out,
    warn,
)
from limamono.models.resolve import DTYPE_HELP

#: ``--parallel`` by default: llama.cpp's server also opens 4 slots when not told.
DEFAULT_PARALLEL = 4

_HELP = (
    "Serve a model over the APIs SillyTavern already speaks.\n\n"
    "KoboldAI/KoboldCpp (URL http://HOST:PORT/api); text-generation-webui, llama.cpp's "
    "server, TabbyAPI, Aphrodite/vLLM and OpenAI-compatible text completion (URL "
    "http://HOST:PORT); and /v1/chat/completions in the Limamono format. Grammars and JSON "
    "schemas (grammar, grammar_string, json_schema, ...) run on the llama.cpp engine.\n\n"
    "A chat page for the browser is at http://HOST:PORT/ (--open opens it), sharing its "
    "chats with `limamono chat` (--db).\n\n"
    "On the llama.cpp engine (GGUF files, the default) --parallel conversations are decoded "
    "together, one batch per step; the torch engine runs one at a time. Up to --queue more "
    "requests wait, more get 503. Binds 127.0.0.1 unless told otherwise. See "
    "docs/SILLYTAVERN.md and docs/WEBCHAT.md."
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_config(preset: str | None, queue: int, api_key: str | None,
                  cors_origins: list[str], max_body_mb: float, default_max_tokens: int,
                  adapter: str | None, model: str | None = None, policy: str | None = None,
                  trigger: str | None = None, bans: tuple[str, ...] = (),
                  allowed_hosts: tuple[str, ...] = (),
                  soft_landing: bool = True) -> tuple[Any, tuple[str, ...]]:
    """The :class:`~limamono.server.ServerConfig` for the options, and notes to show.

    The adapter's card (``limamono.json``) gives the prompt policy and the samplers unless
    an option is given explicitly; ``soft_landing`` False turns it off in the base
    settings (a request may still send ``soft_landing``). Raises ValueError for a bad
    option or card.
    """
    from limamono.models import adapter_card
    from limamono.models.resolve import resolve_adapter
    from limamono.server import ServerConfig

    if not math.isfinite(max_body_mb) or max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be a positive number of megabytes, got "
                         f"{max_body_mb}")
    adapter_dir = resolve_adapter(adapter, model)
    chosen = adapter_card.defaults(adapter_dir, preset=preset, policy=policy, trigger=trigger)
    samplers = chosen.samplers
    if bans:  # every request's banned strings are these plus its own
        from limamono.samplers import SamplerError, get_preset

        try:
            base = samplers if samplers is not None else get_preset(chosen.preset)
            samplers = base.replace(banned_strings=(*base.banned_strings, *bans))
        except SamplerError as error:
            raise ValueError(f"--ban: {error}") from None
    if not soft_landing:
        from limamono.samplers import get_preset

        base = samplers if samplers is not None else get_preset(chosen.preset)
        samplers = base.replace(soft_landing=False)
    config = ServerConfig(preset=chosen.preset, queue=queue, api_key=api_key or None,
                          cors_origins=tuple(cors_origins), allowed_hosts=allowed_hosts,
                          max_body_bytes=int(max_body_mb * 1024 * 1024),
                          default_max_tokens=default_max_tokens,
                          adapter_name=adapter_dir.name if adapter_dir else None,
                          prompt_policy=chosen.policy, samplers=samplers)
    return config, chosen.notes


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve", help=_HELP)
    def serve(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        adapter: str = typer.Option("demo", "--adapter",
                                    help="LoRA adapter folder, 'demo' (the bundled adapter, "
                                    "trained on the embedded model: with another --model it "
                                    "means none) or 'none' (the bare base). The server says "
                                    "at start which one it applies."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
        port: int = typer.Option(5001, "--port", help="TCP port (KoboldCpp's default)."),
        api_key: str | None = typer.Option(
            None, "--api-key", envvar="LIMAMONO_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every route but health and version."),
        admin_key: str | None = typer.Option(
            None, "--admin-key", envvar="LIMAMONO_ADMIN_KEY",
            help="Turn on the adapter routes (text-generation-webui's /v1/internal/lora/* and "
            "TabbyAPI's /v1/lora*: list, load, unload LoRA adapters at run time; llama.cpp "
            "engine only), which then need 'Authorization: Bearer KEY' or 'X-Admin-Key: "
            "KEY'. Without it they answer 403."),
        lora_dir: Path | None = typer.Option(
            None, "--lora-dir", help="Folder of the adapters the adapter routes may load by "
            "name: PEFT adapter folders (converted to GGUF LoRA once) and .gguf LoRA files."),
        context: int | None = typer.Option(None, "--context",
                                           help="Context length in tokens (default: the "
                                                "model's)."),
        preset: str | None = typer.Option(
            None, "--preset", help="Sampler preset for fields a request does not send "
            "(default: the adapter's, else limamono)."),
        policy: str | None = typer.Option(
            None, "--policy", help="Prompt policy of the chat route: training or sillytavern "
            "(default: the adapter's, else training)."),
        trigger: str | None = typer.Option(
            None, "--trigger", help="Trigger phrase of the chat route: card or preset "
            "(default: the adapter's, else card)."),
        queue: int = typer.Option(16, "--queue", help="Requests that may wait for a slot; "
                                                      "more get 503."),
        parallel: int | None = typer.Option(
            None, "--parallel", "-np", min=1, show_default=False,
            help="Slots of the llama.cpp engine: conversations generated at once, decoded "
            "together (each slot holds its own KV cache of --context tokens); a request's "
            "`n` choices take one slot each. The torch engine has one slot. "
            # Escaped: Rich markup would take an unescaped "[default: 4]" for a style tag
            f"\\[default: {DEFAULT_PARALLEL}]"),
        kv_save_mb: int = typer.Option(
            2048, "--kv-save-mb", min=0,
            help="llama.cpp engine: save finished conversations' KV caches under "
            "LIMAMONO_HOME/kvstate, at most this many MiB (least recently used go first), "
            "so a restarted server continues a long chat without reading it again; 0: off."),
        gpu_layers: str | None = GPU_LAYERS_OPTION,
        kv_type: str = KV_TYPE_OPTION,
        flash_attn: str = FLASH_ATTN_OPTION,
        slot_save_path: str | None = typer.Option(
            None, "--slot-save-path", help="Folder for llama.cpp server's "
            "POST /slots/{id}?action=save|restore files (SillyTavern's llama.cpp mode); "
            "without it those actions answer 501."),
        cors_origin: list[str] = typer.Option(
            [], "--cors-origin", help="Browser origin allowed to call the API (repeatable); "
                                      "none: no CORS, and no page of another origin may POST."),
        allow_host: list[str] = typer.Option(
            [], "--allow-host", help="A Host name to answer besides IP addresses, localhost, "
            "names without a dot and --host (repeatable; '*.example.org'; '*': any). Other "
            "names get 400 (DNS rebinding)."),
        max_body_mb: float = typer.Option(4.0, "--max-body-mb",
                                          help="Larger request bodies get 413."),
        max_tokens: int = typer.Option(256, "--max-tokens",
                                       help="Reply length when a request gives none."),
        dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
        backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
        ban: list[str] = typer.Option(
            [], "--ban", help="A phrase never to generate (repeatable; case-insensitive; "
            "added to each request's banned_strings). The engine rewinds and resamples."),
        db: Path | None = typer.Option(None, "--db", help="Chat database of the web chat "
                                       "page (default: $LIMAMONO_HOME/chats.db, the one "
                                       "`limamono chat` uses)."),
        open_browser: bool = typer.Option(False, "--open", help="Open the web chat page in "
                                          "the browser once the server listens."),
        header_timeout: float = typer.Option(
            10.0, "--header-timeout", help="Seconds a request line and headers may take to "
            "arrive; then 408 and the connection is closed."),
        body_timeout: float = typer.Option(
            60.0, "--body-timeout", help="Seconds a request body may take to arrive after "
            "its headers; then 408."),
        max_connections: int = typer.Option(
            512, "--max-connections", help="Open connections at most; more get 503 and are "
            "closed at once (lowered to what `ulimit -n` allows)."),
        soft_landing: bool = typer.Option(True, "--soft-landing/--no-soft-landing",
                                          help=SOFT_LANDING_HELP),
    ) -> None:
        if context is not None and context < 1:
            fail(f"--context must be a positive number of tokens, got {context}")
        from limamono.server.connections import ConnectionLimits

        try:
            limits = ConnectionLimits(header_timeout_s=header_timeout,
                                      body_timeout_s=body_timeout,
                                      max_connections=max_connections)
        except ValueError as error:
            option = str(error).split("=", 1)[0]
            names = {"header_timeout_s": "--header-timeout", "body_timeout_s": "--body-timeout",
                     "max_connections": "--max-connections"}
            fail(f"{names.get(option, option)}{str(error)[len(option):]}")
        try:
            config, notes = server_config(preset, queue, api_key, cors_origin, max_body_mb,
                                          max_tokens, adapter, model, policy, trigger,
                                          tuple(ban), (*allow_host, host),
                                          soft_landing=soft_landing)
        except ValueError as error:
            fail(str(error))
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        if not is_loopback(host) and config.api_key is None:
            warn(f"binding {host} without --api-key: anyone who can reach this port can use "
                 "the model")
        web = web_config(db)
        if slot_save_path is not None:
            config = dataclasses.replace(config, slot_save_path=Path(slot_save_path))
        if admin_key is not None or lora_dir is not None:
            if admin_key is not None and not admin_key.strip():
                fail("--admin-key is empty: pass a non-empty key or leave it out")
            if lora_dir is not None and not lora_dir.is_dir():
                fail(f"--lora-dir {lora_dir}: no such folder")
            config = dataclasses.replace(config, admin_key=admin_key, lora_dir=lora_dir)
        from limamono.models.resolve import limamono_home

        slots = DEFAULT_PARALLEL if parallel is None else parallel
        llama = llama_options(gpu_layers, kv_type, flash_attn, slots,
                              state_dir=limamono_home() / "kvstate" if kv_save_mb else None,
                              state_cap_mb=kv_save_mb)
        engine = _load(model, adapter, dtype, threads, context, backend, llama)
        if parallel is not None and parallel > 1 and getattr(engine, "parallel", 1) == 1:
            err.print(f"note: the {getattr(engine, 'backend', 'torch')} engine runs one "
                      "generation at a time; --parallel applies to the llama.cpp engine",
                      markup=False, highlight=False)
        _run(engine, config, host, port, log_level, web, open_browser,
             adapter_summary(adapter, model), limits)


def _load(model: str, adapter: str | None, dtype: str, threads: int | None,
          context: int | None, backend: str = "auto", llama: Any = None) -> Any:
    from limamono.cli.engine_cmd import load_engine_for_cli

    engine = load_engine_for_cli(model, adapter, dtype, threads, backend, context, llama)
    warm_up(engine)
    return engine


def warm_up(engine: Any) -> None:
    """One token of generation before the port opens.

    The first generation of a process pays one-time costs that no cancel can interrupt:
    importing torch for the samplers, and llama.cpp's first decode (weights paged in,
    buffers allocated); 5 to 25 s each on a loaded machine. Paid here, the first client's
    request starts at once and a drop during its prompt reading is seen in time.
    """
    from limamono.samplers import get_preset

    engine.generate("Hello", get_preset("greedy"), 1)


def web_config(db: Path | None) -> Any:
    """The web chat's settings: the chat database and the bundled characters next to the
    package (present in a clone). An existing database is checked now, before the model
    loads; a missing one is created by the first chat."""
    import limamono
    from limamono.server import WebChatConfig
    from limamono.store import ChatStore, StoreError, default_db_path

    path = db or default_db_path()
    if path.exists():
        try:
            ChatStore(path).close()
        except StoreError as error:
            fail(str(error))
    characters = Path(limamono.__file__).resolve().parents[2] / "examples" / "characters"
    return WebChatConfig(path, characters if characters.is_dir() else None)


def adapter_summary(option: str | None, model: str) -> str:
    """The banner's adapter line: the folder applied, or why none is.

    ``--adapter demo`` is every command's default but applies to the embedded model only
    (``resolve_adapter``), so a GGUF file or another model runs bare; that is said here
    instead of passing in silence.
    """
    from limamono.models.resolve import DEFAULT_MODEL, DEMO_ADAPTER, resolve_adapter

    folder = resolve_adapter(option, model)
    if folder is not None:
        return f"{folder}" + (" (the demo adapter)" if option == "demo" else "")
    if option is None or str(option).lower() == "none":
        return "none (--adapter none)"
    if model != DEFAULT_MODEL:
        return (f"none: the demo adapter was trained on {DEFAULT_MODEL} and applies only to "
                "it; pass --adapter FOLDER for this model")
    return f"none: the demo adapter is not in this installation ({DEMO_ADAPTER})"


def _run(engine: Any, config: Any, host: str, port: int, log_level: str, web: Any = None,
         open_browser: bool = False, adapter: str = "", limits: Any = None) -> None:
    from limamono.server import create_app

    def ready(bound: int) -> None:
        _announce(engine, host, bound, adapter)
        if open_browser:
            import webbrowser

            webbrowser.open(page_url(host, bound))

    app = create_app(engine, config, web)
    app.state.connection_limits = limits
    serve_app(app, host, port, log_level, on_ready=ready)


def page_url(host: str, port: int) -> str:
    """The web chat's address: a wildcard bind is opened on the loopback address."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve_app(app: Any, host: str, port: int, log_level: str,
              on_ready: Callable[[int], None]) -> None:
    """Run ``app`` on uvicorn until Ctrl-C; ``on_ready(port)`` once the socket is bound.

    Connections get read deadlines and a cap: ``app.state.connection_limits`` (the serve
    options), else the defaults of ``limamono.server.connections.ConnectionLimits``.

    The banner waits for the bind, so the URL it prints works at once (and port 0 shows the
    port the OS chose). uvicorn's own start and stop lines are hidden at ``info``: they
    repeat the banner. Its warnings, errors and the access log (a line a request) stay.
    """
    import asyncio
    import logging

    import uvicorn

    from limamono.server.connections import (
        ConnectionLimits,
        EventTally,
        quiet_accept_errors,
        uvicorn_config,
    )

    limits = getattr(app.state, "connection_limits", None) or ConnectionLimits()
    tally = EventTally(limits.log_interval_s)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            quiet_accept_errors(asyncio.get_running_loop(), tally)
            await super().startup(sockets)
            if self.started:
                on_ready(self.servers[0].sockets[0].getsockname()[1] if self.servers else port)

    server = Server(uvicorn_config(app, limits, tally, host=host, port=port,
                                   log_level=log_level))
    if log_level == "info":
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server.run()


def _announce(engine: Any, host: str, port: int, adapter: str = "") -> None:
    where = f"http://{host}:{port}"
    adapter_line = f"  Adapter: {adapter}\n" if adapter else ""
    out.print(Text.assemble("Serving ", (engine.model_name, "bold"),
                            f" (context {engine.context_length}, "
                            f"{getattr(engine, 'parallel', 1)} slot(s)) at {where}\n",
                            adapter_line,
                            f"  Web chat: {page_url(host, port)}\n"
                            f"  SillyTavern Text Completion (KoboldCpp or TextGen WebUI): "
                            f"{where}\n  SillyTavern KoboldAI Classic: {where}/api\n"
                            "  Ctrl-C stops it."), soft_wrap=True)
    out.file.flush()
