"""Training hardening (issue 24, defects 6-8): whose run an output folder holds, damaged
checkpoints on --resume, and a disk that fills up while a checkpoint is written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from limamono.core.conversation import Character, Conversation, Message, User, dump_yaml
from limamono.train import make_config
from limamono.train.checkpoints import CheckpointError, checkpoint_problem, resumable_checkpoint
from limamono.train.outdir import RUN_MARKER, RunFolderError, claim, identity_hash


def write_data(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        conv = Conversation(Character("Mira", "A keeper."), User("Tom"), "Night.", [
            Message("user", f"Hello {i}."), Message("char", f"Mira waved {i} times.")])
        (root / f"c{i}.yaml").write_text(dump_yaml(conv))
    return root


def values(tmp_path: Path, model: Path, **kwargs: object) -> dict[str, object]:
    out = {"data": str(tmp_path / "ds"), "model": str(model), "output_dir": str(tmp_path / "run"),
           "sequence_len": 96, "val": 0, "bf16": "false", "progress": False,
           "learning_rate": 1e-2, "max_steps": 3, "save_steps": 1, "seed": 1}
    out.update(kwargs)
    return out


# --------------------------------------------------------------------------- defect 6

def test_claim_refuses_another_run_and_resumes_only_the_same(tmp_path: Path) -> None:
    write_data(tmp_path / "ds")
    a = make_config(values(tmp_path, tmp_path, seed=1))
    claim(a)
    marker = json.loads((tmp_path / "run" / RUN_MARKER).read_text())
    assert marker["config_hash"] == identity_hash(a) and marker["identity"]["seed"] == 1
    (tmp_path / "run" / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    b = make_config(values(tmp_path, tmp_path, seed=2, max_steps=6))
    for resume in (False, True):
        with pytest.raises(RunFolderError) as caught:
            claim(b, resume=resume)
        assert "holds another run (seed: 1 there, 2 here; from limamono-run.json)" \
            in str(caught.value)
        assert "--force" in str(caught.value)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3").is_dir()  # untouched
    # the same run with more steps (a schedule key) resumes; its checkpoints stay
    claim(make_config(values(tmp_path, tmp_path, seed=1, max_steps=6)), resume=True)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3").is_dir()
    notes: list[str] = []
    claim(b, force=True, notify=notes.append)
    assert notes == [f"--force: replaced the other run in {tmp_path / 'run'}"]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert json.loads((tmp_path / "run" / RUN_MARKER).read_text())["identity"]["seed"] == 2


def test_a_fresh_start_of_the_same_run_removes_its_old_checkpoints(tmp_path: Path) -> None:
    write_data(tmp_path / "ds")
    config = make_config(values(tmp_path, tmp_path))
    claim(config)
    (tmp_path / "run" / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    notes: list[str] = []
    claim(config, notify=notes.append)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert notes and notes[0].startswith("starting afresh: removed the earlier checkpoints")


def test_an_older_runs_manifest_counts_as_its_record(tmp_path: Path) -> None:
    write_data(tmp_path / "ds")
    old = make_config(values(tmp_path, tmp_path, lora_r=4))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"config": old.to_dict()}))
    with pytest.raises(RunFolderError, match=r"lora_r: 4 there, 8 here; from manifest.json"):
        claim(make_config(values(tmp_path, tmp_path)))
    (tmp_path / "run" / "manifest.json").write_text("{garbage")
    with pytest.raises(RunFolderError, match=r"manifest.json is unreadable"):
        claim(make_config(values(tmp_path, tmp_path)))


@pytest.mark.parametrize("where", ["dataset", "inside_dataset", "root", "home", "foreign",
                                   "file", "data_under_run"])
def test_unsafe_output_folders_are_refused(where: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ds = write_data(tmp_path / "ds")
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    out = {"dataset": ds, "inside_dataset": ds / "adapter", "root": Path("/"), "home": home,
           "foreign": tmp_path / "mine", "file": tmp_path / "f.txt",
           "data_under_run": tmp_path / "run"}[where]
    data = tmp_path / "run" / "data" if where == "data_under_run" else ds
    if where == "data_under_run":
        shutil.copytree(ds, data)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("notes")
    (tmp_path / "f.txt").write_text("x")
    config = make_config(values(tmp_path, tmp_path, data=str(data), output_dir=str(out)))
    expected = {"dataset": "is the dataset folder", "inside_dataset": "is inside the dataset",
                "root": "is the root of the filesystem", "home": "is your home folder",
                "foreign": "is not empty and was not made by limamono (1 other item(s): "
                "'notes.txt')", "file": "is a file",
                "data_under_run": "would overwrite the dataset"}[where]
    for force in (False, True):
        with pytest.raises(RunFolderError, match=re.escape(expected)):
            claim(config, force=force)
    assert not (out / RUN_MARKER).exists() if out.is_dir() else True
    assert (tmp_path / "mine" / "notes.txt").read_text() == "notes"


def test_repro_06_output_dir_reuse_on_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The audit's script: run B (other seed) into run A's folder, B --resume, and
    output_dir = the dataset folder holding a user's adapter/notes.txt."""
    from limamono.cli import app

    write_data(tmp_path / "ds")
    a = values(tmp_path, tiny_model_dir, max_steps=2, save_total_limit=1)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    runner = CliRunner()
    done = runner.invoke(app, ["train", str(tmp_path / "a.yaml")])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["checkpoint-2"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**a, "seed": 2, "max_steps": 4}))
    for extra in ([], ["--resume"]):
        done = runner.invoke(app, ["train", str(tmp_path / "b.yaml"), *extra])
        assert done.exit_code == 2, done.output
        assert "holds another run (seed: 1 there, 2 here" in done.output
        assert "Traceback" not in done.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["seed"] == 1
    (tmp_path / "ds" / "adapter").mkdir()
    (tmp_path / "ds" / "adapter" / "notes.txt").write_text("notes")
    (tmp_path / "self.yaml").write_text(yaml.safe_dump({**a, "output_dir": str(tmp_path /
                                                                               "ds")}))
    done = runner.invoke(app, ["train", str(tmp_path / "self.yaml")])
    assert done.exit_code == 2 and "is the dataset folder" in done.output, done.output
    assert (tmp_path / "ds" / "adapter" / "notes.txt").read_text() == "notes"
    done = runner.invoke(app, ["train", str(tmp_path / "b.yaml"), "--force"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 2 and manifest["figures"]["steps"] == 4


# --------------------------------------------------------------------------- defect 7

@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A finished 3-step run with a checkpoint after every step."""
    from limamono.train import train

    root = tmp_path_factory.mktemp("ckpt")
    write_data(root / "ds")
    train(make_config(values(root, tiny_model_dir)), notify=lambda _line: None)
    return root


def _damage(path: Path, how: str) -> str:
    """Damage one file of the checkpoint folder ``path``; returns the file's name."""
    if how in ("truncated_safetensors", "truncated_optimizer"):
        name = "adapter_model.safetensors" if how == "truncated_safetensors" else "optimizer.pt"
        size = (path / name).stat().st_size
        with open(path / name, "r+b") as handle:
            handle.truncate(size // 2)
        return name
    if how == "garbage_rng":
        (path / "rng_state.pth").write_bytes(b"\x80\x04garbage" * 20)
        return "rng_state.pth"
    if how == "rng_wrong_content":  # a readable torch file whose states are not states
        import torch

        torch.save({"python": 1, "numpy": "x", "cpu": torch.zeros(3)}, path / "rng_state.pth")
        return "rng_state.pth"
    if how == "garbage_state":
        (path / "trainer_state.json").write_text("{not json")
        return "trainer_state.json"
    if how == "absurd_step":
        state = json.loads((path / "trainer_state.json").read_text())
        state["global_step"] = 10**12
        (path / "trainer_state.json").write_text(json.dumps(state))
        return "trainer_state.json"
    raise AssertionError(how)


DAMAGE = ["truncated_safetensors", "truncated_optimizer", "garbage_rng", "rng_wrong_content",
          "garbage_state", "absurd_step"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(
        how: str, three_checkpoints: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    shutil.copytree(three_checkpoints / "run" / "checkpoints", folder)
    assert checkpoint_problem(folder / "checkpoint-3") is None
    name = _damage(folder / "checkpoint-3", how)
    problem = checkpoint_problem(folder / "checkpoint-3")
    assert problem is not None and problem.startswith(
        f"{folder / 'checkpoint-3' / name}: damaged (")
    notes: list[str] = []
    assert resumable_checkpoint(folder, notify=notes.append) == folder / "checkpoint-2"
    assert notes == [f"--resume: skipped 1 damaged checkpoint(s) ({problem}); resuming from "
                     "checkpoint-2 instead"]


def test_no_intact_checkpoint_is_a_clear_refusal(three_checkpoints: Path,
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    shutil.copytree(three_checkpoints / "run" / "checkpoints", folder)
    for step, how in zip((1, 2, 3), ("garbage_state", "garbage_rng", "truncated_safetensors"),
                         strict=True):
        _damage(folder / f"checkpoint-{step}", how)
    with pytest.raises(CheckpointError) as caught:
        resumable_checkpoint(folder)
    text = str(caught.value)
    assert text.startswith(f"--resume: no intact checkpoint in {folder}: ")
    for step, name in ((1, "trainer_state.json"), (2, "rng_state.pth"),
                       (3, "adapter_model.safetensors")):
        assert f"checkpoint-{step}/{name}: damaged" in text
    # a step past the run's max_steps is no checkpoint of this run
    assert "past the run's 2 steps" in str(checkpoint_problem(
        three_checkpoints / "run" / "checkpoints" / "checkpoint-3", max_steps=2))


def test_repro_07_resume_from_a_truncated_newest_checkpoint(three_checkpoints: Path,
                                                            tmp_path: Path,
                                                            tiny_model_dir: Path) -> None:
    from limamono.cli import app

    shutil.copytree(three_checkpoints, tmp_path, dirs_exist_ok=True)
    for record in (RUN_MARKER, "manifest.json"):  # they name the fixture's data folder
        (tmp_path / "run" / record).unlink()
    bad = tmp_path / "run" / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors"
    _damage(bad.parent, "truncated_safetensors")
    (tmp_path / "y6.yaml").write_text(yaml.safe_dump(values(tmp_path, tiny_model_dir,
                                                            max_steps=4)))
    done = CliRunner().invoke(app, ["train", str(tmp_path / "y6.yaml"), "--resume"])
    assert done.exit_code == 0, done.output
    assert f"{bad}: damaged (" in done.output and "resuming from checkpoint-2" in done.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["figures"]["steps"] == 4


# --------------------------------------------------------------------------- defect 8

def test_out_of_space_is_recognised_from_torch_and_os_errors(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    import errno

    from limamono.train import run

    assert run.out_of_space(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert run.out_of_space(wrapped, tmp_path)
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=4096))
    assert run.out_of_space(torch_error, tmp_path, needed=10_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=10 << 20))
    assert not run.out_of_space(torch_error, tmp_path, needed=10_000)
    assert not run.out_of_space(ValueError("other"), tmp_path)


def _small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_repro_08_disk_full_during_a_checkpoint(three_checkpoints: Path, tmp_path: Path,
                                                tiny_model_dir: Path) -> None:
    """A real full disk (a tmpfs) when one checkpoint and a bit fit: the error names the
    folder, no traceback, and the earlier checkpoint reads back intact."""
    from limamono.cli import app

    one = sum(f.stat().st_size for f in
              (three_checkpoints / "run" / "checkpoints" / "checkpoint-1").iterdir())
    small = tmp_path / "small"
    if not _small_disk(small, f"{(one * 3) // 2 // 1024}k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        write_data(tmp_path / "ds")
        config = values(tmp_path, tiny_model_dir, output_dir=str(small / "run"))
        (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
        done = CliRunner().invoke(app, ["train", str(tmp_path / "small.yaml")])
        assert done.exit_code == 1, done.output
        assert f"error: no space left on {small / 'run'} while writing a checkpoint at step " \
            in done.output, done.output
        assert "the previous checkpoint checkpoint-1 is intact" in done.output
        assert "Traceback" not in done.output and "enforce fail" not in done.output
        kept = small / "run" / "checkpoints" / "checkpoint-1"
        assert checkpoint_problem(kept) is None
        assert not (small / "run" / ".staging").exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)
