"""The HTTP server: KoboldAI/KoboldCpp, text-generation-webui and OpenAI-compatible APIs.

Build the app with :func:`create_app` around any ``limamono.engine.protocol.Engine``; the
``limamono serve`` command runs it with uvicorn, with the web chat page at ``/``
(``webchat``). See ``docs/SILLYTAVERN.md`` and ``docs/WEBCHAT.md``.
"""

from limamono.server.app import create_app
from limamono.server.config import ServerConfig
from limamono.server.webchat import WebChatConfig

__all__ = ["ServerConfig", "WebChatConfig", "create_app"]
