"""Every CLI command that runs a model loads it through the one loader (with the same
progress bar and the same error handling)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [
    ["generate", "--prompt", "Hi", "--model", "m1"],
    ["chat", "--card", str(REPO / "examples" / "characters" / "bram-whitlock.yaml"),
     "--model", "m1"],
    ["serve", "--model", "m1", "--port", "0"],
    ["eval", "--data", str(REPO / "examples" / "conversations"), "--model", "m1",
     "--output", "ignored"],
])
def test_every_command_loads_through_the_one_loader(args, monkeypatch, tmp_path):
    import limamono.engine as engine
    from limamono.cli import app
    from limamono.cli.engine_cmd import ConversionProgress
    from limamono.models.resolve import ModelError

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    calls = []

    def refuse(model, **kwargs):
        calls.append((model, kwargs))
        raise ModelError(f"{model}: cannot load the model (test); fix: pass another")

    monkeypatch.setattr(engine, "load_engine", refuse)
    monkeypatch.setattr("limamono.cli.engine_cmd.prepare_model_for_cli", lambda model: None)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "m1: cannot load the model (test); fix: pass another" in " ".join(
        result.output.split())
    [(model, kwargs)] = calls
    assert model == "m1" and isinstance(kwargs["progress"], ConversionProgress)
