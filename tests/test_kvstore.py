"""Conversations' KV caches on disk (``limamono.engine.kvstore``): saved when a reply ends,
restored by a later engine (a restarted server), refused when they do not match."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from limamono.engine.kvstore import MIN_SAVE_TOKENS, KVStore

IDENTITY = {"model": "m.gguf:1:2", "adapter": "none", "llama_cpp": "0", "kv_type": "f16"}


def _writer(size: int):
    def write(path: Path) -> bool:
        path.write_bytes(b"k" * size)
        return True
    return write


def test_store_keeps_the_newest_states_under_its_cap(tmp_path):
    store = KVStore(tmp_path, IDENTITY, cap_bytes=2500)
    ids = [list(range(i, i + MIN_SAVE_TOKENS)) for i in range(3)]
    for one in ids:
        assert store.save(one, _writer(1000)) is not None
    assert [e.ids for e in store.entries] == [tuple(ids[1]), tuple(ids[2])]
    assert store.total_bytes() == 2000
    assert len(list(store.folder.iterdir())) == 4  # two states, two sidecars
    assert store.save(list(range(MIN_SAVE_TOKENS - 1)), _writer(10)) is None  # too short
    again = KVStore(tmp_path, IDENTITY, cap_bytes=2500)  # a restart reads the sidecars
    assert [e.ids for e in again.entries] == [tuple(ids[1]), tuple(ids[2])]
    found = again.best([*ids[2], 7, 8], at_least=0)
    assert found is not None and found[1] == MIN_SAVE_TOKENS


def test_a_longer_state_replaces_its_prefix(tmp_path):
    store = KVStore(tmp_path, IDENTITY, cap_bytes=10_000)
    short = list(range(MIN_SAVE_TOKENS))
    store.save(short, _writer(100))
    store.save([*short, 1, 2], _writer(100))
    assert [len(e.ids) for e in store.entries] == [MIN_SAVE_TOKENS + 2]


def test_other_identity_truncated_and_orphaned_files_are_ignored(tmp_path, caplog):
    store = KVStore(tmp_path, IDENTITY, cap_bytes=10_000)
    a = store.save(list(range(MIN_SAVE_TOKENS)), _writer(100))
    b = store.save(list(range(1, MIN_SAVE_TOKENS + 1)), _writer(100))
    assert a is not None and b is not None
    meta = a.path.with_suffix(".json")
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "identity": {**IDENTITY, "model": "other"}}))
    b.path.write_bytes(b"k" * 50)  # truncated
    (store.folder / "deadbeef.kvstate.123.tmp").write_bytes(b"x")  # an interrupted save
    with caplog.at_level(logging.WARNING, logger="limamono.engine"):
        again = KVStore(tmp_path, IDENTITY, cap_bytes=10_000)
    assert again.entries == []
    text = caplog.text
    assert "another model or build" in text and "truncated" in text
    assert "interrupted save" in text
    assert list(again.folder.iterdir()) == []


def test_a_changed_file_of_the_same_size_is_refused(tmp_path, caplog):
    store = KVStore(tmp_path, IDENTITY, cap_bytes=10_000)
    entry = store.save(list(range(MIN_SAVE_TOKENS)), _writer(100))
    assert entry is not None
    entry.path.write_bytes(b"j" * 100)
    with caplog.at_level(logging.WARNING, logger="limamono.engine"):
        assert not store.check(entry)
    assert "does not match its sidecar" in caplog.text and store.entries == []


# -- on the llama.cpp engine ---------------------------------------------------------------

def _engine(state_dir: Path | None):
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    return LlamaCppEngine(embedded_gguf(), context_length=512, threads=1, state_dir=state_dir)


def _prompt(engine) -> list[int]:
    text = " ".join(f"The keeper counted boat number {i} in the harbour." for i in range(40))
    ids = engine.prompt_ids(text)
    assert len(ids) > MIN_SAVE_TOKENS
    return ids[:MIN_SAVE_TOKENS + 40]


@pytest.mark.slow
def test_a_restarted_engine_restores_a_saved_chat(tmp_path, caplog):
    import torch

    first = _engine(tmp_path)
    ids = _prompt(first)
    more = first.tokenize(" Then the lamp went out.")
    cold = first.prompt_logits(ids)  # the slot closes holding ids: saved
    first.close()
    reference = _engine(None)  # the same reads without a disk: ids, then the rest
    reference.prompt_logits(ids)
    expected = reference.prompt_logits([*ids, *more])
    reference.close()

    restarted = _engine(tmp_path)
    # The same prompt again: its state is restored but for the last token, which is read
    # alone, as the cold read did (engine.loop.prefill_end): the cold read's very bits.
    again = restarted.prompt_logits(ids)
    assert restarted.restored_tokens == len(ids) - 1
    assert torch.equal(again, cold)
    got = restarted.prompt_logits([*ids, *more])  # extends the sequence in memory
    assert restarted.restored_tokens == len(ids) - 1
    assert restarted.stats.last_evaluated == len(more)
    assert torch.equal(got, expected)  # the very KV that was saved: the same bits
    restarted.close()

    state = next(tmp_path.rglob("*.kvstate"))  # the longer prompt was saved as well
    for path in tmp_path.rglob("*.kvstate"):
        path.write_bytes(path.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING, logger="limamono.engine"):
        damaged = _engine(tmp_path)
        damaged.prompt_logits([*ids, *more])
    assert damaged.restored_tokens == 0
    assert damaged.stats.last_evaluated == len(ids) + len(more)
    assert "truncated" in caplog.text
    assert state.stat().st_size > 1000  # removed, then saved whole again at the slot's close
    damaged.close()


@pytest.mark.slow
def test_slot_actions_save_erase_and_restore_a_slot(tmp_path):
    from fastapi.testclient import TestClient

    from limamono.server import ServerConfig, create_app

    engine = _engine(None)
    config = ServerConfig(slot_save_path=tmp_path / "slots")
    with TestClient(create_app(engine, config)) as client:
        client.post("/v1/completions", json={"prompt": "The harbour at dawn", "max_tokens": 4,
                                             "temperature": 0})
        held = engine.slot_tokens()[0][1]
        assert client.get("/slots").json() == [{"id": 0, "n_ctx": 512, "is_processing": False,
                                                "n_past": held}]
        assert client.get("/props").json()["total_slots"] == 1
        saved = client.post("/slots/0?action=save", json={"filename": "chat.bin"}).json()
        assert saved["id_slot"] == 0 and saved["n_saved"] == held > 4
        assert saved["n_written"] == (tmp_path / "slots" / "chat.bin").stat().st_size
        assert client.post("/slots/0?action=erase").json() == {"id_slot": 0, "n_erased": held}
        assert engine.slot_tokens()[0] == (False, 0)
        restored = client.post("/slots/0?action=restore", json={"filename": "chat.bin"})
        assert restored.json()["n_restored"] == held
        assert engine.slot_tokens()[0] == (False, held)
        bad = client.post("/slots/0?action=save", json={"filename": "../x.bin"})
        assert bad.status_code == 400 and "filename" in bad.text
        assert client.post("/slots/5?action=erase").status_code == 400
        assert client.post("/slots/0?action=nap").status_code == 400
        (tmp_path / "slots" / "junk.bin").write_bytes(b"not a state")
        junk = client.post("/slots/0?action=restore", json={"filename": "junk.bin"})
        assert junk.status_code == 400 and "not a slot state" in junk.text
        missing = client.post("/slots/0?action=restore", json={"filename": "none.bin"})
        assert missing.status_code == 404
    engine.close()
