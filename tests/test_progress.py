"""Progress outside a terminal: throttled lines instead of a Rich bar that draws nothing."""

from __future__ import annotations

import re

from rich.text import Text

from limamono.cli.progress import CountLines, counting


def test_lines_say_the_first_and_last_item_and_at_most_one_line_per_interval():
    now = [100.0]
    said: list[Text] = []
    bar = CountLines(said.append, clock=lambda: now[0], every_s=30.0)
    task = bar.add_task("generating (demo)", total=84)
    other = bar.add_task("generating ([bold]x[/bold])", total=2)
    for done, at in [(1, 104.0), (2, 120.0), (3, 134.5), (4, 150.0), (4, 190.0), (84, 3825.0)]:
        now[0] = at
        bar.update(task, completed=done)
    now[0] = 3900.0
    bar.update(other, completed=2)
    assert [t.plain for t in said] == [
        "generating (demo): 1/84, 4s",       # the first item, always
        "generating (demo): 3/84, 34s",      # 30.5 s after the last line
        "generating (demo): 84/84, 1h02m",   # the last, always; a repeated count says nothing
        "generating ([bold]x[/bold]): 2/2, 1h03m",  # a Text: markup is printed as written
    ]
    assert all(isinstance(t, Text) and not t.spans for t in said)


def test_eval_outside_a_terminal_prints_progress_lines(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import limamono.cli.engine_cmd as engine_cmd
    import limamono.cli.progress as progress_mod
    import limamono.evaluate.run as run_mod
    from limamono.cli import app

    def fake_run(config, progress, load, **kw):
        for done in (0, 1, 2, 3):  # 0: the variant starts
            progress("demo", done, 3)
        return []

    monkeypatch.setattr(engine_cmd, "prepare_model_for_cli", lambda model: None)
    monkeypatch.setattr(run_mod, "run", fake_run)
    monkeypatch.setattr(progress_mod, "LINE_EVERY_S", 1e9)
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(app, ["eval", "--data", str(data), "-o", str(tmp_path / "r"),
                                      "--adapter", "demo"])
    lines = [line for line in result.output.splitlines() if line.startswith("generating")]
    assert [re.sub(r", \d+s$", ", Ns", line) for line in lines] == \
        ["generating (demo): 1/3, Ns", "generating (demo): 3/3, Ns"]
    assert "\x1b" not in result.output


def test_a_terminal_gets_the_rich_bar():
    from rich.progress import Progress

    with counting(terminal=True) as bar:
        assert isinstance(bar, Progress)
    with counting(terminal=False) as bar:
        assert isinstance(bar, CountLines)
