"""Evaluation: loss/perplexity on held-out conversations and behaviour metrics on replies.

``metrics`` holds the pure checks, ``run`` generates and scores, ``report`` writes the
Markdown/JSON report with plots.
"""
