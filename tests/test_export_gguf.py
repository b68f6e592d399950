"""`limamono export gguf`: merged and LoRA-only GGUF files that llama.cpp runs as torch does.

Component tests run on the tiny 2-layer models (SmolLM2's BPE tokenizer, and Mistral's
SentencePiece one) with a LoRA whose B matrices are random, so the merge really changes
the logits (by ~0.8 at most here, against the f16 rounding's ~1e-3). llama.cpp loads the
files through ``llama_cpp.Llama``. The slow test checks the demo adapter on the embedded
model: the same greedy tokens as the torch merged model on the held-out prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from limamono.cli import app
from limamono.core import format as fmt
from limamono.models.gguf_export import ExportError, export_gguf, quantize
from limamono.models.resolve import ModelError

REPO = Path(__file__).resolve().parents[1]
PROMPT = 'Mira looked up from the lamp. "Who\'s there?"\n\n### Response: (length = long)\nMira:'
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: The largest logit difference allowed between the f16 GGUF in llama.cpp and fp32 torch
#: (logits here reach 0.6-0.7). Measured: 0.0014 on the Llama model, 0.021 on the Mistral
#: one (f16 weights alone: 0.011; llama.cpp's f16 KV cache the rest). A q/k permutation
#: error or a lost LoRA moves them by more than 0.3.
TOLERANCE = 0.03


def make_adapter(model_dir: Path, out: Path, card: dict | None = None) -> Path:
    """A LoRA (r 4, alpha 8) on every linear projection with random B (PEFT starts B at 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.5)
    model.save_pretrained(out)
    if card is not None:
        (out / "limamono.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"),
                        {"format_version": fmt.FORMAT_VERSION, "trigger": "preset",
                         "stop_strings": ["###", "\n\n\n"]})


def torch_logits(model_dir: Path, adapter: Path | None, ids: list[int]) -> np.ndarray:
    import torch

    from limamono.models.resolve import load_model, resolve_model

    model, _ = load_model(resolve_model(str(model_dir)), adapter=adapter, dtype="fp32")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama(path: Path, lora: Path | None = None, logits: bool = True, n_ctx: int = 256):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None,
                           n_ctx=n_ctx, logits_all=logits, n_threads=1, verbose=False, seed=0)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    found = {key: field.contents() for key, field in reader.fields.items()
             if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                            "tokenizer.ggml.token_type", "tokenizer.ggml.scores")}
    found["tensors"] = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    found["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data) \
        if "tokenizer.ggml.tokens" in reader.fields else 0
    return found


# --------------------------------------------------------------------------- merged model

@pytest.fixture(scope="module")
def merged_f16(tiny_model_dir: Path, tiny_adapter: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    result = export_gguf(str(tiny_model_dir), str(tiny_adapter), out)
    assert (result.kind, result.quant, result.tensors) == ("model", "f16", 20)
    return out


def test_merged_f16_carries_template_stops_and_smollm2_tokenizer(merged_f16: Path) -> None:
    meta = fields(merged_f16)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.chat_template"] == fmt.chat_template("preset")
    assert meta["limamono.stop_strings"] == ["###", "\n\n\n"]
    assert (meta["limamono.trigger"], meta["limamono.format_version"]) == (
        "preset", fmt.FORMAT_VERSION)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    assert (meta["n_tokens"], meta["tokenizer.ggml.bos_token_id"],
            meta["tokenizer.ggml.eos_token_id"]) == (49152, 1, 2)
    assert (meta["llama.block_count"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.rope.dimension_count"]) == \
        (2, 4, 2, 8)
    # 2 layers x 9 tensors + token_embd + output_norm; the tied output matrix is not written.
    assert len(meta["tensors"]) == 20 and "output.weight" not in meta["tensors"]
    assert meta["tensors"]["blk.0.attn_k.weight"] == (32, 16)  # GGUF lists [in, out]


def test_merged_f16_gives_the_torch_logits(merged_f16: Path, tiny_model_dir: Path,
                                           tiny_adapter: Path, tokenizer) -> None:
    ids = tokenizer.encode(PROMPT)
    llm = llama(merged_f16)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids
    got, want = llama_logits(llm, ids), torch_logits(tiny_model_dir, tiny_adapter, ids)
    base = torch_logits(tiny_model_dir, None, ids)
    assert np.abs(want - base).max() > 0.3  # the adapter matters ...
    assert np.abs(got - want).max() < TOLERANCE  # ... and the GGUF has it
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_q4_k_m_loads_and_generates(tiny_model_dir: Path, tiny_adapter: Path,
                                    tmp_path: Path) -> None:
    out = tmp_path / "tiny-q4.gguf"
    result = export_gguf(str(tiny_model_dir), str(tiny_adapter), out, quant="q4_k_m",
                         threads=1)
    assert result.quant == "q4_k_m" and fields(out)["general.file_type"] == 15
    reply = llama(out, logits=False).create_completion(PROMPT, max_tokens=4, temperature=0)
    assert reply["usage"]["completion_tokens"] == 4
    assert not list(tmp_path.glob(".*"))  # no temp file left beside it
    # limamono's own llama.cpp engine runs the file too: the same greedy text.
    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    engine = load_engine(str(out), backend="llamacpp", threads=1, context_length=256)
    result = engine.generate(PROMPT, get_preset("greedy"), 4)
    assert result.text == reply["choices"][0]["text"]


# --------------------------------------------------------------------------- LoRA only

def test_lora_only_on_the_base_file_equals_the_merged_model(tiny_model_dir: Path,
                                                            tiny_adapter: Path,
                                                            tmp_path: Path, tokenizer) -> None:
    lora, base = tmp_path / "lora.gguf", tmp_path / "base.gguf"
    result = export_gguf(str(tiny_model_dir), str(tiny_adapter), lora, lora_only=True)
    assert (result.kind, result.tensors) == ("adapter", 2 * 7 * 2)
    export_gguf(str(tiny_model_dir), None, base)
    meta = fields(lora)
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == (
        "adapter", "lora", 8.0)
    assert meta["general.architecture"] == "llama" and meta["n_tokens"] == 0
    assert meta["tensors"]["blk.1.attn_q.weight.lora_a"] == (32, 4)  # A: [r, in], listed [in, r]
    assert meta["tensors"]["blk.1.ffn_down.weight.lora_b"] == (4, 32)  # B: [out, r]
    assert sorted(meta["tensors"]) == sorted(
        f"blk.{i}.{name}.weight.lora_{part}" for i in range(2) for part in "ab"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                     "ffn_down"))
    ids = tokenizer.encode(PROMPT)
    got = llama_logits(llama(base, lora=lora), ids)
    want = torch_logits(tiny_model_dir, tiny_adapter, ids)
    assert np.abs(got - want).max() < TOLERANCE


# --------------------------------------------------------------------------- SentencePiece

def test_mistral_sentencepiece_tokens_and_logits(tiny_mistral_dir: Path, tmp_path: Path,
                                                 mistral_tokenizer) -> None:
    from conftest import mistral_sentencepiece

    model_dir = tmp_path / "mistral"
    shutil.copytree(tiny_mistral_dir, model_dir)
    shutil.copy(mistral_sentencepiece(), model_dir / "tokenizer.model")
    adapter = make_adapter(model_dir, tmp_path / "adapter")
    out = tmp_path / "mistral.gguf"
    result = export_gguf(str(model_dir), str(adapter), out)
    assert result.tokenizer == "SentencePiece (tokenizer.model)" and result.tensors == 21
    meta = fields(out)
    assert (meta["tokenizer.ggml.model"], meta["n_tokens"],
            meta["tokenizer.ggml.add_bos_token"]) == ("llama", 32000, True)
    assert "output.weight" in meta["tensors"]  # Mistral does not tie its embeddings
    ids = mistral_tokenizer.encode(PROMPT)
    assert ids[0] == 1  # BOS
    llm = llama(out)
    assert llm.tokenize(PROMPT.encode(), add_bos=True, special=False) == ids
    got, want = llama_logits(llm, ids), torch_logits(model_dir, adapter, ids)
    assert np.abs(got - want).max() < TOLERANCE


def test_a_bpe_tokenizer_other_than_smollm2s_is_refused(tiny_mistral_dir: Path,
                                                        tmp_path: Path) -> None:
    # Without tokenizer.model the Mistral folder has only a BPE tokenizer.json.
    with pytest.raises(ExportError, match=r"neither SentencePiece .* nor SmolLM2's BPE"):
        export_gguf(str(tiny_mistral_dir), None, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- errors, CLI

def test_bad_requests_are_refused_before_any_work(tiny_model_dir: Path, tiny_adapter: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    with pytest.raises(ExportError, match=r"quant 'q3': unknown; fix: use one of f16, q8_0, "
                                          r"q4_k_m"):
        export_gguf(str(tiny_model_dir), str(tiny_adapter), out, quant="q3")
    with pytest.raises(ExportError, match=r"llama\.cpp does not quantize adapters"):
        export_gguf(str(tiny_model_dir), str(tiny_adapter), out, quant="q8_0", lora_only=True)
    with pytest.raises(ExportError, match="--lora-only needs --adapter DIR"):
        export_gguf(str(tiny_model_dir), None, out, lora_only=True)
    dora = tmp_path / "dora"
    shutil.copytree(tiny_adapter, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ModelError, match=r"use_dora cannot run in llama\.cpp as a plain LoRA"):
        export_gguf(str(tiny_model_dir), str(dora), out, lora_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dora"]


def test_cli_writes_the_file_and_refuses_to_overwrite(tiny_model_dir: Path, tiny_adapter: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "lora.gguf"
    args = ["export", "gguf", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter),
            "--lora-only", "-o", str(out)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"wrote {out} (LoRA adapter, 28 tensors, ")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and f"{out} exists; pass --force to replace it" in again.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


# --------------------------------------------------------------------------- embedded model

def held_out_prompts(n: int) -> list[str]:
    """The open prompts of the first ``n`` held-out conversations, shortened to the sheet's
    first line and the first paragraph of the first two messages (~1,300 tokens whole;
    llama.cpp reads f16 at a few dozen tokens a second on a busy CPU)."""
    from dataclasses import replace

    from limamono.core import conversation
    from limamono.core.policy import get_policy

    prompts = []
    for path in sorted((REPO / "examples" / "conversations").glob("*.yaml")):
        conv = conversation.load(path)[0]
        if conv.meta.get("split") == "eval":
            sheet = replace(conv.character, description=conv.character.description
                            .splitlines()[0])
            messages = [replace(m, text=m.text.split("\n\n")[0]) for m in conv.messages[:2]]
            short = replace(conv, character=sheet, messages=messages)
            prompts.append(get_policy("training", "card").render(short, open_response=True))
    assert len(prompts) >= n
    return prompts[:n]


@pytest.mark.slow
def test_demo_adapter_f16_gives_the_torch_greedy_tokens(tmp_path: Path) -> None:
    import torch

    from limamono.models.resolve import load_model, resolve_model

    out = tmp_path / "demo-f16.gguf"
    export_gguf("smollm2-135m", "demo", out)
    model, tokenizer = load_model(resolve_model("smollm2-135m"), adapter="demo", dtype="fp32",
                                  threads=1)
    llm = llama(out, logits=False, n_ctx=2048)
    for prompt in held_out_prompts(3):
        ids = tokenizer.encode(prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        llm.reset()
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(token)
            if len(got) == 6:
                break
        assert got == want[0, len(ids):].tolist(), prompt[-80:]
    q4 = tmp_path / "demo-q4.gguf"
    quantize(out, q4, "q4_k_m", threads=2)  # what export_gguf(quant="q4_k_m") does last
    reply = llama(q4, logits=False, n_ctx=2048).create_completion(
        held_out_prompts(1)[0], max_tokens=8, temperature=0)
    assert reply["usage"]["completion_tokens"] >= 1 and reply["choices"][0]["text"].strip()
