"""Chat persistence: the SQLite chat store and SillyTavern chat JSONL import and export.

A chat is a ``limamono.core.conversation.Conversation``; ``db`` converts it to and from SQLite
rows (durability and concurrency rules in its docstring), ``sillytavern`` to and from
SillyTavern chat JSONL. Import everything from here.
"""

from limamono.store.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ChatStore,
    ChatSummary,
    Saved,
    StaleChatError,
    StoreError,
    default_db_path,
    message_digest,
)
from limamono.store.sillytavern import (
    MAX_IMPORT_BYTES,
    ST_KEY,
    export_sillytavern,
    import_sillytavern,
    parse_sillytavern,
    write_file_safely,
)

__all__ = [
    "MAX_IMPORT_BYTES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ST_KEY",
    "ChatStore",
    "ChatSummary",
    "Saved",
    "StaleChatError",
    "StoreError",
    "default_db_path",
    "export_sillytavern",
    "import_sillytavern",
    "message_digest",
    "parse_sillytavern",
    "write_file_safely",
]
