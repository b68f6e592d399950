"""HTTP errors of the server and their JSON bodies, shaped as each emulated API shapes them.

Kobold routes (``/api/...``) answer like KoboldCpp, ``{"detail": {"msg", "type"}}``, which
is what SillyTavern's KoboldAI route shows (``detail.msg``); every other route answers like
OpenAI, ``{"error": {"message", "type", "param", "code"}}``. Both name the offending field
(``field`` / ``param``) when there is one.
"""

from __future__ import annotations

from typing import Any

#: Status codes the server uses for errors it raises itself.
BAD_REQUEST, UNAUTHORIZED, TOO_LARGE, UNPROCESSABLE, BUSY = 400, 401, 413, 422, 503


class ApiError(Exception):
    """An error answered as JSON.

    Args:
        status: The HTTP status.
        message: What is wrong and how to fix it.
        field: The request field at fault, if any (its wire name or dotted path).
        kind: A short machine-readable type (``invalid_request_error``, ``server_busy``...).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, field: str | None = None,
                 kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind
        self.headers = headers or {}


def is_kobold_path(path: str) -> bool:
    """Whether ``path`` belongs to the KoboldAI/KoboldCpp API (answered KoboldCpp-style)."""
    return path.startswith("/api/")


def error_body(path: str, message: str, field: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    """The JSON error body for a request to ``path``."""
    if is_kobold_path(path):
        return {"detail": {"msg": message, "type": kind, "field": field}}
    return {"error": {"message": message, "type": kind, "param": field, "code": None}}


def stream_error(message: str, kind: str = "server_error") -> dict[str, Any]:
    """The event that reports a failure after a stream has started (a real error)."""
    return {"error": {"message": message, "type": kind}}
