"""limamono: a toolkit for Limamono-style roleplay models (format, data, training, serving, chat).

Modules: conversation (the data model), format (the prompt format), style, cards, samplers,
models, engine, chat, store, server, dataset, train, evaluate, presets.
"""

__version__ = "0.1.0"
