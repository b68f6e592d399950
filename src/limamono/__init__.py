"""limamono: the Limamono roleplay-model toolkit (format, style, cards, data, training, engine, chat, server)."""

__version__ = "0.1.0"
