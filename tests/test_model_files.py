"""Model and adapter files (issue 24, defects 9, 17, 18): the GGUF LoRA cache keyed on all
that shapes the converted file, GGUF metadata bounds checked before llama.cpp loads a
file, and bad adapters refused with one clean error naming the file."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from limamono.models.resolve import ModelError, check_adapter_files, embedded_gguf

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "adapters" / "demo"
HOSTILE = REPO / "tests" / "assets" / "hostile"


def _demo_copy(folder: Path, **config: object) -> Path:
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(DEMO / name, folder / name)
    if config:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


# --------------------------------------------------------------------------- defect 9

def test_repro_09_editing_lora_alpha_converts_again(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's stale cache: the same folder name and weights, lora_alpha 16 -> 0."""
    import gguf

    from limamono.models.gguf_lora import gguf_lora_for

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "home"))
    adapter = _demo_copy(tmp_path / "alpha_test")

    def alpha(path: Path) -> float:
        field = gguf.GGUFReader(str(path)).get_field("adapter.lora.alpha")
        assert field is not None
        return float(field.contents())

    first = gguf_lora_for(adapter, embedded_gguf())
    assert alpha(first) == 16.0
    for value, expected in ((0, 0.0), (32, 32.0)):
        path = adapter / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "lora_alpha": value}))
        again = gguf_lora_for(adapter, embedded_gguf())
        assert again != first and alpha(again) == expected
    # use_rslora shapes the file too (alpha * sqrt(r))
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_rslora": True}))
    assert alpha(gguf_lora_for(adapter, embedded_gguf())) == pytest.approx(32.0 * 8 ** 0.5)
    assert len(list((tmp_path / "home" / "lora").iterdir())) == 4


def test_the_cache_key_covers_config_weights_and_the_base_shape(tmp_path: Path) -> None:
    from limamono.models.gguf_lora import BaseInfo, cache_key

    adapter = _demo_copy(tmp_path / "a")
    base = BaseInfo("llama", 9, 3, {}, ("smollm2", "135M"))
    key = cache_key(adapter, base)
    assert key == cache_key(adapter, base) and len(key) == 64
    assert cache_key(adapter, BaseInfo("llama", 9, 9, {}, ())) != key  # permutation differs
    (adapter / "adapter_config.json").write_text(
        (adapter / "adapter_config.json").read_text() + " ")
    assert cache_key(adapter, base) != key  # any byte of the config


# --------------------------------------------------------------------------- defect 17

def _patched_copy(tmp_path: Path, key: str, value: int) -> Path:
    """The audit's reproduction: the embedded GGUF with one uint32 metadata value
    overwritten in place (found by its key: length, bytes, then value type 4 = uint32)."""
    import struct

    out = tmp_path / f"{key}.gguf"
    shutil.copy(embedded_gguf(), out)
    with open(out, "r+b") as handle:
        head = handle.read(1 << 20)
        tag = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", 4)
        at = head.index(tag) + len(tag)
        handle.seek(at)
        handle.write(struct.pack("<I", value))
    return out


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("llama.block_count", 2**31 - 1, "llama.block_count = 2147483647 is out of bounds"),
    ("llama.context_length", 2**31, "llama.context_length = 2147483648 is out of bounds"),
    ("llama.block_count", 29, "llama.block_count = 29 does not match the 30 layers"),
    ("llama.attention.head_count_kv", 2, "llama.attention.head_count_kv = 2 does not divide"),
])
def test_repro_16_absurd_metadata_is_refused_before_llamacpp(key: str, value: int,
                                                             reason: str,
                                                             tmp_path: Path) -> None:
    from limamono.cli import app

    path = _patched_copy(tmp_path, key, value)
    done = CliRunner().invoke(app, ["generate", "-p", "Hello", "-n", "2", "--adapter", "none",
                                    "--model", str(path)])
    assert done.exit_code == 2, done.output
    assert done.output.startswith(f"error: {path}: metadata {reason}"), done.output
    assert done.output.count("\n") == 1


def test_the_header_reader_agrees_with_the_gguf_package(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from limamono.models.gguf_header import KEEP_ARRAY, SkippedArray, read_header

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("x.flag", True)
    writer.add_int64("x.big", -(2**40))
    writer.add_string("general.name", "tiny é")
    writer.add_array("x.heads", [4, 4, 2])
    writer.add_array("x.long", list(range(KEEP_ARRAY + 1)))
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((3, 8), np.float32))
    writer.add_tensor("blk.1.attn_q.weight", np.zeros((8,), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    reader = gguf.GGUFReader(str(path))
    assert {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors} == header.tensors
    assert header.tensors == {"blk.0.attn_q.weight": (8, 3), "blk.1.attn_q.weight": (8,)}
    assert set(header.metadata) == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, value in header.metadata.items():
        if isinstance(value, SkippedArray):
            assert len(reader.fields[key].data) == value.length
        else:
            assert reader.fields[key].contents() == value, key
    assert header.metadata["x.long"] == SkippedArray(5, KEEP_ARRAY + 1)  # int32
    assert header.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 3)
    assert header.metadata["x.heads"] == [4, 4, 2] and header.metadata["x.big"] == -(2**40)
    embedded = read_header(embedded_gguf())
    assert embedded.metadata["llama.block_count"] == 30 and len(embedded.tensors) == 272
    assert embedded.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 49152)


@pytest.mark.parametrize("data", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16,
                                  b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") * 2
                                  + b"\xff" * 8, b"GGML" + b"\x00" * 40])
def test_the_header_reader_refuses_damaged_headers(data: bytes, tmp_path: Path) -> None:
    from limamono.models.gguf_header import GGUFHeaderError, read_header

    (tmp_path / "x.gguf").write_bytes(data)
    with pytest.raises(GGUFHeaderError):
        read_header(tmp_path / "x.gguf")


# --------------------------------------------------------------------------- defect 18

@pytest.mark.parametrize(("name", "reason"), [
    ("prefix_tuning", "peft_type 'PREFIX_TUNING' is not supported"),
    ("safetensors_claims_1e12", "not a whole safetensors file"),
    ("safetensors_header_1e12", "header too large"),
    ("config_not_object", "expected a JSON object, got list"),
])
def test_bad_adapters_are_refused_before_loading(name: str, reason: str) -> None:
    with pytest.raises(ModelError, match=reason):
        check_adapter_files(HOSTILE / "adapters" / name)


def test_a_pickle_adapter_is_refused_on_torch_without_running_it(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from limamono.cli import app

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(tmp_path / "PWNED"),))

    adapter = tmp_path / "ad_pickle"
    adapter.mkdir()
    shutil.copy(DEMO / "adapter_config.json", adapter)
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    done = CliRunner().invoke(app, ["generate", "-p", "Hi", "-n", "1", "--model",
                                    str(tiny_model_dir), "--adapter", str(adapter)])
    assert done.exit_code == 2, done.output
    assert done.output.startswith(f"error: {adapter / 'adapter_model.bin'}: refused: this "
                                  "pickle holds more than tensors"), done.output
    assert not (tmp_path / "PWNED").exists()


def _tiny_lora(tmp_path: Path, model_dir: Path, base_name: str) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "tiny_lora"
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config,
                                                         "base_model_name_or_path": base_name}))
    return out


def test_a_lora_of_another_shape_names_the_adapter_and_tensor_on_llamacpp(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from limamono.models.gguf_lora import gguf_lora_for

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "home"))
    adapter = _tiny_lora(tmp_path, tiny_model_dir, "HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ModelError) as caught:
        gguf_lora_for(adapter, embedded_gguf())
    assert str(caught.value) == (
        f"{adapter}: tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight "
        "(shape [4, 32]: its 32 inputs do not match 576) does not fit "
        "SmolLM2-135M-Instruct.Q4_1.gguf; the adapter was trained for another model; fix: "
        "pass --model with its base model, or train an adapter for this one")
    assert not (tmp_path / "home" / "lora").exists()  # nothing converted


def test_an_adapter_recorded_for_another_base_warns_on_both_backends(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from limamono.models.gguf_lora import gguf_lora_for
    from limamono.models.resolve import load_model, resolve_model

    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "home"))
    other = _demo_copy(tmp_path / "other", base_model_name_or_path="mistralai/Mistral-7B-v0.1")
    with pytest.warns(UserWarning, match=r"trained on 'mistralai/Mistral-7B-v0.1', applied "
                      r"to SmolLM2-135M-Instruct.Q4_1.gguf \(smollm2 135M\); the shapes fit"):
        gguf_lora_for(other, embedded_gguf())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gguf_lora_for(DEMO, embedded_gguf())  # its own base: no warning
    tiny = _tiny_lora(tmp_path, tiny_model_dir, "mistralai/Mistral-7B-v0.1")
    with pytest.warns(UserWarning, match=r"trained on 'mistralai/Mistral-7B-v0.1', loaded "
                      r"onto .*; the shapes fit"):
        load_model(resolve_model(str(tiny_model_dir)), adapter=str(tiny), dtype="fp32")


def test_shapes_that_cannot_match_are_refused_on_torch(tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    from limamono.models.resolve import load_model, resolve_model

    adapter = _demo_copy(tmp_path / "demo")  # SmolLM2-135M's LoRA on a hidden-32 model
    with pytest.raises(ModelError, match=r"this adapter does not fit model .* \(it was trained "
                       r"on 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        load_model(resolve_model(str(tiny_model_dir)), adapter=str(adapter), dtype="fp32")

