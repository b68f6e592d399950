"""llama.cpp server's slot actions: ``POST /slots/{id}?action=save|restore|erase``.

SillyTavern's server forwards them for extensions, to keep a chat's KV cache in a file (its
1.12.6 page does not call them). The shapes follow llama.cpp's ``tools/server`` (README,
"POST /slots/{id_slot}?action=..."): the body names a file (``{"filename": "chat.bin"}``,
a plain name, kept in ``--slot-save-path``); the answers carry ``id_slot``, ``filename``,
``n_saved``/``n_restored``/``n_erased``, ``n_written``/``n_read`` and ``timings``. An
engine without slots (torch) answers 501, as
llama.cpp does when the action is not available.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from limamono.server.errors import BAD_REQUEST, ApiError
from limamono.server.schemas import SlotActionRequest
from limamono.server.state import ServerState
from limamono.util.untrusted import quote

#: A file name a client may give: no folders, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def _file(state: ServerState, filename: str | None) -> Path:
    folder = state.config.slot_save_path
    if folder is None:
        raise ApiError(501, "slot files are off; start the server with --slot-save-path",
                       kind="not_supported_error")
    if filename is None or not _NAME.fullmatch(filename):
        raise ApiError(BAD_REQUEST, f"filename={quote(filename)}: give a plain file name "
                       "(letters, digits, '_', '-', '.'; no folders)", field="filename")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / filename


def router(state: ServerState) -> APIRouter:
    """The slot-action route, bound to ``state``."""
    api = APIRouter(tags=["llama.cpp"])

    @api.post("/slots/{id_slot}", summary="Save, restore or erase a slot's KV cache")
    async def slot_action(id_slot: int, action: str,
                          body: SlotActionRequest | None = None) -> dict[str, Any]:
        engine: Any = state.engine  # the llama.cpp engine has the slot methods
        if not hasattr(engine, "save_slot"):
            raise ApiError(501, "this engine has no slots (use a GGUF model: the llama.cpp "
                           "engine)", kind="not_supported_error")
        filename = body.filename if body is not None else None
        began = time.perf_counter()
        try:
            if action == "save":
                path = _file(state, filename)
                saved = await run_in_threadpool(engine.save_slot, id_slot, path)
                return {"id_slot": id_slot, "filename": path.name, "n_saved": saved,
                        "n_written": path.stat().st_size,
                        "timings": {"save_ms": round(1000 * (time.perf_counter() - began), 3)}}
            if action == "restore":
                path = _file(state, filename)
                if not path.is_file():
                    raise ApiError(404, f"{path.name}: no such slot file", field="filename",
                                   kind="not_found_error")
                restored = await run_in_threadpool(engine.restore_slot, id_slot, path)
                return {"id_slot": id_slot, "filename": path.name, "n_restored": restored,
                        "n_read": path.stat().st_size,
                        "timings": {"restore_ms": round(
                            1000 * (time.perf_counter() - began), 3)}}
            if action == "erase":
                erased = await run_in_threadpool(engine.erase_slot, id_slot)
                return {"id_slot": id_slot, "n_erased": erased}
        except ValueError as error:
            raise ApiError(BAD_REQUEST, str(error), field="id_slot") from None
        except RuntimeError as error:
            raise ApiError(409, str(error), kind="busy_error") from None
        raise ApiError(BAD_REQUEST, f"action={quote(action)}: must be save, restore or erase",
                       field="action")

    return api
