"""LoRA adapters from the client: text-generation-webui's and TabbyAPI's adapter routes.

The fast tests run on a scripted engine with the llama.cpp engine's adapter methods (its
``load_adapter`` can be held open to test a request during a load); the slow one runs the
embedded model's GGUF with the demo adapter over HTTP.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine

ROUTES = [("GET", "/v1/internal/lora/list", None),
          ("POST", "/v1/internal/lora/load", {"lora_names": ["a"]}),
          ("POST", "/v1/internal/lora/unload", None),
          ("GET", "/v1/loras", None), ("GET", "/v1/lora", None),
          ("POST", "/v1/lora/load", {"loras": [{"name": "a"}]}),
          ("POST", "/v1/lora/unload", None)]
KEY = "sesame"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@dataclass
class _Loaded:
    name: str
    scale: float


@dataclass
class AdapterEngine(FakeEngine):
    """The fake engine with the llama.cpp engine's adapter methods."""

    path: Path = Path("model.gguf")
    loaded: list[_Loaded] = field(default_factory=list)
    hold: threading.Event | None = None  # load_adapter waits for it when set
    loading: threading.Event = field(default_factory=threading.Event)
    choices: list[dict[str, float] | None] = field(default_factory=list)
    _choice: threading.local = field(default_factory=threading.local)

    def load_adapter(self, name: str, path: Any, scale: float = 1.0) -> _Loaded:
        self.loading.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        adapter = _Loaded(name, scale)
        self.loaded.append(adapter)
        return adapter

    def unload_adapter(self, name: str) -> None:
        self.loaded = [a for a in self.loaded if a.name != name]

    def set_adapter_scale(self, name: str, scale: float) -> None:
        next(a for a in self.loaded if a.name == name).scale = scale

    def adapters(self) -> list[_Loaded]:
        return list(self.loaded)

    def using_adapters(self, choice: dict[str, float] | None) -> Any:
        engine = self

        class _Using:
            def __enter__(self) -> None:
                engine._choice.value = choice

            def __exit__(self, *_: object) -> None:
                engine._choice.value = None

        return _Using()

    def stream_text(self, *args: Any, **kwargs: Any) -> Any:
        self.choices.append(getattr(self._choice, "value", None))
        return super().stream_text(*args, **kwargs)


def _lora_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.gguf").write_bytes(b"GGUF")
    (folder / ".hidden.gguf").write_bytes(b"GGUF")
    (folder / "notes.txt").write_text("not an adapter")
    return folder


def _call(client: TestClient, method: str, path: str, body: Any,
          headers: dict[str, str] | None = None) -> Any:
    return client.request(method, path, json=body, headers=headers or {})


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_the_routes_are_off_without_an_admin_key(method, path, body):
    # an API key alone does not open them (and is not asked for: they are off either way)
    engine = AdapterEngine()
    with TestClient(create_app(engine, ServerConfig(api_key="k"))) as client:
        response = _call(client, method, path, body, {"Authorization": "Bearer k"})
        assert response.status_code == 403
        assert "adapter routes are off; start the server with --admin-key KEY" in \
            response.json()["error"]["message"]
    assert engine.loaded == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_the_routes_refuse_a_missing_or_wrong_admin_key(method, path, body, tmp_path):
    config = ServerConfig(admin_key=KEY, lora_dir=_lora_dir(tmp_path))
    with TestClient(create_app(AdapterEngine(), config)) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-Admin-Key": "nope"}):
            response = _call(client, method, path, body, headers)
            assert response.status_code == 401, headers
            assert "missing or wrong admin key" in response.json()["error"]["message"]
        assert _call(client, method, path, body, ADMIN).status_code == 200
        assert _call(client, method, path, body, {"X-Admin-Key": KEY}).status_code == 200


def test_a_foreign_web_page_cannot_load_an_adapter(tmp_path):
    config = ServerConfig(admin_key=KEY, lora_dir=_lora_dir(tmp_path))
    engine = AdapterEngine()
    with TestClient(create_app(engine, config)) as client:
        response = client.post("/v1/lora/load", json={"loras": [{"name": "a"}]},
                               headers={**ADMIN, "Origin": "http://evil.example"})
        assert response.status_code == 403
        assert engine.loaded == []


def test_torch_answers_that_run_time_adapters_need_llamacpp():
    with TestClient(create_app(FakeEngine(), ServerConfig(admin_key=KEY))) as client:
        response = client.post("/v1/lora/load", json={"loras": [{"name": "a"}]}, headers=ADMIN)
        assert response.status_code == 501
        assert "need the llama.cpp backend" in response.json()["error"]["message"]
        response = client.post("/v1/completions", json={"prompt": "Hi", "lora": []})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "lora"


def test_tabby_and_textgen_shapes_list_load_and_unload(tmp_path):
    engine = AdapterEngine()
    config = ServerConfig(admin_key=KEY, lora_dir=_lora_dir(tmp_path))
    with TestClient(create_app(engine, config)) as client:
        assert client.get("/v1/internal/lora/list", headers=ADMIN).json() == \
            {"lora_names": ["a", "b"]}
        assert [c["id"] for c in client.get("/v1/loras", headers=ADMIN).json()["data"]] == \
            ["a", "b"]
        response = client.post("/v1/lora/load", headers=ADMIN, json={
            "loras": [{"name": "a", "scaling": 0.5}, {"name": "../a"}, {"name": "zz"},
                      {"name": "b", "scaling": 99}]})
        assert response.json() == {"success": ["a"], "failure": ["../a", "zz", "b"]}
        listed = client.get("/v1/lora", headers=ADMIN).json()
        assert listed["object"] == "list"
        assert [(c["id"], c["object"], c["scaling"]) for c in listed["data"]] == \
            [("a", "lora", 0.5)]
        response = client.post("/v1/lora/load", headers=ADMIN,
                               json={"loras": [{"name": "a", "scaling": 0.75}]})
        assert response.json() == {"success": ["a"], "failure": []}
        assert [(a.name, a.scale) for a in engine.loaded] == [("a", 0.75)]
        # text-generation-webui's load makes exactly its list the applied set, at scale 1
        assert client.post("/v1/internal/lora/load", headers=ADMIN,
                           json={"lora_names": ["b"]}).json() == "OK"
        assert [(a.name, a.scale) for a in engine.loaded] == [("b", 1.0)]
        response = client.post("/v1/internal/lora/load", headers=ADMIN,
                               json={"lora_names": ["a", "nope"]})
        assert response.status_code == 400
        assert "adapter 'nope': not in --lora-dir" in response.json()["error"]["message"]
        assert [a.name for a in engine.loaded] == ["b"]  # nothing unloaded by the refusal
        assert client.post("/v1/internal/lora/unload", headers=ADMIN).json() == "OK"
        assert engine.loaded == []


def test_a_request_during_a_load_gets_503_and_one_after_it_runs(tmp_path):
    engine = AdapterEngine(hold=threading.Event())
    config = ServerConfig(admin_key=KEY, lora_dir=_lora_dir(tmp_path), retry_after_s=3)
    with TestClient(create_app(engine, config)) as client:
        answers: list[Any] = []
        loader = threading.Thread(target=lambda: answers.append(client.post(
            "/v1/internal/lora/load", headers=ADMIN, json={"lora_names": ["a"]})))
        loader.start()
        assert engine.loading.wait(10)
        response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "3"
        assert "an adapter is loading" in response.json()["error"]["message"]
        second = client.post("/v1/lora/load", headers=ADMIN, json={"loras": [{"name": "b"}]})
        assert second.status_code == 503  # one load at a time
        engine.hold.set()
        loader.join(10)
        assert answers[0].json() == "OK"
        response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5})
        assert response.status_code == 200
        assert engine.choices == [None]  # no lora field: every loaded adapter


def test_a_request_chooses_its_adapters_with_llamacpps_lora_field(tmp_path):
    engine = AdapterEngine(loaded=[_Loaded("a", 1.0), _Loaded("b", 0.5)])
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = client.post("/v1/completions", json={
            "prompt": "Hi", "max_tokens": 5, "lora": [{"id": 1, "scale": 0.25}]})
        assert response.status_code == 200
        assert engine.choices == [{"a": 0.0, "b": 0.25}]
        for lora, param in (([{"id": 2}], "lora[0].id"), ([{"id": True}], "lora[0].id"),
                            ([{"id": 0, "scale": 11}], "lora[0].scale"),
                            ([{"name": "a"}], "lora[0]"), ({"id": 0}, "lora")):
            response = client.post("/v1/completions", json={"prompt": "Hi", "lora": lora})
            assert response.status_code == 400, lora
            assert response.json()["error"]["param"] == param
        response = client.post("/api/v1/generate", json={
            "prompt": "Hi", "max_length": 5, "lora": [{"id": 0, "scale": 1}]})
        assert response.status_code == 200
        assert engine.choices[-1] == {"a": 1.0, "b": 0.0}


def test_a_chat_completion_chooses_its_adapters_too(tmp_path):
    engine = AdapterEngine(loaded=[_Loaded("a", 1.0), _Loaded("b", 0.5)])
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "system", "content": "Mira\nScenario: Night."},
                         {"role": "user", "content": "Hello."}],
            "max_tokens": 5, "lora": [{"id": 0, "scale": 0.75}]})
        assert response.status_code == 200, response.text
        assert engine.choices == [{"a": 0.75, "b": 0.0}]
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "system", "content": "Mira\nScenario: Night."},
                         {"role": "user", "content": "Hello."}], "lora": [{"id": 5}]})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "lora[0].id"


def test_an_adapter_unloaded_while_its_request_waits_is_a_409_naming_it(tmp_path,
                                                                      monkeypatch):
    """Regression: a request that chose adapter "a" and waited in the queue while "a" was
    unloaded got a 500 with the bare KeyError text "'a'"."""
    from limamono.server import state as state_module

    engine = LlamaUnloadEngine(loaded=[_Loaded("a", 1.0), _Loaded("b", 0.5)])
    checked = state_module.request_adapters

    def then_unload(value: Any, chosen: Any) -> Any:
        choice = checked(value, chosen)
        engine.unload_adapter("a")  # as /v1/lora/unload would while the request waits
        return choice

    monkeypatch.setattr(state_module, "request_adapters", then_unload)
    with TestClient(create_app(engine, ServerConfig())) as client:
        body = {"prompt": "Hi", "max_tokens": 5, "lora": [{"id": 0, "scale": 1}]}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 409
        assert response.json()["error"]["param"] == "lora"
        assert response.json()["error"]["message"].startswith(
            "adapter 'a' was unloaded after this request chose it")
        engine.loaded.insert(0, _Loaded("a", 1.0))
        kobold = client.post("/api/v1/generate", json={**body, "max_length": 5})
        assert kobold.status_code == 409
        assert "adapter 'a' was unloaded" in kobold.json()["error"]["message"]
        engine.loaded.insert(0, _Loaded("a", 1.0))
        streamed = client.post("/v1/completions", json={**body, "stream": True})
        assert "adapter 'a' was unloaded after this request chose it" in streamed.text
        # choosing only "b" (so "a" at scale 0) survives "a" going away
        engine.loaded.insert(0, _Loaded("a", 1.0))
        response = client.post("/v1/completions", json={
            "prompt": "Hi", "max_tokens": 5, "lora": [{"id": 1, "scale": 0.25}]})
        assert response.status_code == 200, response.text
        assert engine.choices[-1] == {"b": 0.25}


@dataclass
class LlamaUnloadEngine(AdapterEngine):
    """The fake with the llama.cpp engine's rule for a chosen adapter that is gone."""

    def using_adapters(self, choice: dict[str, float] | None) -> Any:
        from limamono.engine.protocol import AdapterUnloadedError

        names = {a.name for a in self.loaded}
        for name, scale in (choice or {}).items():
            if scale != 0 and name not in names:
                raise AdapterUnloadedError(name)
        kept = None if choice is None else {n: s for n, s in choice.items() if s != 0}
        return super().using_adapters(kept)


@pytest.mark.slow
def test_load_changes_the_greedy_reply_and_unload_restores_it(tmp_path, monkeypatch):
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "loras"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo",
                    folder / "demo")
    engine = LlamaCppEngine(embedded_gguf(), context_length=256, threads=1)
    body = {"prompt": "### Instruction:\nMira keeps the lighthouse.\n\n### Input:\nTomas: "
                      "What do you see tonight?\n\n### Response:\nMira:",
            "max_tokens": 12, "temperature": 0, "top_k": 1}
    try:
        with TestClient(create_app(engine, ServerConfig(admin_key=KEY,
                                                        lora_dir=folder))) as client:
            def reply(**extra: Any) -> str:
                response = client.post("/v1/completions", json={**body, **extra})
                assert response.status_code == 200, response.text
                return str(response.json()["choices"][0]["text"])

            base = reply()
            assert client.post("/v1/lora/load", headers=ADMIN, json={
                "loras": [{"name": "demo", "scaling": 1.0}]}).json() == \
                {"success": ["demo"], "failure": []}
            adapted = reply()
            assert adapted != base
            assert reply(lora=[{"id": 0, "scale": 0}]) == base
            assert client.post("/v1/internal/lora/unload", headers=ADMIN).json() == "OK"
            assert reply() == base
    finally:
        engine.close()


def test_with_an_api_key_the_admin_key_alone_opens_the_adapter_routes_only(tmp_path):
    config = ServerConfig(api_key="k", admin_key=KEY, lora_dir=_lora_dir(tmp_path))
    with TestClient(create_app(AdapterEngine(), config)) as client:
        assert client.get("/v1/lora", headers=ADMIN).status_code == 200
        assert client.get("/v1/lora", headers={"Authorization": "Bearer k",
                                               "X-Admin-Key": KEY}).status_code == 200
        response = client.get("/v1/lora", headers={"Authorization": "Bearer k"})
        assert response.status_code == 401  # the API key is not the admin key
        assert "admin key" in response.json()["error"]["message"]
        assert client.get("/v1/lora").status_code == 401
        assert client.post("/v1/completions", json={"prompt": "Hi"},
                           headers=ADMIN).status_code == 401
