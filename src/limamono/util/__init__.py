"""Utilities below everything else: atomic file writes and bounded reading of untrusted files.

No module here imports another part of limamono.
"""
