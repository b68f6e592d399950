"""Connections in front of the app: read deadlines, a connection cap, quiet logging.

uvicorn times out only idle keep-alive connections: a client that sends half a request
line, dribbles headers or never finishes its body keeps its socket forever, and enough of
them exhaust the process's file descriptors (issue 24, defect 2: ~20,000 such sockets
killed ``/health`` and logged a traceback per failed ``accept``). uvicorn has no option
for this, so :func:`protocol_class` extends its h11 protocol:

- the request line and headers must arrive within ``header_timeout_s`` of the connection
  (or of the first byte of the next request on a kept-alive one), and the body within
  ``body_timeout_s`` of the headers; otherwise the answer is 408 and the socket is closed;
- beyond ``max_connections`` open sockets, a new one is answered 503 and closed at once,
  so sockets never pile up to the descriptor limit;
- these events, and the event loop's "out of system resource" accept errors, are logged
  at most once per ``log_interval_s`` with a count, never once per socket.

A response being written (a long stream) is never timed out here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("limamono.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection limits of ``limamono serve`` (its ``--header-timeout`` and others).

    Attributes:
        header_timeout_s: Seconds a request line and its headers may take to arrive.
        body_timeout_s: Seconds a request body may take to arrive after its headers.
        keepalive_timeout_s: Seconds an idle kept-alive connection stays open.
        max_connections: Open connections at most; more are answered 503 and closed.
        log_interval_s: Such events are logged at most once per this many seconds.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 512
    log_interval_s: float = 10.0

    def __post_init__(self) -> None:
        """Check the values; raise ValueError naming the option."""
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s",
                     "log_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ValueError(f"{name}={value!r}: must be a positive number of seconds")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int) \
                or self.max_connections < 1:
            raise ValueError(f"max_connections={self.max_connections!r}: must be a whole "
                             "number >= 1")


def descriptor_room(wanted: int, spare: int = 64) -> int:
    """``wanted`` connections, or fewer when the process may not open that many files.

    The soft descriptor limit is raised to the hard one first; ``spare`` descriptors are
    kept for the model, the database and logs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - spare))


class EventTally:
    """Counts events and logs them at most once per ``interval`` seconds (per kind)."""

    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.logger = logger
        self.counts: dict[str, int] = {}  # every event so far, for tests and /perf
        self._pending: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def add(self, kind: str, message: str) -> None:
        """Count one event of ``kind``; log ``message`` (with the count) if it is time."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._pending[kind] = self._pending.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) >= self.interval:
            count = self._pending.pop(kind)
            self._last[kind] = now
            self.logger.warning("%s (%d time%s in the last %g s; logged at most once per "
                                "%g s)", message, count, "" if count == 1 else "s",
                                self.interval, self.interval)


def _raw_response(status: int, reason: str, message: str, kind: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": None}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def protocol_class(limits: ConnectionLimits, tally: EventTally | None = None,
                   ) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    events = tally or EventTally(limits.log_interval_s)

    class GuardedH11Protocol(H11Protocol):
        """H11Protocol with read deadlines and a connection cap (see the module doc)."""

        tally = events
        _deadline: asyncio.TimerHandle | None = None
        _deadline_for: str = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self.connections.discard(self)
                events.add("over_cap", f"refused connections over the cap of "
                           f"{limits.max_connections} with 503")
                transport.write(_raw_response(
                    503, "Service Unavailable", f"more than {limits.max_connections} open "
                    "connections; try again later", "server_busy"))
                transport.close()
                return
            self._arm("headers")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.IDLE:  # part of a request line or headers
                self._arm("headers")
            elif state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._disarm()  # an idle kept-alive connection is uvicorn's keep-alive timeout's
            super().on_response_complete()

        def _arm(self, stage: str) -> None:
            if self._deadline is not None and self._deadline_for == stage:
                return  # the deadline runs from the start of this stage
            self._disarm()
            seconds = limits.header_timeout_s if stage == "headers" else limits.body_timeout_s
            self._deadline_for = stage
            self._deadline = self.loop.call_later(seconds, self._expired, stage, seconds)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
                self._deadline_for = ""

        def _expired(self, stage: str, seconds: float) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or (
                    self.cycle is not None and self.cycle.response_started):
                return  # a response is on its way: never cut it here
            what = "request line and headers" if stage == "headers" else "request body"
            events.add(f"timeout_{stage}", f"closed connections whose {what} did not arrive "
                       f"within {seconds:g} s (408)")
            self.transport.write(_raw_response(
                408, "Request Timeout", f"the {what} did not arrive within {seconds:g} s",
                "request_timeout"))
            self.transport.close()

    return GuardedH11Protocol


#: errno values of an ``accept`` that failed for want of descriptors or memory.
_RESOURCE_ERRNOS = frozenset({23, 24, 105, 12})  # ENFILE, EMFILE, ENOBUFS, ENOMEM


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, tally: EventTally) -> None:
    """Log the loop's failed ``accept`` calls once per interval instead of a traceback each.

    asyncio reports each ``accept`` that fails with EMFILE/ENFILE through the loop's
    exception handler (a traceback a time, hundreds per second under a flood); every
    other error still goes to the default handler.
    """

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _RESOURCE_ERRNOS:
            tally.add("accept_failed", f"could not accept connections: {error.strerror} "
                      "(the process is out of file descriptors or memory)")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def uvicorn_config(app: Any, limits: ConnectionLimits, tally: EventTally | None = None,
                   **options: Any) -> Any:
    """A ``uvicorn.Config`` serving ``app`` behind ``limits`` (``options`` go to uvicorn).

    The connection cap is lowered to what the descriptor limit allows.
    """
    import dataclasses

    import uvicorn

    room = descriptor_room(limits.max_connections)
    if room < limits.max_connections:
        log.warning("at most %d connections: the process may open no more files "
                    "(raise `ulimit -n` for more)", room)
        limits = dataclasses.replace(limits, max_connections=room)
    return uvicorn.Config(app, http=protocol_class(limits, tally),
                          # uvicorn takes whole seconds here
                          timeout_keep_alive=max(1, round(limits.keepalive_timeout_s)),
                          **options)
