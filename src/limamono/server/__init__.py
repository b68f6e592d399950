"""The HTTP server: KoboldAI/KoboldCpp, text-generation-webui and OpenAI-compatible APIs.

Build the app with :func:`create_app` around any ``limamono.engine.protocol.Engine``; the
``limamono serve`` command runs it with uvicorn. See ``docs/SILLYTAVERN.md``.
"""

from limamono.server.app import create_app
from limamono.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
