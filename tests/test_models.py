"""Model resolution and loading: cache paths, errors that name the path, LoRA adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from limamono.models import resolve as models
from limamono.models.resolve import ModelError, resolve_adapter, resolve_model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_limamono_home_prefers_env_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMAMONO_HOME", str(tmp_path / "a"))
    assert models.limamono_home() == tmp_path / "a"
    monkeypatch.delenv("LIMAMONO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.limamono_home() == tmp_path / "xdg" / "limamono"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.limamono_home() == Path.home() / ".cache" / "limamono"


def test_missing_folder_names_the_path_and_the_fix(home, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no such model folder") as info:
        resolve_model(str(missing))
    assert str(missing) in str(info.value)
    assert "limamono models" in str(info.value)


def test_a_folder_without_config_is_not_a_model(home, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"not an HF model folder \(no config.json\)") as info:
        resolve_model(str(folder))
    assert str(folder) in str(info.value)


def test_a_file_is_not_a_model_folder(home, tmp_path):
    file = tmp_path / "weights.gguf"
    file.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a file, not a model folder"):
        resolve_model(str(file))


def test_uncached_hub_id_says_no_network_and_how_to_download(home):
    with pytest.raises(ModelError, match="not in the local Hugging Face cache") as info:
        resolve_model("nobody-here/not-a-real-model-xyz")
    assert "huggingface-cli download nobody-here/not-a-real-model-xyz" in str(info.value)


def test_folders_under_home_are_listed_and_resolved_by_name(home, tiny_model_dir):
    shutil.copytree(tiny_model_dir, home / "models" / "tiny")
    spec = resolve_model("tiny")
    assert (spec.name, spec.path, spec.kind) == ("tiny", home / "models" / "tiny", "folder")
    listed = {info.name: info for info in models.list_models()}
    assert listed["tiny"].kind == "converted"
    assert listed["smollm2-135m"].state.startswith("not converted yet")


def test_a_failed_conversion_leaves_no_folder_behind(home, monkeypatch, tmp_path):
    import transformers

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    steps = []
    with pytest.raises(ModelError, match="cannot write the converted model"):
        models.convert_gguf(tmp_path / "x.gguf", home / "models" / "m",
                            lambda step, done, total: steps.append((done, total)))
    assert steps == [(0, 4)]
    assert list((home / "models").iterdir()) == []


def test_resolve_adapter_values(tmp_path):
    assert resolve_adapter(None) is None
    assert resolve_adapter("none") is None
    assert resolve_adapter("NONE") is None
    assert resolve_adapter(str(tmp_path)) == tmp_path
    # The repository's demo adapter (the checkout carries it): not None, which would mean
    # every `--adapter demo` default silently runs the bare model.
    demo = Path(__file__).resolve().parents[1] / models.DEMO_ADAPTER
    assert (demo / "adapter_config.json").is_file()
    assert resolve_adapter("demo") == demo


def cpu(capability: str, *flags: str) -> models.Hardware:
    return models.Hardware(False, False, capability, frozenset(flags))


@pytest.mark.parametrize(("hardware", "dtype", "reason"), [
    (models.Hardware(True, True, "AVX2", frozenset()), "bf16",
     "CUDA device with bf16 support"),
    (models.Hardware(True, False, "AVX512", frozenset({"amx_bf16"})), "fp16",
     "CUDA device without bf16 support"),
    (cpu("AVX512", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), "bf16",
     "CPU with native bf16 (amx_bf16, avx512_bf16; torch kernels AVX512)"),
    (cpu("AVX512", "avx512f", "avx512_bf16"), "bf16",
     "CPU with native bf16 (avx512_bf16; torch kernels AVX512)"),
    (cpu("AVX512", "avx512f", "avx512bw"), "fp32",
     "CPU without native bf16 (no amx_bf16 or avx512_bf16 flag; torch kernels AVX512): bf16 "
     "would be emulated, several times slower"),
    (cpu("AVX2", "avx2", "fma"), "fp32",
     "CPU without native bf16 (no amx_bf16 or avx512_bf16 flag; torch kernels AVX2): bf16 "
     "would be emulated, several times slower"),
    (cpu("AVX2", "avx2", "amx_bf16"), "fp32", "CPU has amx_bf16 but torch runs its AVX2 kernels"),
    (cpu("DEFAULT"), "fp32",
     "CPU without native bf16 (no amx_bf16 or avx512_bf16 flag; torch kernels DEFAULT): bf16 "
     "would be emulated, several times slower"),
])
def test_dtype_auto_picks_bf16_only_where_it_is_native(hardware, dtype, reason):
    assert models.choose_dtype("auto", hardware) == models.DtypeChoice(dtype, reason)


def test_explicit_dtypes_are_kept_and_unknown_ones_refused():
    import torch

    nothing = cpu("AVX2")
    assert models.choose_dtype("bf16", nothing) == models.DtypeChoice(
        "bf16", "asked for (--dtype bf16)")
    assert models.torch_dtype("fp32", nothing) is torch.float32
    assert models.torch_dtype("auto", nothing) is torch.float32
    assert models.torch_dtype("fp16", nothing) is torch.float16
    with pytest.raises(ModelError, match="dtype 'fp8': unknown; fix: use one of auto"):
        models.torch_dtype("fp8", nothing)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\n"
                                  "processor\t: 1\nflags\t\t: fpu\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert models.cpu_flags(tmp_path / "x86") == {"fpu", "avx2", "amx_bf16"}
    assert models.cpu_flags(tmp_path / "arm") == {"fp", "asimd", "bf16"}
    assert models.cpu_flags(tmp_path / "missing") == frozenset()


def test_models_command_says_which_dtype_auto_picks_and_why(home, monkeypatch):
    from typer.testing import CliRunner

    from limamono.cli import app

    monkeypatch.setattr(models, "detect_hardware", lambda: cpu("AVX2", "avx2"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert ("dtype auto: fp32: CPU without native bf16 (no amx_bf16 or avx512_bf16 flag; "
            "torch kernels AVX2): bf16 would be emulated, several times slower") in " ".join(
        result.output.split())


def test_load_model_threads_must_be_positive(tiny_model_dir):
    spec = resolve_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="threads=0"):
        models.load_model(spec, threads=0)


def test_load_tokenizer_needs_no_weights(tiny_model_dir, tmp_path):
    folder = tmp_path / "tok-only"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name.startswith("tokenizer") or item.name == "config.json":
            shutil.copy(item, folder / item.name)
    tokenizer = models.load_tokenizer(str(folder))
    assert (len(tokenizer), tokenizer.eos_token_id) == (49152, 2)
    assert tokenizer.decode(tokenizer.encode("Mira: hi", add_special_tokens=False)) == "Mira: hi"


def _save_lora(model, out: Path, base: str) -> Path:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)  # random B: the adapter changes the output
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base
    peft_model.save_pretrained(out)
    return out


def test_merged_adapter_gives_the_same_logits_as_the_peft_model(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapter = _save_lora(base, tmp_path / "adapter", str(tiny_model_dir))
    spec = resolve_model(str(tiny_model_dir))
    merged, _ = models.load_model(spec, adapter=str(adapter), dtype="fp32")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain_logits = fresh(torch.tensor([[5, 6, 7]])).logits
    reference = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        expected = reference(ids).logits
        got = merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain_logits, atol=1e-3)  # the adapter did something
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_adapter_for_another_base_names_the_adapter_and_the_fix(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # PEFT's save looks the base id up otherwise
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16,
                                         intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    adapter = _save_lora(other, tmp_path / "other-adapter", "some/other-base")
    spec = resolve_model(str(tiny_model_dir))
    with pytest.raises(ModelError) as info:
        models.load_model(spec, adapter=str(adapter), dtype="fp32")
    message = str(info.value)
    assert str(adapter) in message
    assert "does not fit model" in message and "'some/other-base'" in message
    assert "fix: pass --model with the base model" in message


def test_a_folder_without_adapter_config_is_not_an_adapter(tiny_model_dir, tmp_path):
    spec = resolve_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="not a PEFT adapter folder") as info:
        models.load_model(spec, adapter=str(tmp_path), dtype="fp32")
    assert str(tmp_path) in str(info.value)


@pytest.mark.slow
def test_embedded_model_converts_once_then_generates(home):
    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    steps: list[tuple[str, int]] = []
    engine = load_engine(progress=lambda step, done, total: steps.append((step, done)),
                         threads=2, backend="torch")
    assert [done for _, done in steps] == [0, 1, 2, 3, 4]
    folder = home / "models" / "smollm2-135m"
    marker = json.loads((folder / models.MARKER_FILE).read_text())
    assert marker["dtype"] == "bf16"
    assert (folder / "model.safetensors").stat().st_size > 250_000_000
    assert engine.context_length == 8192
    # dtype=auto follows the CPU (bf16 only with native bf16 kernels), so the expected
    # dtype is the one the loader's own rule picks on this machine.
    expected = {"bf16": "torch.bfloat16", "fp32": "torch.float32"}[models.choose_dtype().dtype]
    assert repr(engine.model.dtype) == expected
    reply = engine.generate("The capital of France is", get_preset("greedy"), 8)
    assert "Paris" in reply.text
    again: list[tuple[str, int]] = []
    assert resolve_model("smollm2-135m", progress=lambda *a: again.append(a)).path == folder
    assert again == []


def test_embedded_model_accepts_adapters_recorded_under_its_hub_id(tmp_path):
    from limamono.models.resolve import EMBEDDED_HUB_ID, ModelSpec, _same_base

    spec = ModelSpec("smollm2-135m", tmp_path / "smollm2-135m", "embedded")
    assert _same_base(EMBEDDED_HUB_ID, spec)
    assert _same_base(str(tmp_path / "smollm2-135m"), spec)
    assert not _same_base("mistralai/Mistral-7B-v0.1", spec)
