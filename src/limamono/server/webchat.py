"""The web chat: the page at ``/`` and the JSON API under ``/webchat/api/`` it calls.

The page (``server/web/``: plain HTML, CSS and JavaScript, no build step, nothing from the
network) is served with a Content-Security-Policy that allows scripts and styles from this
server only, so text a card or a model wrote can never run as script even if it reached
the DOM as markup (the page only ever sets it as text).

The API is a thin layer over what the terminal chat uses: chats live in the same SQLite
store (``limamono.store.ChatStore``, one connection per request, on the thread that uses
it), a chat starts from a card through ``limamono.chat.chat_from_card`` and every change is
a ``limamono.chat.ChatSession`` operation, so prompts, length labels, swipes, continue and
undo are the session's (and its prompt policy's), never re-implemented here. A chat
started in the terminal continues in the page and back: every request checks the chat's
version in the store and reloads the session when another process saved it.

Generation goes through the server's queue like every other route: the session runs on a
worker thread with an engine whose ``stream_text`` submits a job to the queue and reads its
chunks back from the event loop. A reply streams as newline-delimited JSON events
(``start``, ``queued`` with the place in the queue when the reply has to wait, ``text``
with the house-style spans of the text so far, ``done`` with the chat and the figures,
or ``error``); a failure before the first event (busy, prompt too
long, a bad request) is an ordinary HTTP error instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from limamono.cards import CardError, read_card_bytes
from limamono.chat import ChatConfig, ChatError, ChatSession, chat_from_card
from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Message, User
from limamono.core.policy import ContextOverflowError
from limamono.engine.protocol import AdapterUnloadedError, Completion, TextChunk
from limamono.samplers import PRESETS, SamplerSettings, get_preset
from limamono.server.errors import BAD_REQUEST, BUSY, ApiError, error_body
from limamono.server.params import GenerationRequest, request_adapters
from limamono.server.queue import Job, QueueFullError
from limamono.server.state import ServerState
from limamono.server.streaming import EventStream
from limamono.store import ChatStore, StaleChatError, StoreError
from limamono.style import split_spans

#: The page's files, shipped in the package (``package-data`` in pyproject.toml).
WEB_DIR = Path(__file__).parent / "web"
#: URL path -> (file, media type). Only these are served: no directory listing, no ``..``.
STATIC: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/webchat/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/webchat/style.css": ("style.css", "text/css; charset=utf-8"),
    "/webchat/icon.svg": ("icon.svg", "image/svg+xml"),
}
#: Paths that need no API key: the page itself holds no secret (it asks for the key).
PUBLIC_PATHS = frozenset(STATIC)

#: Scripts and styles from this server only (no inline script, no ``eval``), API calls to
#: this origin only, no frames, no forms posting elsewhere, no plugins.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

#: Status of a request that conflicts with the chat's state (a reply is being generated,
#: or another process changed the chat).
CONFLICT = 409
NOT_FOUND = 404
#: The longest user name and message the page may send (bounds work on hostile input).
MAX_NAME_CHARS = 100
MAX_MESSAGE_CHARS = 100_000

#: A reply whose first piece has not come after this long says its place in the queue.
QUEUED_AFTER_S = 0.25

Action = Literal["send", "reply", "regenerate", "continue"]


@dataclass(frozen=True)
class WebChatConfig:
    """Where the web chat keeps its chats and finds its bundled characters.

    Attributes:
        db: the chat database (the one ``limamono chat`` uses by default).
        characters: a folder of bundled character cards (``*.png``/``*.json``) offered on
            the page, or None.
    """

    db: Path
    characters: Path | None = None

    def bundled(self) -> dict[str, Path]:
        """The bundled characters by name (file stem), PNG preferred over JSON."""
        if self.characters is None or not self.characters.is_dir():
            return {}
        found: dict[str, Path] = {}
        for suffix in (".json", ".png"):  # a PNG replaces the JSON of the same name
            for path in sorted(self.characters.glob(f"*{suffix}")):
                found[path.stem] = path
        return dict(sorted(found.items()))


# --------------------------------------------------------------------------- bodies

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewChat(_Body):
    """Start a chat with a bundled character."""

    character: str = Field(min_length=1, max_length=200)
    user: str = Field("User", min_length=1, max_length=MAX_NAME_CHARS)


class Generate(_Body):
    """Stream a reply: ``send`` a message, ``reply`` after the history, ``regenerate`` the
    last reply as a new swipe, or ``continue`` it."""

    action: Action
    text: str = Field("", max_length=MAX_MESSAGE_CHARS)
    length: str | None = None
    preset: str | None = None
    #: llama.cpp's per-request adapter choice, as every completion route takes it
    #: (``[{"id": 0, "scale": 1.0}]``; ``[]``: the base model; absent: every loaded
    #: adapter at its scale); checked by ``params.request_adapters``.
    lora: Any = None


class ChooseSwipe(_Body):
    """Show swipe ``index`` (0-based) of the message at ``position``."""

    position: int
    index: int


class Edit(_Body):
    """Replace the shown text of the message at ``position``."""

    position: int
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class Delete(_Body):
    """Remove the message at ``position``."""

    position: int


# --------------------------------------------------------------------------- the engine

class QueuedEngine:
    """The engine as a session sees it, with generation going through the server's queue.

    ``stream_text`` runs on a worker thread: it submits a job on the event loop and reads
    the job's chunks back, so a web chat waits its turn behind (and is counted with) every
    other client, and the queue's limits and cancellation apply. Everything else
    (tokenizing, the context length, ``prompt_ids``) is the real engine's.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.model_name = state.engine.model_name
        self.context_length = state.engine.context_length
        self.loop: asyncio.AbstractEventLoop | None = None
        self.job: Job | None = None
        #: The adapter set of the next generations (a request's ``lora``); None: every
        #: loaded adapter at its scale.
        self.adapters: dict[str, float] | None = None
        #: Told ``{"type": "queued", "position": n}`` when a job has to wait its turn.
        self.notify: Callable[[dict[str, Any]], None] | None = None

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no lock: tokenizing does not use the model)."""
        return self.state.engine.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        return self.state.engine.detokenize(ids)

    def __getattr__(self, name: str) -> Any:
        # ``prompt_ids`` (engines that add BOS) and whatever else the engine offers.
        return getattr(self.state.engine, name)

    def stream_text(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: str = "left") -> Iterator[TextChunk]:
        """Queue the generation and stream its chunks (called on a worker thread).

        Raises:
            QueueFullError: the queue is full.
        """
        loop = self.loop
        if loop is None:
            raise RuntimeError("QueuedEngine.loop is not set")
        request = GenerationRequest(prompt, settings, max_new_tokens, tuple(stop),
                                    self.context_length, adapters=self.adapters)

        async def submit() -> Job:
            return self.state.queue.submit(request, prompt)

        job = asyncio.run_coroutine_threadsafe(submit(), loop).result()
        self.job = job
        if cancel is not None and cancel.is_set():
            job.request_cancel()
        chunks = job.chunks()

        async def step() -> TextChunk | None:
            try:
                return await chunks.__anext__()
            except StopAsyncIteration:
                return None

        finished, first = False, True
        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(step(), loop)
                if first:  # still waiting after a moment: say where in the queue
                    first = False
                    with contextlib.suppress(concurrent.futures.TimeoutError):
                        future.result(timeout=QUEUED_AFTER_S)
                    position = job.position()
                    if not future.done() and position > 0 and self.notify is not None:
                        self.notify({"type": "queued", "position": position})
                chunk = future.result()
                if chunk is None:
                    break
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            if not finished:  # the session stopped reading (a cut): free the engine
                job.request_cancel()
            self.job = None


    def generate(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: str = "left") -> Completion:
        """The whole reply, through the queue (the protocol's layer 3)."""
        chunks = list(self.stream_text(prompt, settings, max_new_tokens, stop, cancel))
        last = chunks[-1]
        return Completion("".join(c.text for c in chunks), last.finish_reason or "length",
                          last.prompt_tokens, last.completion_tokens, last.stop_string)


# --------------------------------------------------------------------------- sessions

class _Saver:
    """Saves a session's chat after every change with the store's version check.

    When another process saved the chat first, the session is reloaded as saved and
    ``StaleChatError`` goes up to the request (409: the page reloads the chat).
    """

    def __init__(self, chat_id: int, version: int) -> None:
        self.chat_id = chat_id
        self.version = version
        self.store: ChatStore | None = None

    def __call__(self, session: ChatSession) -> None:
        assert self.store is not None, "the saver is used only inside a request"
        try:
            self.version = self.store.sync_messages(self.chat_id, session.history,
                                                    self.version).version
        except StaleChatError:
            chat, self.version = self.store.load_chat_version(self.chat_id)
            session.reload(chat)
            raise


@dataclass
class _Live:
    """A chat's session kept between requests (its undo steps live here)."""

    session: ChatSession
    saver: _Saver
    engine: QueuedEngine
    cancel: threading.Event = field(default_factory=threading.Event)
    generating: bool = False


class WebChats:
    """The sessions of the chats the page works on, one per chat, checked against the store.

    Args:
        state: the server's engine, config and queue.
        config: the database and the bundled characters.
    """

    def __init__(self, state: ServerState, config: WebChatConfig) -> None:
        self.state = state
        self.config = config
        self._live: dict[int, _Live] = {}
        self._lock = threading.Lock()

    def store(self) -> ChatStore:
        """A connection to the chat database for this thread (close it when done)."""
        return ChatStore(self.config.db)

    def live(self, store: ChatStore, chat_id: int, generating: bool = False,
             reading: bool = False) -> _Live:
        """The chat's session, reloaded when the store holds a newer version.

        Args:
            store: this thread's connection.
            chat_id: the chat.
            generating: claim the chat for a generation (released by ``release``).
            reading: only to read it (allowed while a reply is being generated).

        Raises:
            StoreError: no such chat.
            ApiError: 409 while a reply of this chat is being generated.
        """
        with self._lock:
            version = store.version(chat_id)
            live = self._live.get(chat_id)
            if live is not None and live.generating:
                if reading:  # the chat as saved; the running session is left alone
                    live = self._new(store, chat_id)
                    live.saver.store = store
                    return live
                raise ApiError(CONFLICT, "a reply of this chat is being generated; stop it or "
                               "wait for it to end", kind="conflict")
            if live is None or live.saver.version != version:
                live = self._live[chat_id] = self._new(store, chat_id)
            live.saver.store = store
            if generating:
                live.generating = True
                live.cancel = threading.Event()
            return live

    def _new(self, store: ChatStore, chat_id: int) -> _Live:
        chat, version = store.load_chat_version(chat_id)
        engine = QueuedEngine(self.state)
        saver = _Saver(chat_id, version)
        config = ChatConfig(max_new_tokens=self.state.config.default_max_tokens,
                            policy=self.state.config.prompt_policy)
        return _Live(ChatSession(chat, engine, None, config, on_change=saver), saver, engine)

    def release(self, live: _Live) -> None:
        """End a generation's claim on its chat."""
        with self._lock:
            live.generating = False
            live.saver.store = None

    def forget(self, chat_id: int) -> None:
        """Drop a deleted chat's session."""
        with self._lock:
            self._live.pop(chat_id, None)

    def stop(self, chat_id: int) -> bool:
        """Stop the chat's running generation (the partial reply is kept); False if none."""
        with self._lock:
            live = self._live.get(chat_id)
            if live is None or not live.generating:
                return False
            live.cancel.set()
            job = live.engine.job
        if job is not None:
            job.request_cancel()
        return True

    def run(self, chat_id: int, action: Callable[[ChatSession], object] | None = None,
            ) -> dict[str, Any]:
        """Apply an editing action (None: none) to a chat's session and return the chat
        (on a worker thread)."""
        with self.store() as store:
            live = self.live(store, chat_id, reading=action is None)
            try:
                if action is not None:
                    action(live.session)
            finally:
                live.saver.store = None
            return chat_json(chat_id, live.session, live.saver.version)


# --------------------------------------------------------------------------- JSON

def spans_json(text: str) -> list[list[str]]:
    """The house-style spans of ``text`` as ``[kind, text]`` pairs (the page's only input
    for styling; the text is set as DOM text, never parsed as markup)."""
    return [[span.kind, span.text] for span in split_spans(text)]


def chat_json(chat_id: int, session: ChatSession, version: int) -> dict[str, Any]:
    """A chat as the page shows it: every message with its spans, swipes and length label.

    ``length`` is the label the message's header carries in the next prompt (the prompt
    policy's decision: its own label, else the one its word count gives).
    """
    labels = iter(m.length for m in session.conversation().messages)
    messages = []
    for message in session.history:
        label = None if message.hidden else next(labels)
        messages.append(message_json(message, session, label))
    return {"id": chat_id, "version": version, "title": session.chat.title,
            "character": session.character.name, "user": session.user.name,
            "response_length": session.response_length, "messages": messages}


def message_json(message: Message, session: ChatSession, label: str | None) -> dict[str, Any]:
    """One message for the page."""
    return {"role": message.role,
            "name": session.character.name if message.role == "char" else session.user.name,
            "spans": spans_json(message.text), "swipe_id": message.swipe_id,
            "swipes": len(message.swipes), "length": label, "hidden": message.hidden,
            "cut": message.current.cut, "finish_reason": message.current.finish_reason}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "status": status, "message": message}


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False) + "\n"


class NdjsonStream(EventStream):
    """Newline-delimited JSON events, with ``EventStream``'s disconnect handling."""

    media_type = "application/x-ndjson"


# --------------------------------------------------------------------------- generation

def _settings(state: ServerState, preset: str | None) -> SamplerSettings:
    if preset is None or preset == "":
        return state.config.sampler_settings()
    if preset not in PRESETS:
        raise ApiError(BAD_REQUEST, f"unknown preset {preset!r}; known: {', '.join(PRESETS)}",
                       field="preset")
    return get_preset(preset)


def _start(session: ChatSession, body: Generate, cancel: threading.Event,
           ) -> tuple[Iterator[str], str, str]:
    """Start the session's generator: (pieces, target, text the pieces continue)."""
    history = session.history
    if body.action == "send":
        return session.send(body.text, cancel=cancel), "new", ""
    if body.action == "reply":
        return session.reply(cancel=cancel), "new", ""
    if body.action == "regenerate":
        target = "swipe" if history and history[-1].role == "char" else "new"
        return session.regenerate(cancel=cancel), target, ""
    base = history[-1].text if history else ""
    return session.continue_reply(cancel=cancel), "continue", base


def _generate(chats: WebChats, chat_id: int, body: Generate, loop: asyncio.AbstractEventLoop,
              emit: Callable[[dict[str, Any]], None]) -> None:
    """Run one generation on this (worker) thread, emitting the page's events."""
    try:
        store = chats.store()
    except StoreError as error:
        emit(_error(500, str(error)))
        return
    live: _Live | None = None
    try:
        settings = _settings(chats.state, body.preset)
        adapters = request_adapters(body.lora, chats.state.engine)
        live = chats.live(store, chat_id, generating=True)
        session = live.session
        live.engine.loop = loop
        live.engine.notify = emit
        live.engine.adapters = adapters
        session.settings = settings
        # Every request says its length; none is the default (``long``), never the last one.
        session.response_length = body.length or fmt.DEFAULT_RESPONSE_LENGTH
        began = time.monotonic()
        pieces, target, base = _start(session, body, live.cancel)
        emit({"type": "start", "target": target,
              "chat": chat_json(chat_id, session, live.saver.version)})
        text = base
        for piece in pieces:
            text += piece
            emit({"type": "text", "spans": spans_json(text)})
        emit({"type": "done", "chat": chat_json(chat_id, session, live.saver.version),
              "stats": _stats(session, time.monotonic() - began)})
    except ApiError as error:
        emit(_error(error.status, error.message))
    except QueueFullError as error:
        emit(_error(BUSY, f"the server is busy ({error}); try again in a moment"))
    except ContextOverflowError as error:
        emit(_error(BAD_REQUEST, str(error)))
    except AdapterUnloadedError as error:  # unloaded while the reply waited in the queue
        emit(_error(CONFLICT, str(error)))
    except StaleChatError as error:
        emit(_error(CONFLICT, f"{error}; the page shows the chat as saved"))
    except StoreError as error:
        emit(_error(NOT_FOUND if "no chat with id" in str(error) else 500, str(error)))
    except (ChatError, fmt.FormatError, ValueError) as error:
        emit(_error(BAD_REQUEST, str(error)))
    except Exception as error:  # thread boundary: the page gets the failure as an event
        emit(_error(500, f"generation failed: {error}"))
    finally:
        if live is not None:
            chats.release(live)
        store.close()


def _stats(session: ChatSession, seconds: float) -> dict[str, Any]:
    result = session.last_result
    if result is None:
        return {}
    context = session.engine.context_length
    return {"completion_tokens": result.completion_tokens,
            "prompt_tokens": result.prompt_tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(result.completion_tokens / seconds, 2)
            if seconds > 0 else None,
            "context_length": context,
            "context_used": result.prompt_tokens + result.completion_tokens,
            "finish_reason": result.finish_reason, "cut": result.cut,
            "dropped": result.dropped}


# --------------------------------------------------------------------------- routes

def router(state: ServerState, config: WebChatConfig) -> APIRouter:
    """The page and its API."""
    chats = WebChats(state, config)
    api = APIRouter(tags=["web chat"])

    for path, (name, media_type) in STATIC.items():
        api.add_api_route(path, _static(name, media_type), methods=["GET"],
                          include_in_schema=False)

    @api.get("/webchat/api/info", summary="The model, presets, lengths and characters")
    async def info() -> dict[str, Any]:
        loaded = getattr(state.engine, "adapters", None)
        adapters = [{"id": i, "name": a.name, "scale": a.scale}
                    for i, a in enumerate(loaded() if callable(loaded) else [])]
        return {"model": state.model_name, "context_length": state.engine.context_length,
                "adapters": adapters, "runtime_adapters": callable(loaded),
                "presets": list(PRESETS), "default_preset": state.config.preset,
                "lengths": list(LENGTHS), "default_length": fmt.DEFAULT_RESPONSE_LENGTH,
                "characters": list(config.bundled()),
                "max_new_tokens": state.config.default_max_tokens}

    @api.get("/webchat/api/chats", summary="The saved chats, most recent first")
    async def list_chats() -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            with chats.store() as store:
                return [{"id": c.id, "character": c.character_name, "user": c.user_name,
                         "messages": c.messages, "updated": c.updated, "title": c.title,
                         "version": c.version}
                        for c in store.list_chats()]
        return await run_in_threadpool(_store_call, work)

    @api.post("/webchat/api/chats", summary="Start a chat with a bundled character")
    async def new_chat(body: NewChat) -> dict[str, Any]:
        path = config.bundled().get(body.character)
        if path is None:
            raise ApiError(NOT_FOUND, f"no bundled character {body.character!r}",
                           field="character")
        user = body.user.strip() or "User"
        return await run_in_threadpool(
            _store_call, lambda: _create(chats, path.read_bytes(), path.name, user,
                                         str(path)))

    @api.post("/webchat/api/chats/import", summary="Start a chat from an uploaded card file")
    async def import_card(request: Request,
                          name: str = Query("card.png", max_length=255),
                          user: str = Query("User", max_length=MAX_NAME_CHARS),
                          ) -> dict[str, Any]:
        data = await request.body()
        user = user.strip() or "User"
        return await run_in_threadpool(
            _store_call, lambda: _create(chats, data, name, user, f"upload:{name}"))

    @api.get("/webchat/api/chats/{chat_id}", summary="A chat with every message")
    async def get_chat(chat_id: int) -> dict[str, Any]:
        return await run_in_threadpool(_store_call, lambda: chats.run(chat_id))

    @api.delete("/webchat/api/chats/{chat_id}", summary="Delete a chat")
    async def delete_chat(chat_id: int) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with chats.store() as store:
                store.delete_chat(chat_id)
            chats.forget(chat_id)
            return {"deleted": chat_id}
        return await run_in_threadpool(_store_call, work)

    @api.post("/webchat/api/chats/{chat_id}/swipe", summary="Show another swipe")
    async def swipe(chat_id: int, body: ChooseSwipe) -> dict[str, Any]:
        return await _edit(chats, chat_id,
                           lambda s: s.choose_swipe(body.index, body.position))

    @api.post("/webchat/api/chats/{chat_id}/edit", summary="Replace a message's text")
    async def edit(chat_id: int, body: Edit) -> dict[str, Any]:
        return await _edit(chats, chat_id, lambda s: s.edit(body.text, body.position))

    @api.post("/webchat/api/chats/{chat_id}/delete", summary="Delete a message")
    async def delete(chat_id: int, body: Delete) -> dict[str, Any]:
        return await _edit(chats, chat_id, lambda s: s.delete(body.position))

    @api.post("/webchat/api/chats/{chat_id}/undo", summary="Undo the last change")
    async def undo(chat_id: int) -> dict[str, Any]:
        def action(session: ChatSession) -> None:
            if not session.undo():
                raise ChatError("nothing to undo (the page's undo steps start when the chat "
                                "is opened in this server)")
        return await _edit(chats, chat_id, action)

    @api.post("/webchat/api/chats/{chat_id}/stop", summary="Stop the running reply")
    async def stop(chat_id: int) -> dict[str, Any]:
        return {"stopped": chats.stop(chat_id)}

    @api.post("/webchat/api/chats/{chat_id}/generate",
              summary="Stream a reply as newline-delimited JSON events")
    async def generate(chat_id: int, body: Generate, request: Request) -> Any:
        if body.length is not None and body.length not in LENGTHS:
            raise ApiError(BAD_REQUEST, f"length {body.length!r} is not one of "
                           f"{', '.join(LENGTHS)}", field="length")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        threading.Thread(target=_generate, args=(chats, chat_id, body, loop, emit),
                         name="limamono-webchat", daemon=True).start()
        first = await events.get()
        if first["type"] == "error":
            return JSONResponse(error_body(request.url.path, first["message"]),
                                status_code=first["status"],
                                headers={"Retry-After": str(state.config.retry_after_s)}
                                if first["status"] == BUSY else None)
        ended = False

        async def lines() -> AsyncIterator[str]:
            nonlocal ended
            event = first
            while True:
                yield _line(event)
                if event["type"] in ("done", "error"):
                    ended = True
                    return
                event = await events.get()

        def on_close() -> None:
            if not ended:  # the page went away (or pressed stop): keep the partial reply
                chats.stop(chat_id)

        return NdjsonStream(lines(), on_close)

    return api


def _static(name: str, media_type: str) -> Callable[[], Any]:
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)
    return page


def _store_call(work: Callable[[], Any]) -> Any:
    """Run a store operation; its errors become the HTTP errors the page shows."""
    try:
        return work()
    except StaleChatError as error:
        raise ApiError(CONFLICT, f"{error}; the page shows the chat as saved",
                       kind="conflict") from None
    except StoreError as error:
        if "no chat with id" in str(error):
            raise ApiError(NOT_FOUND, str(error), kind="not_found") from None
        raise ApiError(500, str(error), kind="server_error") from None
    except (ChatError, fmt.FormatError) as error:
        raise ApiError(BAD_REQUEST, str(error)) from None


async def _edit(chats: WebChats, chat_id: int,
                action: Callable[[ChatSession], object]) -> dict[str, Any]:
    return await run_in_threadpool(_store_call, lambda: chats.run(chat_id, action))


def _create(chats: WebChats, data: bytes, name: str, user: str, source: str) -> dict[str, Any]:
    """Check a card exactly as ``limamono card`` does, start a chat with it, return it."""
    try:
        card = read_card_bytes(data, Path(name).name or "card")
        chat = chat_from_card(card, User(user), Path(name).stem or "card")
    except CardError as error:
        raise ApiError(BAD_REQUEST, str(error), field="card") from None
    with chats.store() as store:
        chat_id = store.create_chat(chat, source=source)
    return chats.run(chat_id)


__all__ = ["CSP", "PUBLIC_PATHS", "WebChatConfig", "router"]
