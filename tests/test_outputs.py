"""Output paths: one overwrite rule, nothing created before a failure, clean errors for bad
paths (issue 11 items 2, 9, 10, 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from limamono.cli import app

ASSETS = Path(__file__).parent / "assets"
runner = CliRunner()


def test_card_convert_replaces_a_file_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    refused = runner.invoke(app, ["card", "convert", str(ASSETS / "edda.yaml"), str(target)])
    assert refused.exit_code == 2
    assert refused.output == f"error: {target} exists; pass --force to replace it\n"
    assert target.read_text() == "my notes\n"
    forced = runner.invoke(app, ["card", "convert", str(ASSETS / "edda.yaml"), str(target),
                                 "--force"])
    assert forced.exit_code == 0, forced.output
    assert target.read_text().startswith("Edda")


def test_presets_export_creates_nothing_when_it_fails(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "presets"
    result = runner.invoke(app, ["presets", "export", str(folder), "--preset", "nope"])
    assert result.exit_code == 2
    assert result.output == ("error: preset='nope': unknown preset; known: limamono, "
                             "limamono-dry, greedy\n")
    assert not (tmp_path / "new").exists()
    under_file = tmp_path / "f.txt"
    under_file.write_text("x")
    result = runner.invoke(app, ["presets", "export", str(under_file / "p")])
    assert result.output == (f"error: {under_file / 'p'}: cannot write the presets (Not a "
                             "directory)\n")


@pytest.mark.parametrize("db", ["/proc/x/y.db", "{file}/c.db"])
def test_chats_with_an_unusable_db_path_is_a_clean_error(tmp_path: Path, db: str) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    db = db.format(file=a_file)
    result = runner.invoke(app, ["chats", "list", "--db", db])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {db}: cannot create its folder (")
    assert result.output.endswith("); pass another --db\n")


def test_a_nul_byte_in_an_output_path_is_an_os_error_for_library_callers(tmp_path):
    from limamono.cards import CardError, new_card, write_card
    from limamono.store import StoreError
    from limamono.store.sillytavern import write_file_safely
    from limamono.util import atomic

    with pytest.raises(OSError, match="the path holds a NUL byte"):
        atomic.write_text(tmp_path / "a\0b.txt", "x")
    with pytest.raises(CardError, match=r"cannot write: the path holds a NUL byte"):
        write_card(new_card("Edda"), tmp_path / "a\0b.json")
    with pytest.raises(StoreError, match=r"cannot write \(.*NUL byte.*\); nothing was replaced"):
        write_file_safely(tmp_path / "a\0b.jsonl", "{}")
    assert list(tmp_path.iterdir()) == []
