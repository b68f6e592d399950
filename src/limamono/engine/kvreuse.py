"""How much of a cached token sequence a new prompt can reuse: a prefix, or a ContextShift.

Pure functions on token ids, shared by the engines. A chat that outgrew its context comes
back with its oldest turns left out (the prompt policy decides which): the cached tokens
are ``head + dropped + kept`` and the new prompt is ``head + kept + new``. Instead of
re-reading ``kept``, an engine whose cache can shift positions removes ``dropped`` from the
cache and moves ``kept`` down by its length (KoboldCpp's ContextShift does the same). The
keys of ``kept`` were computed while ``dropped`` was still in view, so the next-token
logits differ slightly from a fresh evaluation of the new prompt; tests bound that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Fewest matching tokens after the gap for a shift to be worth it (and to be sure the
#: match is the kept turns, not a chance repeat of a common token or two).
MIN_SHIFT_MATCH = 16


@dataclass(frozen=True)
class Reuse:
    """Reusing a cached sequence for a new prompt.

    Attributes:
        prefix: Leading tokens shared as they are.
        dropped: Cached tokens after ``prefix`` to remove (0: a plain prefix reuse).
        matched: Cached tokens after the gap that equal the prompt's next tokens.
    """

    prefix: int
    dropped: int = 0
    matched: int = 0

    @property
    def reused(self) -> int:
        """Prompt tokens that need no evaluation."""
        return self.prefix + self.matched


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def plan_reuse(cached: Sequence[int], prompt: Sequence[int], shift: bool = True) -> Reuse:
    """The best reuse of ``cached`` for ``prompt``, leaving at least one token to evaluate.

    With ``shift``, also looks for the longest run of ``prompt`` after the common prefix
    that appears later in ``cached`` (ContextShift); it is taken when it reuses at least
    :data:`MIN_SHIFT_MATCH` more tokens than the plain prefix.
    """
    limit = len(prompt) - 1  # the next token's logits come from evaluating one token
    prefix = min(common_prefix(cached, prompt), limit)
    best = Reuse(prefix)
    if not shift or prefix < 1 or prefix >= limit or prefix >= len(cached) - 1:
        return best
    rest = prompt[prefix:limit]
    first = rest[0]
    for start in range(prefix + 1, len(cached)):
        if cached[start] != first:
            continue
        matched = common_prefix(cached[start:], rest)
        if matched >= MIN_SHIFT_MATCH and matched > best.matched:
            best = Reuse(prefix, start - prefix, matched)
            if prefix + matched == limit:
                break
    return best
