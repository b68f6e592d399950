"""Bad input, body limits, auth and CORS: refused with a JSON error naming the field.

Every refusal must happen before any generation, so each case also checks that the engine
was never called.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from limamono.server import ServerConfig, create_app
from limamono.server.app import PUBLIC_PATHS
from limamono.server.params import MAX_TOKENS_CAP
from test_server_fakes import FakeEngine


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def make_client(engine: FakeEngine, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ServerConfig(**config)))


@pytest.fixture
def client(engine: FakeEngine) -> Any:
    with make_client(engine) as test_client:
        yield test_client


def openai_field(response: Any) -> str:
    return response.json()["error"]["param"]


def kobold_field(response: Any) -> str:
    return response.json()["detail"]["field"]


# Raw JSON text, so that NaN/Infinity and non-objects reach the server as a client sends them.
OPENAI_CASES = [
    ('{"prompt": "x", "temperature": NaN}', 422, "temperature"),
    ('{"prompt": "x", "temperature": Infinity}', 422, "temperature"),
    ('{"prompt": "x", "tfs_z": -Infinity}', 422, "tfs_z"),
    ('{"prompt": "x", "temperature": -1}', 400, "temperature"),
    ('{"prompt": "x", "top_p": 1.5}', 400, "top_p"),
    ('{"prompt": "x", "top_k": -5}', 400, "top_k"),
    ('{"prompt": "x", "min_p": 2}', 400, "min_p"),
    ('{"prompt": "x", "repetition_penalty": 0}', 400, "repetition_penalty"),
    ('{"prompt": "x", "presence_penalty": 3}', 400, "presence_penalty"),
    ('{"prompt": "x", "seed": 1e400}', 422, "seed"),
    ('{"prompt": "x", "seed": 99999999999999999999999}', 400, "seed"),
    ('{"prompt": "x", "sampler_order": [9]}', 400, "sampler_order"),
    ('{"prompt": "x", "sampler_priority": ["warp"]}', 400, "sampler_priority"),
    ('{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ('{"prompt": "x", "max_tokens": -186}', 400, "max_tokens"),
    (f'{{"prompt": "x", "max_tokens": {MAX_TOKENS_CAP + 1}}}', 400, "max_tokens"),
    ('{"prompt": "x", "max_tokens": 2040}', 400, "max_tokens"),  # no room left in 2048
    ('{"prompt": "x", "max_new_tokens": 1.5}', 422, "max_new_tokens"),
    ('{"prompt": "x", "n": 1000000000}', 400, "n"),
    ('{"prompt": "x", "truncation_length": 0}', 400, "truncation_length"),
    ('{"prompt": "x", "temperature": "0.7"}', 422, "temperature"),
    ('{"prompt": "x", "stream": "yes"}', 422, "stream"),
    ('{"prompt": "x", "stop": 5}', 422, "stop"),
    ('{"prompt": 5}', 422, "prompt"),
    ('{"prompt": ""}', 400, "prompt"),
    ('{"prompt": ["a", "b"]}', 400, "prompt"),
    ('{"temperature": 1}', 422, "prompt"),
    ('[1, 2]', 422, "body"),
    ('"just text"', 422, "body"),
    ('null', 422, "body"),
    ('{"prompt": "x",', 422, "body"),
]


@pytest.mark.parametrize(("raw", "status", "field"), OPENAI_CASES)
def test_completions_refuse_bad_input_naming_the_field(
        client: TestClient, engine: FakeEngine, raw: str, status: int, field: str) -> None:
    response = client.post("/v1/completions", content=raw,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert openai_field(response).split(".")[0].split("[")[0] == field
    assert engine.calls == []


def test_too_many_and_too_long_stop_strings(client: TestClient, engine: FakeEngine) -> None:
    many = client.post("/v1/completions", json={"prompt": "x", "stop": ["a"] * 1000})
    assert (many.status_code, openai_field(many)) == (400, "stop")
    long = client.post("/v1/completions", json={"prompt": "x", "stopping_strings": ["a" * 600]})
    assert (long.status_code, openai_field(long)) == (400, "stopping_strings[0]")
    assert engine.calls == []


KOBOLD_CASES = [
    ({"prompt": "x", "rep_pen": 0}, 400, "rep_pen"),
    ({"prompt": "x", "tfs": -0.1}, 400, "tfs"),
    ({"prompt": "x", "max_length": 0}, 400, "max_length"),
    ({"prompt": "x", "sampler_order": [6, 6]}, 400, "sampler_order"),
    ({"prompt": "x", "stop_sequence": "###"}, 422, "stop_sequence"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x", "max_context_length": -1}, 400, "max_context_length"),
]


@pytest.mark.parametrize(("body", "status", "field"), KOBOLD_CASES)
def test_kobold_refuses_bad_input_naming_the_field(
        client: TestClient, engine: FakeEngine, body: dict[str, Any], status: int,
        field: str) -> None:
    for path in ("/api/v1/generate", "/api/extra/generate/stream"):
        response = client.post(path, json=body)
        assert response.status_code == status, response.text
        assert kobold_field(response) == field  # SillyTavern shows detail.msg
        assert response.json()["detail"]["msg"]
    assert engine.calls == []


def test_kobold_clamps_an_over_long_reply_like_koboldcpp(client: TestClient,
                                                         engine: FakeEngine) -> None:
    response = client.post("/api/v1/generate", json={"prompt": "x", "max_length": 100000})
    assert response.status_code == 200
    assert engine.calls[0].max_new_tokens == 2048 - 16


def test_client_context_smaller_than_the_model_cuts_the_prompt_from_the_left(
        client: TestClient, engine: FakeEngine) -> None:
    body = {"prompt": "0123456789" * 10, "max_tokens": 10, "truncation_length": 40}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert engine.calls[0].prompt == ("0123456789" * 3)  # the last 40 - 10 tokens
    assert engine.calls[0].truncation == "left"


def test_unknown_fields_are_ignored(client: TestClient, engine: FakeEngine) -> None:
    body = {"prompt": "x", "api_server": "http://127.0.0.1:5001", "legacy_api": False,
            "weird": {"nested": [1, "two"]}, "grammar": "", "logit_bias": {}}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert len(engine.calls) == 1


# --------------------------------------------------------------------------- body size

def test_body_over_the_limit_gets_413(engine: FakeEngine) -> None:
    with make_client(engine, max_body_bytes=2048) as client:
        big = json.dumps({"prompt": "x" * 4096})
        declared = client.post("/v1/completions", content=big,
                               headers={"Content-Type": "application/json"})
        assert declared.status_code == 413 and declared.json()["error"]["message"]

        def chunks() -> Any:  # no Content-Length: the middleware must count the stream
            for i in range(0, len(big), 512):
                yield big[i:i + 512].encode()

        streamed = client.post("/api/v1/generate", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["detail"]["msg"]
        small = client.post("/v1/completions", json={"prompt": "x" * 100})
        assert small.status_code == 200
    assert len(engine.calls) == 1


# --------------------------------------------------------------------------- auth and CORS

def all_routes(routes: list[Any]) -> list[Any]:
    """Routes, with included routers expanded (FastAPI keeps them as one entry each)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out += all_routes(inner.routes) if inner is not None else [route]
    return out


def route_methods(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, read from its router (not from a list)."""
    pairs = []
    for route in all_routes(app.routes):
        if isinstance(route, APIRoute | Route):
            pairs += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return pairs


def test_every_route_but_health_and_version_needs_the_key(engine: FakeEngine) -> None:
    app = create_app(engine, ServerConfig(api_key="s3cret"))
    pairs = route_methods(app)
    assert len(pairs) >= 20
    with TestClient(app) as client:
        for method, path in pairs:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = client.request(method, path, headers=headers)
                if path in PUBLIC_PATHS:
                    assert response.status_code == 200, (method, path)
                else:
                    assert response.status_code == 401, (method, path, headers)
                    assert response.headers["www-authenticate"] == "Bearer"
                    assert response.json()
        ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        generated = client.post("/v1/completions", json={"prompt": "x"},
                                headers={"Authorization": "bearer s3cret"})
        assert generated.status_code == 200
    assert {"/health", "/api/v1/info/version", "/api/extra/version"} == PUBLIC_PATHS
    assert len(engine.calls) == 1


def test_no_cors_headers_unless_an_origin_is_allowed(engine: FakeEngine) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    with make_client(engine) as client:
        assert "access-control-allow-origin" not in client.options(
            "/v1/completions", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get(
            "/v1/models", headers={"Origin": "http://evil.example"}).headers
    with make_client(engine, cors_origins=("http://localhost:8000",)) as client:
        assert "access-control-allow-origin" not in client.options(
            "/v1/completions", headers=preflight).headers
        allowed = client.options("/v1/completions", headers={
            **preflight, "Origin": "http://localhost:8000"})
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:8000"


def test_default_bind_is_loopback() -> None:
    from typer.testing import CliRunner

    from limamono.cli import app
    from limamono.cli.serve_cmd import is_loopback

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[default: 127.0.0.1]" in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")


def test_serve_refuses_a_bad_option_before_loading_a_model() -> None:
    from typer.testing import CliRunner

    from limamono.cli import app

    result = CliRunner().invoke(app, ["serve", "--queue", "-1"])
    assert result.exit_code == 2
    assert "queue=-1" in result.output


def test_errors_and_unknown_routes_are_json(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong_method = client.get("/v1/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()


def test_default_reply_length_fits_a_small_client_context(client: TestClient,
                                                          engine: FakeEngine) -> None:
    # No max_tokens sent: the server's default (256) shrinks to fit, it is not refused.
    body = {"prompt": "x", "truncation_length": 100}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert engine.calls[0].max_new_tokens == 100 - 16


def test_serve_command_builds_the_app_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import limamono.engine
    from limamono.cli import app, serve_cmd

    ran: dict[str, Any] = {}
    monkeypatch.setattr(limamono.engine, "load_engine", lambda *a, **k: FakeEngine())
    monkeypatch.setattr(serve_cmd, "serve_app", lambda app, host, port, log_level, on_ready:
                        ran.update(app=app, host=host, port=port))
    result = CliRunner().invoke(app, ["serve", "--api-key", "k", "--port", "5999",
                                      "--queue", "3", "--cors-origin", "http://a.example"])
    assert result.exit_code == 0, result.output
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 5999)
    state = ran["app"].state.limamono
    assert (state.config.queue, state.config.cors_origins) == (3, ("http://a.example",))
    with TestClient(ran["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()[
            "data"][0]["id"] == "fake-limamono"


@pytest.mark.parametrize("option", [["--context", "0"], ["--max-body-mb", "nan"],
                                    ["--max-body-mb", "inf"], ["--max-body-mb", "0"]])
def test_serve_validates_context_and_body_limit_naming_the_option(option: list[str]) -> None:
    from typer.testing import CliRunner

    from limamono.cli import app

    result = CliRunner().invoke(app, ["serve", *option])
    assert result.exit_code == 2
    what = "tokens" if option[0] == "--context" else "megabytes"
    assert result.output == (f"error: {option[0]} must be a positive number of {what}, got "
                             f"{option[1] if option[0] == '--context' else float(option[1])}\n")


def test_unsupported_openai_fields_are_logged_not_silently_dropped(
        client: TestClient, engine: FakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", "limamono.server")
    body = {"prompt": "x", "logit_bias": {"42": -100}, "logprobs": 5, "echo": True}
    assert client.post("/v1/completions", json=body).status_code == 200
    chat = {"messages": [{"role": "system", "content": "Mira"},
                         {"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 2}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    off = {"prompt": "x", "logit_bias": {}, "logprobs": None, "echo": False}
    assert client.post("/v1/completions", json=off).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "does not implement" in r.getMessage()]
    # logit_bias and logprobs are implemented (issue 12); echo is not
    assert warnings == ["ignoring fields this server does not implement: echo"]


def test_an_error_quotes_a_huge_value_briefly(client: TestClient, engine: FakeEngine) -> None:
    body = {"messages": [{"role": "system", "content": "Mira"},
                         {"role": "user", "content": "Hi"}], "policy": "p" * 100_000}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and len(response.text) < 300
    assert response.json()["error"]["message"] == (
        f"policy={'p' * 60!r}... (100000 characters): must be one of training, sillytavern")
    assert engine.calls == []
