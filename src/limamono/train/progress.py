"""Training progress as plain lines, for logs and pipes (no bars, no cursor escapes).

tqdm's nested bars redraw with carriage returns and cursor-up escapes, which end up in a
file when the output is redirected (``limamono train CONFIG > log.txt``). When the CLI's
output is not a terminal, ``train`` turns the bars off and this callback says instead:
one line when training starts, a loss line at most every ``every_s`` seconds (and at the
last step), one line per evaluation and one at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


class LineProgress(TrainerCallback):
    """A ``TrainerCallback`` that reports progress through ``say(line)``.

    Args:
        say: receives each line (the CLI prints it to stderr).
        every_s: least seconds between two loss lines (evaluations always get a line).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, say: Callable[[str], None], every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every_s, self.clock = say, every_s, clock
        self._started = 0.0
        self._last_line = float("-inf")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Say how long the run is."""
        self._started = self.clock()
        self.say(f"training: {state.max_steps} steps, {args.num_train_epochs:g} epoch(s)")
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> Any:
        """A loss line, unless one was said less than ``every_s`` seconds ago."""
        logs = logs or {}
        now = self.clock()
        last_step = state.global_step >= state.max_steps
        if "loss" in logs and (now - self._last_line >= self.every_s or last_step):
            self._last_line = now
            self.say(f"step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}): "
                     f"loss {float(logs['loss']):.4f}, lr {float(logs.get('learning_rate', 0)):.2e}"
                     f", {now - self._started:.0f} s")
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """One line per evaluation."""
        loss = (metrics or {}).get("eval_loss")
        if loss is not None:
            self.say(f"step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}): "
                     f"eval loss {float(loss):.4f}")
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Say that training finished and how long it took."""
        self.say(f"training done: {state.global_step} steps in "
                 f"{self.clock() - self._started:.0f} s")
        return control
