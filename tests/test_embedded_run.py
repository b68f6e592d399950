"""The embedded model as the llama.cpp engine runs it: re-quantized once from Q4_1 to Q8_0."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")


def test_the_embedded_model_runs_as_q8_0_made_once(tmp_path, monkeypatch):
    import gguf
    import torch

    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.engine.load import load_engine
    from limamono.models.gguf_export import EMBEDDED_RUN_FTYPE, embedded_run_gguf
    from limamono.models.resolve import embedded_gguf

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path))
    steps: list[str] = []
    path = embedded_run_gguf(steps.append)
    assert steps == ["re-quantizing the embedded model to q8_0 (once)"]
    assert path.parent == tmp_path / "models" and path.suffix == ".gguf"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    written = path.stat().st_mtime_ns
    assert embedded_run_gguf(steps.append) == path and len(steps) == 1  # made once
    assert path.stat().st_mtime_ns == written
    field = gguf.GGUFReader(str(path)).fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == EMBEDDED_RUN_FTYPE == 7

    engine = load_engine(backend="llamacpp", threads=1, context_length=256)
    shipped = LlamaCppEngine(embedded_gguf(), threads=1, context_length=256, cache_entries=0)
    try:
        assert engine.path == path
        ids = engine.prompt_ids("Mira looked out over the harbour. The boats were rocking "
                                "on the grey water, and the gulls")
        for n in (8, 16, len(ids)):
            ours, theirs = (torch.log_softmax(e.prompt_logits(ids[:n]), -1)
                            for e in (engine, shipped))
            kl = float((theirs.exp() * (theirs - ours)).sum())
            assert kl < 0.05 and int(ours.argmax()) == int(theirs.argmax()), (n, kl)
    finally:
        engine.close()
        shipped.close()
