"""LoRA adapters loaded, unloaded and chosen at run time on the llama.cpp engine.

On the embedded model's GGUF with the demo adapter (converted once per module): loading it
changes the greedy reply, unloading restores the base reply token for token, a stream may
choose its own adapter set while another runs under another one (a step holds one set),
and the KV cache computed under one set is never reused under another.

Tolerance: with a LoRA applied, a reply read from a reused prefix (the last prompt token
evaluated alone) can differ from a fresh read of the whole prompt after a few tokens, where
two candidates are nearly tied (measured: token 9 of this prompt, also with the adapter
applied at start, before run-time adapters existed); so replies are compared fresh with
fresh and reused with reused.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from limamono.engine.protocol import AdapterUnloadedError
from limamono.samplers import get_preset

DEMO = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo"
PROMPT = ("### Instruction:\nMira is a lighthouse keeper on a windy island.\n\n"
          "### Input:\nTomas: What do you see out there tonight?\n\n### Response:\nMira:")
TOKENS = 16

pytestmark = pytest.mark.slow  # the embedded model (there is no tiny GGUF)


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from limamono.models.gguf_lora import convert
    from limamono.models.resolve import embedded_gguf

    out = tmp_path_factory.mktemp("lora") / "demo.gguf"
    convert(DEMO, embedded_gguf(), out)
    return out


@pytest.fixture(scope="module")
def engine():
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    engine = LlamaCppEngine(embedded_gguf(), context_length=256, threads=1, parallel=2)
    yield engine
    engine.close()


def _reply(engine, tokens: int = TOKENS) -> list[int]:
    return list(engine.stream_tokens(engine.prompt_ids(PROMPT), get_preset("greedy"), tokens))


def test_load_changes_the_reply_unload_restores_it_and_caches_stay_apart(engine, demo_gguf):
    base = _reply(engine)
    assert engine.stats.last_reused == 0
    engine.load_adapter("demo", demo_gguf, 1.0)
    assert [(a.name, a.scale) for a in engine.adapters()] == [("demo", 1.0)]
    adapted = _reply(engine)
    assert adapted != base
    assert engine.stats.last_reused == 0  # the base model's cache of this prompt is not used
    again = _reply(engine)  # the adapter's own cache is
    assert engine.stats.last_reused == len(engine.prompt_ids(PROMPT)) - 1
    assert again[:8] == adapted[:8] and again[:8] != base[:8]
    with engine.using_adapters({}):  # this thread asks for the base model
        assert _reply(engine) == base
    with engine.using_adapters({"demo": 1.0}):
        assert _reply(engine) == again
    engine.unload_adapter("demo")
    assert engine.adapters() == []
    assert _reply(engine) == base
    with pytest.raises(KeyError):
        engine.unload_adapter("demo")
    with pytest.raises(AdapterUnloadedError), engine.using_adapters({"demo": 1.0}):
        pass


def test_two_streams_with_other_adapters_run_at_once(engine, demo_gguf):
    engine.clear_cache()
    engine.load_adapter("demo", demo_gguf, 1.0)
    try:
        with engine.using_adapters({}):
            base = _reply(engine)
        engine.clear_cache()
        adapted = _reply(engine)
        engine.clear_cache()
        results: dict[str, list[int]] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def run(name: str, choice: dict[str, float]) -> None:
            try:
                start.wait()
                with engine.using_adapters(choice):
                    results[name] = _reply(engine)
            except BaseException as error:  # reported in the test's thread
                errors.append(error)

        threads = [threading.Thread(target=run, args=("base", {})),
                   threading.Thread(target=run, args=("demo", {"demo": 1.0}))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert results == {"base": base, "demo": adapted}
        with pytest.raises(ValueError, match="loaded already"):
            engine.load_adapter("demo", demo_gguf)
    finally:
        engine.unload_adapter("demo")


def test_a_half_scale_is_its_own_cache_key(engine, demo_gguf):
    engine.clear_cache()
    engine.load_adapter("demo", demo_gguf, 0.5)
    try:
        half = _reply(engine)
        with engine.using_adapters({"demo": 1.0}):
            full = _reply(engine)
            assert engine.stats.last_reused == 0
        assert half != full
    finally:
        engine.unload_adapter("demo")


def test_a_chosen_adapter_unloaded_before_the_stream_starts(engine, demo_gguf):
    """Regression: a stream whose chosen adapter was unloaded meanwhile raised a bare
    KeyError (the server's 500); now AdapterUnloadedError naming it, and a name at scale 0
    (what llama.cpp's ``lora`` field gives every adapter it does not name) is no longer
    needed at all."""
    base = _reply(engine)
    engine.load_adapter("demo", demo_gguf, 1.0)
    with engine.using_adapters({"demo": 1.0}):
        engine.unload_adapter("demo")
        with pytest.raises(AdapterUnloadedError, match="adapter 'demo' was unloaded"):
            _reply(engine)
    engine.load_adapter("demo", demo_gguf, 1.0)
    with engine.using_adapters({"demo": 0.0}):
        engine.unload_adapter("demo")
        assert _reply(engine) == base
    with pytest.raises(AdapterUnloadedError), engine.using_adapters({"demo": 0.5}):
        pass
