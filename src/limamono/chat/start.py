"""A new chat from a character card: the one place that decides how a chat opens.

The terminal chat (``limamono chat --card``) and the web chat (``limamono serve``'s page)
both start here, so a chat opened in either looks the same in the store.
"""

from __future__ import annotations

from limamono.cards import Card, card_to_conversation, greetings
from limamono.core.conversation import Conversation, Message, Swipe, User


def chat_from_card(card: Card, user: User, title: str, house_style: bool = False,
                   ) -> Conversation:
    """A new chat with ``card``'s character, opening with its greetings.

    The first message holds every greeting (``first_mes``, then the alternates) as its
    swipes, so a greeting is chosen like any other alternative reply; a card without a
    greeting gives a chat with no messages.

    Args:
        card: the card (already read and checked, e.g. by ``cards.read_card``).
        user: the user (``{{user}}`` in the card becomes their name).
        title: the chat's title (the card's file name, by convention).
        house_style: convert the card's asterisk-style prose to the house style.

    Raises:
        limamono.cards.CardError: the card's text cannot be used.
    """
    chat = card_to_conversation(card, user.name, house_style=house_style)
    texts = greetings(card, user.name, house_style=house_style)
    chat.user = user
    chat.messages = [Message("char", swipes=[Swipe(g) for g in texts])] if texts else []
    chat.title = title
    chat.meta = {}  # the card's file is kept with the character (``create_chat``'s source)
    return chat
