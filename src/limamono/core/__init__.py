"""The core, the bottom layer every other package builds on: the data model
(``conversation``), the one renderer of the Limamono format (``format``), the one prompt
policy (``policy``) and the SillyTavern presets written from them (``presets``).

The core imports nothing of limamono but ``limamono.util``.
"""
