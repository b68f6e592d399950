"""Reply text: the impersonation guard that cuts a streamed reply, and thought extraction."""

from __future__ import annotations

import re

from limamono.chat.messages import Cut


def thoughts(text: str) -> list[str]:
    """The character's thoughts (``_..._`` spans) in a text, without the underscores."""
    from limamono.style import split_spans

    return [s.inner for s in split_spans(text) if s.kind == "thought"]


class ImpersonationGuard:
    """Cuts a streamed reply where the model starts the user's turn or a header.

    Text is held back while it could be the start of such a cut (``\\nUs`` or ``#``), so a
    streaming UI never shows a fragment of the user's name that is then taken back.

    Args:
        user_name: the user's name.
        at_line_start: the reply starts a line (a new reply, not a continuation): leading
            whitespace is dropped and ``{user}:`` at the very start is a cut too.
    """

    def __init__(self, user_name: str, at_line_start: bool = True) -> None:
        self._marker = f"{user_name}:"
        name = re.escape(user_name)
        start = "^" if at_line_start else "(?!)"
        self._pattern = re.compile(rf"(?:{start}|\n)[ \t]*{name}:|###")
        self._at_line_start = at_line_start
        self.text = ""
        self.emitted = 0
        self.cut: Cut | None = None

    def feed(self, chunk: str) -> str:
        """Add streamed text; return the part that is safe to show now ("" once cut)."""
        if self.cut is not None:
            return ""
        self.text += chunk
        if self._at_line_start and self.emitted == 0:
            stripped = self.text.lstrip()
            self.text = stripped
        match = self._pattern.search(self.text)
        if match:
            self.cut = "header" if match.group(0) == "###" else "user"
            self.text = self.text[:match.start()].rstrip()
            return self._emit(len(self.text))
        return self._emit(self._safe_end())

    def finish(self) -> str:
        """The held-back rest at the end of the stream (nothing was cut after all)."""
        self.text = self.text.rstrip()
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def _safe_end(self) -> int:
        text = self.text
        end = len(text.rstrip())  # trailing space is dropped if the reply ends or is cut here
        stripped = text.rstrip("#")
        if len(text) - len(stripped) < 3:
            end = min(end, len(stripped.rstrip()))
        line_start = text.rfind("\n") + 1
        if line_start > 0 or self._at_line_start:
            tail = text[line_start:].lstrip(" \t")
            if self._marker.startswith(tail):
                end = min(end, max(line_start - 1, 0))
        return end
