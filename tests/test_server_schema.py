"""Schemathesis over ``/openapi.json`` on the fake engine: no 5xx, every 4xx a JSON body.

The fast run (default suite) sends a few examples per operation; the slow one sends at
least 50 per operation, as the reliability notes ask of every generation endpoint.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine

APP = create_app(FakeEngine(reply="A short reply.", context_length=512), ServerConfig())
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SETTINGS = {"deadline": None, "derandomize": True,
            "suppress_health_check": list(HealthCheck)}


#: 5xx answers that are the peer's own contract, not a server error: llama.cpp's server
#: answers 501 (its ERROR_TYPE_NOT_SUPPORTED) to a slot action when slot files are off or
#: the engine has no slots, and so does ours (server/slots.py).
DELIBERATE = {("/slots/{id_slot}", 501)}


def check_response(case: Any) -> None:
    response = case.call()
    if (case.path, response.status_code) in DELIBERATE:
        assert response.json()["error"]["message"], response.text
        return
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, (case.path, response.text)
    if 400 <= response.status_code < 500:
        body = response.json()  # every refusal is a JSON body...
        error = body.get("error") or body.get("detail")
        assert isinstance(error, dict), body  # ...in the route's error shape
        assert error.get("message") or error.get("msg"), body


@SCHEMA.parametrize()
@settings(max_examples=5, **SETTINGS)
def test_api_fuzz_fast(case: Any) -> None:
    check_response(case)


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(max_examples=60, **SETTINGS)
def test_api_fuzz_full(case: Any) -> None:
    check_response(case)
