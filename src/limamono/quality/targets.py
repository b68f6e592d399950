"""The targets a model's replies (and a dataset's character turns) are judged against.

The evaluation report marks its figures with them, and ``data lint`` warns when a dataset's
thought rate falls outside its range, so both read them from here.
"""

from __future__ import annotations

__all__ = ["TARGETS"]

#: The targets of issue 7 (name -> (low, high)): ``None`` is an open end.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "style_compliance": (0.90, None),
    "format_integrity": (0.98, None),
    "impersonation_rate": (None, 0.05),
    "length_spearman": (0.5, None),
    "thought_rate": (0.20, 0.80),
}
