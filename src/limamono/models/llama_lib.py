"""The llama.cpp library (through llama-cpp-python), loaded once with its log captured.

The llama.cpp engine and the GGUF quantizer both call :func:`load`, so the library is
initialised in one place and its recent error lines (:data:`log_lines`) can be quoted in the
errors that name a file.
"""

from __future__ import annotations

import ctypes
import importlib.util
from typing import Any

from limamono.models.resolve import ModelError

__all__ = ["llamacpp_available", "load", "log_lines"]

#: llama.cpp's recent error lines, for load errors
log_lines: list[str] = []
_log_callback: Any = None  # kept referenced: llama.cpp calls it from C


def llamacpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def load() -> Any:
    """The ``llama_cpp`` module, initialised once with its log routed into ``log_lines``."""
    global _log_callback
    try:
        import llama_cpp
    except ImportError as exc:  # a missing or broken build
        raise ModelError(f"llama-cpp-python cannot be imported ({exc}); fix: run make setup "
                         "(it builds llama.cpp) or use --backend torch") from exc
    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def keep_errors(level: int, text: bytes, _data: Any) -> None:
            if level >= 4:  # GGML_LOG_LEVEL_ERROR
                log_lines.append(text.decode("utf-8", "replace").strip())
                del log_lines[:-5]

        _log_callback = keep_errors
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp
