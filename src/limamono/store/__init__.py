"""Chat persistence: the SQLite chat store and SillyTavern chat JSONL import and export.

``db`` holds the database (durability rules in its docstring), ``sillytavern`` the file
format. Import everything from here.
"""

from limamono.store.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ChatStore,
    ChatSummary,
    StoredChat,
    StoreError,
    default_db_path,
    message_digest,
)
from limamono.store.sillytavern import (
    ST_KEY,
    SillyTavernChat,
    export_sillytavern,
    import_sillytavern,
    parse_sillytavern,
    write_file_safely,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ST_KEY",
    "ChatStore",
    "ChatSummary",
    "SillyTavernChat",
    "StoreError",
    "StoredChat",
    "default_db_path",
    "export_sillytavern",
    "import_sillytavern",
    "message_digest",
    "parse_sillytavern",
    "write_file_safely",
]
