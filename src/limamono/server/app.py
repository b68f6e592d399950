"""The app factory: ``create_app(engine, config)`` builds the whole HTTP API around one engine.

Tests inject a scripted engine; ``limamono serve`` injects the real one. Layers, outside in:
CORS (only with allowed origins), Bearer auth (with an API key), the body-size limit, then
the Kobold and OpenAI routes and ``/health``. Every error, including validation errors and
unknown routes, is a JSON body naming the field at fault (``limamono.server.errors``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from limamono import __version__
from limamono.engine.protocol import Engine
from limamono.server import adapters, backends, kobold, openai, slots, webchat
from limamono.server.config import ServerConfig
from limamono.server.errors import (
    BAD_REQUEST,
    FORBIDDEN,
    TOO_LARGE,
    UNAUTHORIZED,
    UNPROCESSABLE,
    ApiError,
    error_body,
)
from limamono.server.queue import GenerationQueue
from limamono.server.state import ServerState
from limamono.server.webchat import WebChatConfig
from limamono.util.untrusted import quote

log = logging.getLogger("limamono.server")

#: Routes that need no API key: liveness and the version checks clients make first.
PUBLIC_PATHS = frozenset({"/health", *kobold.PUBLIC_PATHS})


def create_app(engine: Engine, config: ServerConfig | None = None,
               web: WebChatConfig | None = None) -> FastAPI:
    """The HTTP app serving ``engine``.

    Args:
        engine: Anything implementing ``limamono.engine.protocol.Engine``.
        config: Limits, queue size, auth and CORS; default ``ServerConfig()``.
        web: Where the web chat at ``/`` keeps its chats; None: no page (``/`` is a 404).

    Returns:
        A FastAPI app; its generation worker thread starts now (and at each startup)
        and stops at shutdown.
    """
    config = config or ServerConfig()
    state = ServerState(engine, config, GenerationQueue(engine, config.queue))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.queue.start()
        yield
        state.queue.close()

    app = FastAPI(title="limamono", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="KoboldAI/KoboldCpp, text-generation-webui and OpenAI-compatible "
                              "APIs for a Limamono-style roleplay model.")
    app.state.limamono = state
    app.include_router(kobold.router(state))
    app.include_router(openai.router(state))
    app.include_router(slots.router(state))
    app.include_router(backends.router(state))
    app.include_router(adapters.router(state))
    if web is not None:
        app.include_router(webchat.router(state, web))
    _add_health(app, state)
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key is not None:
        public = PUBLIC_PATHS | (webchat.PUBLIC_PATHS if web is not None else frozenset())
        app.add_middleware(BearerAuth, key=config.api_key, public=public,
                           admin_key=config.admin_key)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(HostOriginGuard, hosts=config.allowed_hosts,
                       origins=config.cors_origins)
    return app


def _add_health(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", tags=["health"], summary="Liveness: 503 when the generation worker died")
    async def health() -> JSONResponse:
        queue = state.queue
        body = {"status": "ok" if queue.alive else "unavailable", "model": state.model_name,
                "busy": queue.busy, "waiting": queue.waiting}
        return JSONResponse(body, status_code=200 if queue.alive else 503)


# --------------------------------------------------------------------------- errors

def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, error.message, error.field, error.kind),
                            status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        field, message = validation_message(error.errors())
        return JSONResponse(error_body(request.url.path, message, field),
                            status_code=UNPROCESSABLE)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, str(error.detail), kind="http_error"),
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        # Request boundary: an unexpected failure is still a JSON answer.
        return JSONResponse(error_body(request.url.path, f"internal error: {error}",
                                       kind="server_error"), status_code=500)


def validation_message(errors: Any) -> tuple[str | None, str]:
    """(field, message) for pydantic errors: the first field's dotted path and every problem.

    ``loc`` starts with ``body``; a body that is not a JSON object has no further path.
    """
    problems, first = [], None
    for item in errors:
        path = [str(p) for p in item.get("loc", ()) if p != "body"]
        if item.get("type") == "json_invalid":  # loc holds the character position
            path = []
        field = _dotted(path) or "body"
        first = first or field
        problems.append(f"{field}: {item.get('msg', 'invalid')}")
    return first, "; ".join(problems) or "invalid request body"


def _dotted(path: list[str]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


# --------------------------------------------------------------------------- middleware

async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 headers: dict[str, str] | None = None, kind: str = "invalid_request_error",
                 ) -> None:
    response = JSONResponse(error_body(scope["path"], message, kind=kind),
                            status_code=status, headers=headers)
    await response(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, reading the stream itself.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked or
    lying body is counted as it arrives and refused as soon as it passes the limit. The
    accepted body is replayed to the app, and later ``receive`` calls (the disconnect) go
    to the server.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the body size, then pass the request on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in scope.get("headers", [])}
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 §6.1: the two framings may disagree (request smuggling); refuse and
            # close, instead of waiting for a body that one of them says never comes.
            await _reply(scope, receive, send, BAD_REQUEST,
                         "the request has both Content-Length and Transfer-Encoding; send "
                         "one of them", headers={"Connection": "close"}, kind="bad_framing")
            return
        if _content_length(scope) > self.limit:
            await self._too_large(scope, receive, send)
            return
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(parts), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reply(scope, receive, send, TOO_LARGE,
                     f"request body over {self.limit} bytes; fix: send a shorter prompt "
                     "or raise the server's body limit", kind="request_too_large")


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


#: Distinct refused Host/Origin values logged, at most (each once).
LOGGED_REFUSALS = 32

#: Methods that change nothing; every other one is refused from a foreign ``Origin``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_allowed(host: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a request's ``Host`` (port ignored) names this server.

    A DNS-rebinding page reaches a loopback server through a public name of the
    attacker's (``evil.com`` resolving to 127.0.0.1), and such a name has a dot. So by
    default an IP address, ``localhost`` (and ``*.localhost``) and a name without a dot
    (this machine's own name, resolved locally) are accepted; any other name only when it
    is in ``allowed`` (``--allow-host``; ``*.example.org`` matches subdomains, ``*`` any).
    """
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    name = name.rstrip(".")
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or name == pattern or (
                pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    local = name == "localhost" or name.endswith(".localhost") or "." not in name
    return local and bool(name) and all(c.isalnum() or c in "-._" for c in name)


class HostOriginGuard:
    """Refuse DNS rebinding and cross-site requests, with or without an API key.

    A ``Host`` that :func:`host_allowed` refuses gets 400; a request that may change
    something (not GET/HEAD/OPTIONS) from a browser page of another origin gets 403: its
    ``Origin`` must be this server's own (same host and port as ``Host``) or one of
    ``origins`` (``--cors-origin``). Requests without ``Origin`` (SillyTavern's server,
    curl, scripts) pass, as do requests without ``Host`` (HTTP/1.0, no browser).
    """

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...], origins: tuple[str, ...]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.logged: set[str] = set()  # the refusals already logged (LOGGED_REFUSALS at most)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check ``Host`` and ``Origin``, then pass the request on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin")
        if host and not host_allowed(host, self.hosts):
            message = (f"Host {quote(host)} is not a name of this server (a DNS rebinding "
                       "page?); fix: call it by IP address or localhost, or start it with "
                       f"--allow-host {quote(host.rsplit(':', 1)[0])}")
            self._log_once(f"host {host}", message)
            await _reply(scope, receive, send, BAD_REQUEST, message, kind="invalid_host")
            return
        if origin is not None and scope["method"] not in SAFE_METHODS:
            text = origin.decode("latin-1")
            if not self._origin_allowed(text, host):
                message = (f"a {scope['method']} from the web page of origin {quote(text)} "
                           "is refused (a cross-site request?); fix: start the server with "
                           f"--cors-origin {quote(text)} to allow that page")
                self._log_once(f"origin {text}", message)
                await _reply(scope, receive, send, FORBIDDEN, message, kind="forbidden_origin")
                return
        await self.app(scope, receive, send)

    def _log_once(self, key: str, message: str) -> None:
        """Log a refusal the first time its Host or Origin is seen.

        SillyTavern's status checks drop the body of a failed answer (its Text Completion
        modes show only "No connection"), so the server's log is where the user of a
        SillyTavern in Docker (``http://host.docker.internal:5001``) finds the fix. Once
        per name, and for at most ``LOGGED_REFUSALS`` names, so that a page retrying
        (or many rebinding names) cannot flood the log.
        """
        if key in self.logged or len(self.logged) >= LOGGED_REFUSALS:
            return
        self.logged.add(key)
        log.warning("refused: %s", message)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        scheme, _, rest = origin.partition("://")
        return bool(host) and scheme in ("http", "https") and rest == host.lower()


class BearerAuth:
    """Require ``Authorization: Bearer <key>`` on every path but ``public`` (constant time).

    The adapter routes (``limamono.server.adapters``) also pass with the admin key instead
    (as text-generation-webui's admin routes need only it); they check it themselves.
    """

    def __init__(self, app: ASGIApp, key: str, public: frozenset[str],
                 admin_key: str | None = None) -> None:
        self.app = app
        self.key = key.encode()
        self.public = public
        self.admin_key = None if admin_key is None else admin_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authorised requests on; answer 401 to the others."""
        if scope["type"] != "http" or scope["path"] in self.public or self._authorised(scope) \
                or self._admin(scope):
            await self.app(scope, receive, send)
            return
        await _reply(scope, receive, send, UNAUTHORIZED,
                     "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                     headers={"WWW-Authenticate": "Bearer"}, kind="authentication_error")

    def _admin(self, scope: Scope) -> bool:
        """An adapter route called with the admin key (Bearer or ``X-Admin-Key``)."""
        if self.admin_key is None or scope["path"] not in adapters.ADMIN_PATHS:
            return False
        headers = dict(scope.get("headers", []))
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        given = headers.get(b"x-admin-key") or (token.strip() if scheme.lower() == b"bearer"
                                                 else b"")
        return hmac.compare_digest(given, self.admin_key)

    def _authorised(self, scope: Scope) -> bool:
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest's time does not depend on where the strings differ.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
