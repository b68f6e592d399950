"""The hostile-input corpus (tests/assets/hostile/, issue 11): every command that reads a
file refuses each one with one line naming the file and the reason, exit 2 (1 for
``data lint``), no traceback, nothing written, in under 2 s, and within 300 MB of memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from limamono.cli import app, chat_cmd

HOSTILE = Path(__file__).parent / "assets" / "hostile"
EXPECTED: dict[str, str] = json.loads((HOSTILE / "EXPECTED.json").read_text(encoding="utf-8"))
SECONDS = 2.0
RSS_MB = 300


def corpus(folder: str, *suffixes: str) -> list[str]:
    return sorted(name for name in EXPECTED if name.startswith(f"{folder}/")
                  and name.endswith(suffixes or ("",)))


def commands(name: str, out: Path) -> Iterator[tuple[list[str], int]]:
    """(arguments, exit code) of every command that reads the corpus file ``name``;
    outputs go under ``out``."""
    path = str(HOSTILE / name)
    db = ["--db", str(out / "chats.db")]
    folder = name.split("/")[0]
    if folder == "conversations":
        yield ["render", path], 2
        yield ["lint", path], 2
        yield ["data", "lint", path], 1
        if name.endswith(".yaml"):
            yield ["card", "show", path], 2
            yield ["card", "convert", path, str(out / "card.json")], 2
            yield ["chat", "--card", path, *db], 2
    elif folder == "configs":
        yield ["train", path], 2
    elif folder == "chats":
        yield ["chats", "import", path, *db], 2
    elif folder == "builds":
        yield ["data", "stats", path], 2
    elif folder == "adapters":  # refused before a model loads (issue 24, defect 18)
        yield ["generate", "-p", "Hi", "-n", "1", "--adapter", path], 2
    elif folder == "gguf":  # refused before llama.cpp reads them (issue 24, defect 17)
        yield ["generate", "-p", "Hi", "-n", "1", "--adapter", "none", "--model", path], 2
    elif folder == "cards":
        yield ["card", "show", path], 2
        yield ["card", "convert", path, str(out / "card.png")], 2
        yield ["lint", path], 2


def tree(folder: Path) -> dict[str, int]:
    """Every file and its size (SQLite's -wal/-shm companions of an open database aside)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hostile file got as far as loading the model")

    monkeypatch.setattr(chat_cmd, "make_engine", refuse)


@pytest.mark.parametrize("name", [n for n in EXPECTED if not n.startswith("http/")])
def test_every_reader_refuses_it_in_one_line(name: str, tmp_path: Path, no_model: None) -> None:
    from limamono.store import ChatStore

    ChatStore(tmp_path / "chats.db").close()  # so that "nothing written" covers the database
    if name.split("/")[0] in ("adapters", "gguf"):  # the 2 s bound is for the refusal, not
        import importlib  # for importing the model libraries once

        for module in ("peft", "transformers", "gguf", "limamono.engine.load",
                       "limamono.engine.llamacpp",
                       "limamono.models.gguf_check", "limamono.models.gguf_lora"):
            importlib.import_module(module)
    before = tree(tmp_path)
    runner = CliRunner()
    path = str(HOSTILE / name)
    for args, code in commands(name, tmp_path):
        start = time.perf_counter()
        result = runner.invoke(app, args)
        took = time.perf_counter() - start
        what = f"{' '.join(args[:2])} {name}: {result.output!r}"
        assert result.exit_code == code, what
        assert result.exception is None or isinstance(result.exception, SystemExit), what
        assert "Traceback" not in result.output, what
        naming = [line for line in result.output.splitlines() if path in line]
        assert len(naming) == 1 and EXPECTED[name] in naming[0], what
        if args[0] not in ("lint", "data"):  # those two add a summary line
            assert result.output == naming[0] + "\n", what
            assert naming[0].startswith(f"error: {path}"), what
        assert took < SECONDS, f"{what} took {took:.2f} s"
    assert tree(tmp_path) == before
    assert ChatStore(tmp_path / "chats.db").list_chats() == []


def test_data_build_refuses_them_before_writing(tokenizer_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for name in corpus("conversations"):
        path = str(HOSTILE / name)
        result = runner.invoke(app, ["data", "build", path, "-o", str(tmp_path / "out"),
                                     "--model", str(tokenizer_dir)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"error: {path}"), result.output
        assert EXPECTED[name] in result.output, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", corpus("http"))
def test_the_server_refuses_hostile_bodies_before_generating(name: str) -> None:
    from fastapi.testclient import TestClient

    from limamono.server import ServerConfig, create_app
    from test_server_fakes import FakeEngine

    engine = FakeEngine()
    client = TestClient(create_app(engine, ServerConfig()), raise_server_exceptions=False)
    body = (HOSTILE / name).read_bytes()
    for route in ("/v1/completions", "/api/v1/generate", "/v1/chat/completions"):
        start = time.perf_counter()
        response = client.post(route, content=body, headers={"Content-Type": "application/json"})
        assert time.perf_counter() - start < SECONDS
        assert 400 <= response.status_code < 500, (route, response.text)
        assert EXPECTED[name] in response.text, (route, response.text)
    assert engine.calls == []


def test_memory_stays_bounded_on_every_file(tmp_path: Path) -> None:
    """All the CLI cases in one fresh interpreter; its peak RSS is the bound checked."""
    script = f"""
import json, resource, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from typer.testing import CliRunner
from pathlib import Path
from limamono.cli import app, chat_cmd
from test_hostile import EXPECTED, commands
chat_cmd.make_engine = None  # a hostile file must never get that far
runner = CliRunner()
codes = []
# model files (adapters/, gguf/) import torch and llama.cpp (~470 MB before any file is
# read); their readers look at headers only, and test_model_files.py checks them
for name in [n for n in EXPECTED if n.split("/")[0] not in ("adapters", "gguf")]:
    for args, code in commands(name, Path({str(tmp_path)!r})):
        codes.append(runner.invoke(app, args).exit_code == code)
# VmHWM is this process's own peak; ru_maxrss would include the parent's at fork time.
status = Path("/proc/self/status")
peak = (int(next(l.split()[1] for l in status.read_text().splitlines() if l.startswith("VmHWM")))
        if status.exists() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(json.dumps([all(codes), len(codes), peak // 1024]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    all_ok, runs, peak_mb = json.loads(done.stdout.strip().splitlines()[-1])
    assert all_ok and runs >= 60
    assert peak_mb < RSS_MB, f"peak RSS {peak_mb} MB"
