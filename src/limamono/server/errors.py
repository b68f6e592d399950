"""HTTP errors of the server and their JSON bodies, shaped as each emulated API shapes them.

Every route answers like OpenAI, ``{"error": {"message", "type", "param", "code"}}``; the
Kobold routes (``/api/...``) add KoboldCpp's ``{"detail": {"msg", "type", "field"}}`` with
the same text. Both keys are needed because SillyTavern 1.12.6 reads a Kobold error in two
places: without streaming its server maps ``detail.msg`` to its own ``error.message``
(``src/endpoints/backends/kobold.js`` lines 109-113), but with streaming it pipes the body
through unchanged and the page shows a toast only for ``error.message``
(``public/scripts/kai-settings.js`` lines 148-164, ``tryParseStreamingError``). The Text
Completion and Chat Completion pages read ``error.message`` too
(``public/scripts/textgen-settings.js`` 980-995, ``public/scripts/openai.js`` 1379-1403).
Both shapes name the offending field (``param`` / ``field``) when there is one.
"""

from __future__ import annotations

from typing import Any

#: Status codes the server uses for errors it raises itself.
BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, TOO_LARGE, UNPROCESSABLE, BUSY = (
    400, 401, 403, 413, 422, 503)


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
    """The JSON error body for a request to ``path`` (see the module docstring)."""
    body: dict[str, Any] = {
        "error": {"message": message, "type": kind, "param": field, "code": None}}
    if is_kobold_path(path):
        body["detail"] = {"msg": message, "type": kind, "field": field}
    return body


def stream_error(message: str, kind: str = "server_error") -> dict[str, Any]:
    """The event that reports a failure after a stream has started (a real error)."""
    return {"error": {"message": message, "type": kind}}
