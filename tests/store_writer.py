"""Helper process for the kill test: writes chat messages forever, acknowledging each one.

Usage: ``python tests/store_writer.py DB SEED``. After every committed change it prints one
line and flushes, so the parent knows exactly which changes were acknowledged:

- ``A <position> <text>``: a message (two swipes) was appended at ``position``;
- ``S <position> <swipes>``: the last message was rewritten with ``swipes`` swipes (through
  ``sync_messages``, which deletes and re-inserts its rows).

The parent kills this process with SIGKILL at a random moment and checks the database.
"""

from __future__ import annotations

import random
import sys

from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.store import ChatStore


def main(db: str, seed: int) -> None:
    rng = random.Random(seed)
    store = ChatStore(db)
    chats = store.list_chats()
    if chats:
        chat_id = chats[-1].id
    else:
        chat_id = store.create_chat(Conversation(Character("Mira Holt", "Keeps the lamp."),
                                                 User("Tom")))
        print("C", chat_id, flush=True)
    chat, version = store.load_chat_version(chat_id)
    messages = chat.messages
    n = 0
    while True:
        n += 1
        if messages and rng.random() < 0.3:
            last = messages[-1]
            last.swipes.append(Swipe(f"swipe {len(last.swipes)} " + "y" * rng.randint(0, 900)))
            last.swipe_id = len(last.swipes) - 1
            version = store.sync_messages(chat_id, messages, version).version
            print("S", len(messages) - 1, len(last.swipes), flush=True)
            continue
        text = f"msg {seed}-{n}"
        message = Message("user" if n % 2 else "char",
                          swipes=[Swipe(text), Swipe("x" * rng.randint(0, 4000))])
        store.append_message(chat_id, message)
        version += 1  # only this process writes: its append is the one change
        messages.append(message)
        print("A", len(messages) - 1, text, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
