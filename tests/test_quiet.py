"""Quiet starts and clean logs (issue 15): what a person sees on stderr and in files.

The start tests run the real CLI in a subprocess on the tiny model with a LoRA adapter, so
the library code paths that used to warn (PEFT wrapping the model, transformers loading
it) really run; the quiet settings are stripped from the child's environment so the CLI
has to make them itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from limamono.cli import app, quiet
from limamono.core import conversation
from limamono.core.policy import get_policy

REPO = Path(__file__).resolve().parents[1]
MIRA = Path(__file__).parent / "assets" / "chat_mira.yaml"


# --------------------------------------------------------------------------- render

def test_render_prints_exactly_the_prompt() -> None:
    conv = conversation.load(MIRA)[0]
    policy = get_policy("training", "card")
    opened = CliRunner().invoke(app, ["render", "--open", str(MIRA)])
    assert opened.exit_code == 0
    assert opened.stdout_bytes == policy.render(conv, open_response=True).encode("utf-8")
    assert opened.stdout_bytes.endswith(b"\n\n### Response: (length = long)\nMira Holt:")
    closed = CliRunner().invoke(app, ["render", str(MIRA)])
    assert closed.stdout_bytes == policy.render(conv, open_response=False).encode("utf-8")
    assert not closed.stdout_bytes.endswith(b"\n")


# --------------------------------------------------------------------------- warnings

def _warn_from(module: str, text: str) -> None:
    """Raise a warning attributed to ``module``, as if that package had raised it."""
    exec(compile(f"import warnings\nwarnings.warn({text!r}, FutureWarning)", module, "exec"),
         {"__name__": module})


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in quiet._QUIET_ENV:
        monkeypatch.setenv(key, "unset")  # recorded, so the teardown restores the original
        monkeypatch.delenv(key)


def test_library_warnings_are_dropped_and_ours_are_one_line(clean_env: None,
                                                            capsys: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings():
        warnings.resetwarnings()
        quiet.setup(verbose=False)
        _warn_from("peft.peft_model", "`is_gradient_checkpointing` is deprecated")
        _warn_from("limamono.models.resolve", "adapter trained on X\nsecond line")
    assert capsys.readouterr().err == "warning: adapter trained on X\n"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"


def test_verbose_shows_library_warnings_again(clean_env: None) -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        quiet.setup(verbose=True)
        _warn_from("peft.peft_model", "`is_gradient_checkpointing` is deprecated")
    assert [(w.category, str(w.message)) for w in shown] == [
        (FutureWarning, "`is_gradient_checkpointing` is deprecated")]
    assert "TRANSFORMERS_VERBOSITY" not in os.environ


# --------------------------------------------------------------------------- subprocesses

def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in quiet._QUIET_ENV}
    env.update(PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               LIMAMONO_HOME=str(tmp_path / "home"), PYTHONWARNINGS="default")
    return env


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model: loading it goes through PEFT's wrapping and merge."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    out = tmp_path_factory.mktemp("tiny-adapter")
    peft.save_pretrained(out)
    return out


def test_chat_start_writes_nothing_to_stderr(tmp_path: Path, tiny_model_dir: Path,
                                             tiny_adapter: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "limamono", "chat", "--card", str(MIRA), "--db",
         str(tmp_path / "c.db"), "--model", str(tiny_model_dir), "--adapter",
         str(tiny_adapter), "--threads", "1"],
        input="/quit\n", capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path,
        timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Mira Holt: Mira looked up from the lamp" in done.stdout
    assert done.stderr == ""


def test_serve_start_writes_nothing_to_stderr(tmp_path: Path, tiny_model_dir: Path,
                                              tiny_adapter: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "limamono", "serve", "--port", "0", "--model",
         str(tiny_model_dir), "--adapter", str(tiny_adapter), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        cwd=tmp_path)
    try:
        banner = proc.stdout.readline()  # printed once the socket is bound
        assert banner.startswith("Serving "), proc.stderr.read() if proc.poll() else banner
        assert " at http://127.0.0.1:" in banner and ":0\n" not in banner
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert err == ""
    assert proc.returncode in (0, 130)  # uvicorn re-raises the Ctrl-C after a clean stop


def test_train_to_a_file_writes_no_escapes(tmp_path: Path, tiny_model_dir: Path) -> None:
    from test_train import write_data

    data = write_data(tmp_path / "data", 2, eval_n=1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "model": str(tiny_model_dir),
                                      "output_dir": str(tmp_path / "run"), "sequence_len": 96,
                                      "val": 0, "bf16": "false", "num_epochs": 2,
                                      "load_in_8bit": False}))
    done = subprocess.run([sys.executable, "-m", "limamono", "train", str(config)],
                          capture_output=True, env=_env(tmp_path), cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    for stream in (done.stdout, done.stderr):
        assert b"\x1b" not in stream and b"\r" not in stream
    lines = done.stderr.decode().splitlines()
    assert lines[0] == "training: 4 steps, 2 epoch(s)"
    assert [line.split(": ")[0] for line in lines if ": eval loss " in line] == \
        ["step 2/4 (epoch 1.00)", "step 4/4 (epoch 2.00)"]
    assert lines[-1].startswith("training done: 4 steps in ")
    assert done.stdout.decode().startswith(f"adapter: {tmp_path / 'run' / 'adapter'}  steps 4")
