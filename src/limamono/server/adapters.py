"""LoRA adapters from the client: list, load and unload at run time, and a request's choice.

Two clients' shapes, both behind the admin key (``--admin-key``; without it every route
here answers 403 "off"); the key comes as ``Authorization: Bearer KEY`` (both) or
``X-Admin-Key: KEY`` (TabbyAPI):

- text-generation-webui (``extensions/openai/script.py``, ``modules/LoRA.py``):
  ``GET /v1/internal/lora/list`` -> ``{"lora_names": [...]}`` (the adapters it can load);
  ``POST /v1/internal/lora/load`` ``{"lora_names": [...]}`` makes exactly those the applied
  set (scale 1) and answers ``"OK"``; ``POST /v1/internal/lora/unload`` unloads all.
- TabbyAPI (``endpoints/core/router.py``, ``endpoints/core/types/lora.py``):
  ``GET /v1/loras`` (the adapters it can load) and ``GET /v1/lora`` (the loaded ones), each
  ``{"object": "list", "data": [{"id", "object": "lora", "created", "owned_by",
  "scaling"}]}``; ``POST /v1/lora/load`` ``{"loras": [{"name", "scaling"}]}`` adds them
  (or sets the scale of one loaded already) and answers ``{"success": [...], "failure":
  [...]}``; ``POST /v1/lora/unload`` unloads all.

Adapters are named, never given as paths: the folders (PEFT, converted to GGUF LoRA once)
and ``.gguf`` files in ``--lora-dir``, plus the one ``--adapter`` applied at start.

A request chooses its own set with llama.cpp server's per-request field
``"lora": [{"id": 0, "scale": 0.5}, ...]`` (``tools/server/README.md``; ``id`` indexes
``GET /v1/lora``'s list, adapters not named get scale 0); without it, every loaded adapter
at its scale. While an adapter loads, new generation requests get 503 with ``Retry-After``.
Only the llama.cpp engine can do this; on torch (the adapter is merged into the weights at
load) the routes answer 501 naming the fix.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from limamono.server.errors import BAD_REQUEST, BUSY, FORBIDDEN, UNAUTHORIZED, ApiError
from limamono.server.params import MAX_SCALE
from limamono.server.schemas import Body
from limamono.server.state import ServerState
from limamono.util.untrusted import quote

log = logging.getLogger("limamono.server")

#: The routes of this module (the API-key check leaves them to the admin key).
ADMIN_PATHS = frozenset({"/v1/internal/lora/list", "/v1/internal/lora/load",
                         "/v1/internal/lora/unload", "/v1/loras", "/v1/lora",
                         "/v1/lora/load", "/v1/lora/unload"})


class LoadLorasRequest(Body):
    """text-generation-webui's ``/v1/internal/lora/load``."""

    lora_names: list[str]


class LoraLoadInfo(Body):
    """One adapter of TabbyAPI's ``/v1/lora/load``."""

    name: str
    scaling: float = 1.0


class LoraLoadRequest(Body):
    """TabbyAPI's ``/v1/lora/load``."""

    loras: list[LoraLoadInfo]


def _available(state: ServerState) -> dict[str, Path]:
    """Adapters that can be loaded by name: ``--lora-dir``'s PEFT folders and .gguf files."""
    folder = state.config.lora_dir
    found: dict[str, Path] = {}
    if folder is None or not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and (path / "adapter_config.json").is_file():
            found[path.name] = path
        elif path.is_file() and path.suffix == ".gguf":
            found.setdefault(path.stem, path)
    return found


def _check_admin(state: ServerState, request: Request) -> Any:
    """The llama.cpp engine, when the admin key is on, given, and right."""
    key = state.config.admin_key
    if key is None:
        raise ApiError(FORBIDDEN, "the adapter routes are off; start the server with "
                       "--admin-key KEY to load and unload LoRA adapters at run time",
                       kind="forbidden")
    given = request.headers.get("x-admin-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not given and scheme.lower() == "bearer":
        given = token.strip()
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(UNAUTHORIZED, "missing or wrong admin key; send 'Authorization: "
                       "Bearer <admin key>' or 'X-Admin-Key: <admin key>'",
                       kind="authentication_error")
    engine = state.engine
    if not hasattr(engine, "load_adapter"):
        raise ApiError(501, "run-time adapters need the llama.cpp backend (a GGUF model, "
                       "--backend llamacpp); the torch engine merges --adapter into the "
                       "weights at load", kind="not_supported_error")
    return engine


class _Loading:
    """Marks the server as loading adapters (generation requests get 503 meanwhile)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def __enter__(self) -> None:
        if self.state.adapter_loading:
            raise ApiError(BUSY, "another adapter load is running; try again when it ends",
                           kind="service_unavailable",
                           headers={"Retry-After": str(self.state.config.retry_after_s)})
        self.state.adapter_loading = True

    def __exit__(self, *_: object) -> None:
        self.state.adapter_loading = False


def _load(state: ServerState, engine: Any, name: str, scale: float) -> None:
    """Load adapter ``name`` from ``--lora-dir`` (converting a PEFT folder; in a thread)."""
    path = _available(state).get(name)
    if path is None:
        raise ApiError(BAD_REQUEST, f"adapter {quote(name)}: not in --lora-dir"
                       + ("" if state.config.lora_dir else " (the server has none; start it "
                          "with --lora-dir FOLDER)") + "; GET /v1/loras lists the names",
                       field="name")
    if path.is_dir():
        from limamono.models.gguf_lora import gguf_lora_for

        path = gguf_lora_for(path, engine.path)
    began = time.perf_counter()
    engine.load_adapter(name, path, scale)
    log.info("adapter %s loaded at scale %g in %.2f s", name, scale,
             time.perf_counter() - began)


def _unload_all(engine: Any) -> None:
    for adapter in engine.adapters():
        engine.unload_adapter(adapter.name)
    log.info("every adapter unloaded")


def _card(name: str, scaling: float | None) -> dict[str, Any]:
    return {"id": name, "object": "lora", "created": 0, "owned_by": "limamono",
            "scaling": scaling}


def router(state: ServerState) -> APIRouter:
    """The adapter routes, bound to ``state``."""
    api = APIRouter(tags=["adapters"])

    async def run(step: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(step, *args)
        except ApiError:
            raise
        except RuntimeError as error:  # an adapter in use by a running reply
            raise ApiError(409, str(error), kind="busy_error") from None
        except ValueError as error:
            raise ApiError(BAD_REQUEST, str(error), field="name") from None
        except Exception as error:  # ModelError: llama.cpp or the converter refused it
            raise ApiError(BAD_REQUEST, str(error), field="name") from None

    @api.get("/v1/internal/lora/list", summary="text-generation-webui: adapters to load")
    async def tgw_list(request: Request) -> dict[str, Any]:
        engine = _check_admin(state, request)
        names = list(_available(state))
        return {"lora_names": names + [a.name for a in engine.adapters() if a.name not in names]}

    @api.post("/v1/internal/lora/load", summary="text-generation-webui: apply these adapters")
    async def tgw_load(request: Request, body: LoadLorasRequest) -> JSONResponse:
        engine = _check_admin(state, request)
        with _Loading(state):
            loaded = {a.name for a in engine.adapters()}
            available = _available(state)
            unknown = [n for n in body.lora_names if n not in loaded and n not in available]
            if unknown:  # refused before anything is unloaded: all or nothing
                _load(state, engine, unknown[0], 1.0)
            for adapter in engine.adapters():
                if adapter.name not in body.lora_names:
                    await run(engine.unload_adapter, adapter.name)
            for name in body.lora_names:
                if name not in loaded:
                    await run(_load, state, engine, name, 1.0)
                else:
                    await run(engine.set_adapter_scale, name, 1.0)
        return JSONResponse("OK")

    @api.post("/v1/internal/lora/unload", summary="text-generation-webui: unload all adapters")
    async def tgw_unload(request: Request) -> JSONResponse:
        engine = _check_admin(state, request)
        with _Loading(state):
            await run(_unload_all, engine)
        return JSONResponse("OK")

    @api.get("/v1/loras", summary="TabbyAPI: adapters to load")
    async def tabby_available(request: Request) -> dict[str, Any]:
        _check_admin(state, request)
        return {"object": "list", "data": [_card(name, None) for name in _available(state)]}

    @api.get("/v1/lora", summary="TabbyAPI: the loaded adapters, in id order")
    async def tabby_loaded(request: Request) -> dict[str, Any]:
        engine = _check_admin(state, request)
        return {"object": "list", "data": [_card(a.name, a.scale) for a in engine.adapters()]}

    @api.post("/v1/lora/load", summary="TabbyAPI: load adapters with their scales")
    async def tabby_load(request: Request, body: LoraLoadRequest) -> dict[str, list[str]]:
        engine = _check_admin(state, request)
        success: list[str] = []
        failure: list[str] = []
        with _Loading(state):
            for item in body.loras:
                if not -MAX_SCALE <= item.scaling <= MAX_SCALE:
                    log.warning("adapter %s: scaling %g out of range", item.name, item.scaling)
                    failure.append(item.name)
                    continue
                try:
                    if any(a.name == item.name for a in engine.adapters()):
                        await run(engine.set_adapter_scale, item.name, item.scaling)
                    else:
                        await run(_load, state, engine, item.name, item.scaling)
                    success.append(item.name)
                except ApiError as error:
                    log.warning("adapter %s not loaded: %s", item.name, error.message)
                    failure.append(item.name)
        return {"success": success, "failure": failure}

    @api.post("/v1/lora/unload", summary="TabbyAPI: unload all adapters")
    async def tabby_unload(request: Request) -> dict[str, Any]:
        engine = _check_admin(state, request)
        with _Loading(state):
            await run(_unload_all, engine)
        return {}

    return api
