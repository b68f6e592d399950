"""Regression tests for the defects a real SillyTavern 1.12.6 showed (issue 21, D1-D6).

Each test replays a request body captured between SillyTavern and ``limamono serve``
(``shared/testdata/repros/sillytavern-2/``, README there) against the app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine


def repro(shared_dir: Path, name: str) -> Any:
    return json.loads((shared_dir / "testdata/repros/sillytavern-2" / name).read_text())


def serve(engine: FakeEngine, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ServerConfig(**config)))


# --------------------------------------------------------------------------- D1

def test_d1_kobold_stream_error_carries_error_message(shared_dir):
    """SillyTavern pipes a streaming Kobold error through unchanged and toasts only
    ``error.message`` (public/scripts/kai-settings.js 148-164); without streaming its server
    reads ``detail.msg`` (src/endpoints/backends/kobold.js 109-113). Both must be there."""
    body = repro(shared_dir, "D1_kobold_stream_error_minimal_body.json")
    # One character is one token in the fake: 530 prompt characters and a 8190-token reply
    # (clamped to 1024 - 16) cannot share a 1024-token context.
    with serve(FakeEngine(context_length=1024)) as client:
        for route in ("/api/extra/generate/stream", "/api/v1/generate"):
            response = client.post(route, json=body)
            assert response.status_code == 400, route
            error = response.json()
            assert error["error"]["type"] == "context_length_exceeded"
            assert error["error"]["message"].startswith("the prompt needs ")
            assert error["detail"]["msg"] == error["error"]["message"]
            assert error["detail"]["field"] == error["error"]["param"]


def test_d1_every_error_path_carries_error_message():
    """Validation (422), an unknown route (404), auth (401) and the body limit (413), on
    the Kobold routes and the OpenAI ones."""
    with serve(FakeEngine(), api_key="k", max_body_bytes=4096) as client:
        auth = {"Authorization": "Bearer k"}
        answers = [
            client.post("/api/extra/generate/stream", json={"prompt": 3}, headers=auth),
            client.post("/v1/completions", json={"prompt": "x", "temperature": "hot"},
                        headers=auth),
            client.get("/api/nothing-here", headers=auth),
            client.post("/api/v1/generate", json={"prompt": "x"}),
            client.post("/api/extra/generate/stream", content=b"{" + b" " * 5000 + b"}",
                        headers=auth),
        ]
    assert [a.status_code for a in answers] == [422, 422, 404, 401, 413]
    for answer in answers:
        assert answer.json()["error"]["message"], answer.text
