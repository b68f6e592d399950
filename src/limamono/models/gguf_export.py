"""Export a trained model as GGUF: the base with the LoRA merged in, or the LoRA alone.

``export_gguf`` merges a PEFT LoRA adapter into its base (:func:`.resolve.load_model`,
in fp32), writes the weights as an f16 GGUF with the ``gguf`` package's writer and tensor
names, and quantizes it with llama.cpp (``llama_model_quantize``) to ``q8_0`` or ``q4_k_m``.
The file carries the Limamono chat template (``limamono.core.format.chat_template`` with the
adapter's trigger) and the adapter card's stop strings, so it runs in llama.cpp and
KoboldCpp as it is. ``lora_only`` writes a GGUF LoRA adapter instead, for users who keep
the base file (the llama.cpp engine's converter, :mod:`limamono.models.gguf_lora`, plus the card's
metadata).

Facts taken from llama.cpp's converter (``convert_hf_to_gguf.py``; no code copied):
Llama/Mistral ``q_proj``/``k_proj`` rows are permuted from Hugging Face's rotate-half order
to llama.cpp's RoPE order (:func:`limamono.models.gguf_lora.permute_rope_rows`); norms stay F32;
a tied output matrix is not written (llama.cpp reuses ``token_embd``).

Tokenizers: SmolLM2's byte-level BPE (the embedded model's, or any model with exactly its
vocabulary) takes its ``tokenizer.ggml.*`` metadata from the embedded GGUF file, since
llama.cpp's pre-tokenizer name cannot be derived from the tokenizer files; a SentencePiece
tokenizer (Mistral, Llama 2) is read from the folder's ``tokenizer.model``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limamono.core import format as fmt
from limamono.models.gguf_lora import permute_rope_rows

if TYPE_CHECKING:
    import gguf
    import torch

#: ``--quant`` values and the llama.cpp file type each one asks ``llama_model_quantize`` for
#: (``LLAMA_FTYPE_MOSTLY_*`` in llama.h); f16 is written directly.
QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
#: HF ``model_type`` values written with llama.cpp's ``llama`` architecture.
LLAMA_TYPES = ("llama", "mistral")
#: Our own metadata keys (llama.cpp and KoboldCpp ignore keys they do not know).
KEY_STOPS = "limamono.stop_strings"
KEY_FORMAT = "limamono.format_version"
KEY_TRIGGER = "limamono.trigger"
KEY_SAMPLERS = "limamono.sampler_preset"

#: ``progress(step)``: one line per stage.
Progress = Callable[[str], None]


class ExportError(ValueError):
    """A model or adapter that cannot be exported; the message names the file and the fix."""


@dataclass(frozen=True)
class ExportResult:
    """What was written.

    Attributes:
        path: the GGUF file.
        kind: ``model`` or ``adapter``.
        quant: ``f16``, ``q8_0``, ``q4_k_m`` (``f32`` for an adapter's tensors).
        tensors: tensors in the file.
        tokenizer: where the tokenizer metadata came from (empty for an adapter).
    """

    path: Path
    kind: str
    quant: str
    tensors: int
    tokenizer: str


def export_gguf(model: str, adapter: str | os.PathLike[str] | None, output: Path,
                quant: str = "f16", lora_only: bool = False,
                progress: Progress | None = None, threads: int | None = None) -> ExportResult:
    """Write ``output``: the merged model (quantized as asked) or the LoRA adapter alone.

    Args:
        model: the base (``smollm2-135m``, an HF folder, a cached hub id).
        adapter: the PEFT LoRA folder (``demo`` for the bundled one); None exports the base.
        output: the ``.gguf`` file; written beside itself first and renamed at the end.
        quant: ``f16``, ``q8_0`` or ``q4_k_m`` (a LoRA adapter is always f32).
        lora_only: write a GGUF LoRA adapter to load on top of the base file.
        progress: receives one line per stage.
        threads: threads for llama.cpp's quantization (default: its own choice).

    Raises:
        ExportError: unknown quant, unsupported architecture or tokenizer, bad adapter.
        ModelError: the base model or the adapter cannot be loaded.
    """
    from limamono.models.resolve import resolve_adapter, resolve_model

    say = progress or (lambda line: None)
    if quant not in QUANTS:
        raise ExportError(f"quant {quant!r}: unknown; fix: use one of {', '.join(QUANTS)}")
    adapter_dir = resolve_adapter(adapter)
    if lora_only and quant != "f16":
        raise ExportError(f"--lora-only with --quant {quant}: llama.cpp does not quantize "
                          "adapters; fix: leave --quant out (the adapter is written in f32)")
    if lora_only and adapter_dir is None:
        raise ExportError("--lora-only needs --adapter DIR (the PEFT adapter to convert)")
    spec = resolve_model(model)
    config = _llama_config(spec.path)
    with _atomic_output(output) as tmp:
        if lora_only:
            assert adapter_dir is not None
            say(f"converting the LoRA adapter {adapter_dir}")
            count = write_lora_gguf(adapter_dir, config, tmp)
            result = ExportResult(output, "adapter", "f32", count, "")
        else:
            say(f"merging {adapter_dir or 'no adapter'} into {spec.name} (fp32)")
            state, tokenizer_dir = _merged_state(spec, adapter_dir)
            f16 = tmp if quant == "f16" else tmp.with_name(tmp.name + ".f16")
            say("writing the f16 GGUF")
            count, source = write_model_gguf(state, config, tokenizer_dir, spec.name,
                                             adapter_dir, f16)
            if quant != "f16":
                say(f"quantizing to {quant} with llama.cpp")
                try:
                    quantize(f16, tmp, quant, threads)
                finally:
                    f16.unlink(missing_ok=True)
            result = ExportResult(output, "model", quant, count, source)
    return result


# --------------------------------------------------------------------------- the model

def _llama_config(folder: Path) -> dict[str, Any]:
    """The base model's ``config.json``, checked to be one llama.cpp's ``llama`` arch runs."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None
    kind = config.get("model_type")
    if kind not in LLAMA_TYPES:
        raise ExportError(f"{path}: model_type {kind!r} is not exported yet; fix: export a "
                          f"{' or '.join(LLAMA_TYPES)} model (the embedded SmolLM2 is one)")
    # A Mistral sliding window (4096 on 7B v0.1) is not written: llama.cpp's own converter
    # leaves it out too, and attention is the same up to that many tokens.
    return config


def _merged_state(spec: Any, adapter_dir: Path | None) -> tuple[dict[str, torch.Tensor], Path]:
    """The merged fp32 weights and the folder holding the tokenizer files."""
    from limamono.models.resolve import load_model

    model, _ = load_model(spec, adapter=adapter_dir, dtype="fp32")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return state, spec.path


def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    if scaling.get("rope_type", "default") not in ("default", None) or \
            scaling.get("type") not in (None, "default"):
        raise ExportError(f"rope scaling {scaling!r} is not exported yet; fix: export a model "
                          "with plain RoPE")
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _gguf_name(name_map: gguf.TensorNameMap, hf_name: str) -> str:
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ExportError(f"tensor {hf_name!r} has no llama.cpp name; fix: export a plain "
                          "Llama/Mistral model (no extra modules)")
    return mapped


def _heads_for(hf_name: str, config: dict[str, Any]) -> int | None:
    """How many heads to permute a q/k tensor over (None: not a q/k projection)."""
    if ".q_proj." in hf_name:
        return int(config["num_attention_heads"])
    if ".k_proj." in hf_name:
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def write_model_gguf(state: dict[str, torch.Tensor], config: dict[str, Any],
                     tokenizer_dir: Path, name: str, adapter_dir: Path | None,
                     path: Path) -> tuple[int, str]:
    """Write ``state`` (HF names, fp32) as an f16 GGUF with metadata and tokenizer.

    Returns:
        ``(tensors written, where the tokenizer metadata came from)``.
    """
    import gguf
    import numpy as np

    layers = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_model_metadata(writer, config, name)
    source = _add_tokenizer(writer, tokenizer_dir, int(config["vocab_size"]))
    _add_limamono_metadata(writer, adapter_dir, with_template=True)
    count = 0
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp falls back to token_embd for a missing output matrix
        heads = _heads_for(hf_name, config)
        data = permute_rope_rows(tensor, heads) if heads else tensor
        array = data.float().numpy()
        # Norms (1-D) stay F32 as llama.cpp's converter keeps them; matrices go to f16.
        array = array.astype(np.float32 if array.ndim == 1 else np.float16)
        writer.add_tensor(_gguf_name(name_map, hf_name), array)
        count += 1
    _finish(writer)
    return count, source


def _add_model_metadata(writer: gguf.GGUFWriter, config: dict[str, Any], name: str) -> None:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    writer.add_name(Path(name).name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(QUANTS["f16"])


def _add_limamono_metadata(writer: gguf.GGUFWriter, adapter_dir: Path | None,
                           with_template: bool) -> None:
    """The chat template and the adapter card's stop strings, trigger and samplers."""
    from limamono.models.adapter_card import read_card

    card = read_card(adapter_dir)
    trigger = card.trigger if card else fmt.DEFAULT_TRIGGER
    if with_template:
        writer.add_chat_template(fmt.chat_template(trigger))
    writer.add_string(KEY_FORMAT, fmt.FORMAT_VERSION)
    writer.add_string(KEY_TRIGGER, trigger)
    # The user's line ("\nName:") is a stop string too; its name is the client's to fill.
    writer.add_array(KEY_STOPS, list(card.stop_strings if card else (fmt.HEADER_STOP,)))
    if card is not None:
        values = card.sampler_values or {}
        writer.add_string(KEY_SAMPLERS, json.dumps({"name": card.preset, "values": values}))


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --------------------------------------------------------------------------- tokenizers

def _add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> str:
    """Tokenizer metadata for the model in ``folder``; returns where it came from."""
    if (folder / "tokenizer.model").is_file():
        return _add_sentencepiece(writer, folder, vocab_size)
    embedded = _embedded_tokenizer_fields()
    tokens = embedded["tokenizer.ggml.tokens"][0]
    if _hf_vocab(folder) == tokens:
        for key, (value, vtype, sub_type) in embedded.items():
            if key != "tokenizer.chat_template":  # ours replaces SmolLM2's
                writer.add_key_value(key, value, vtype, sub_type)
        return "SmolLM2 BPE (from the embedded GGUF)"
    raise ExportError(f"{folder}: the tokenizer is neither SentencePiece (no tokenizer.model) "
                      "nor SmolLM2's BPE, and llama.cpp's pre-tokenizer for it cannot be "
                      "chosen here; fix: copy tokenizer.model into the folder if the model "
                      "has one, or convert with llama.cpp's convert_hf_to_gguf.py")


def _hf_vocab(folder: Path) -> list[str] | None:
    """The tokens of ``folder``'s tokenizer in id order (None: unreadable)."""
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    vocab = dict(data.get("model", {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        return None
    return [token for token, _ in ordered]


def _embedded_tokenizer_fields() -> dict[str, tuple[Any, Any, Any]]:
    """``tokenizer.*`` keys of the embedded GGUF: ``key -> (value, type, array type)``."""
    import gguf

    from limamono.models.resolve import embedded_gguf

    reader = gguf.GGUFReader(str(embedded_gguf()))
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
            fields[key] = (field.contents(), vtype, sub)
    return fields


def _add_sentencepiece(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> str:
    import gguf

    vocab = gguf.SentencePieceVocab(folder)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    if len(tokens) != vocab_size:
        raise ExportError(f"{folder}: tokenizer.model has {len(tokens)} tokens, config.json "
                          f"says vocab_size {vocab_size}; fix: use the tokenizer the model was "
                          "trained with")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    special.chat_template = None  # ours is written instead
    special.add_to_gguf(writer, quiet=True)
    return "SentencePiece (tokenizer.model)"


# --------------------------------------------------------------------------- LoRA only

def write_lora_gguf(adapter_dir: Path, config: dict[str, Any], path: Path) -> int:
    """Write a PEFT LoRA adapter as a llama.cpp GGUF LoRA (:mod:`limamono.models.gguf_lora`, the
    llama.cpp engine's converter) with the card's metadata; returns the tensor count."""
    from limamono.models.gguf_lora import write_lora

    heads = int(config["num_attention_heads"])
    return write_lora(adapter_dir, path, "llama", heads,
                      int(config.get("num_key_value_heads") or heads),
                      metadata=lambda writer: _add_limamono_metadata(writer, adapter_dir,
                                                                     with_template=False))


# --------------------------------------------------------------------------- quantize, files

def quantize(source: Path, target: Path, quant: str, threads: int | None = None) -> None:
    """Quantize an f16 GGUF with llama.cpp (its log goes to the engine's log buffer)."""
    import ctypes

    from limamono.models import llama_lib

    lib = llama_lib.load()
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = threads or 0
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(),
                                      ctypes.byref(params))
    if status != 0:
        raise ExportError(f"{source}: llama.cpp could not quantize it to {quant} (status "
                          f"{status}); fix: try --quant q8_0 or f16")


#: The type the llama.cpp engine runs the embedded model in (``LLAMA_FTYPE_MOSTLY_Q8_0``).
#: The package ships Q4_1, which llama.cpp multiplies with its generic dot products only;
#: Q8_0 has the tiled matrix kernels (llamafile's sgemm), so a cold prompt reads faster
#: (docs/BENCHMARKS.md, "Cold prompts": 0.44-0.81x the time to the first token, 1 thread).
#: Re-quantizing the Q4_1 weights to 8 bits adds next-token KL of 0.007 nats on average
#: (0.024 at most, same top token at 20 of 20 positions of README.md).
EMBEDDED_RUN_TYPE, EMBEDDED_RUN_FTYPE = "q8_0", 7


def embedded_run_gguf(progress: Progress | None = None) -> Path:
    """The embedded model as the llama.cpp engine runs it: the shipped Q4_1 GGUF
    re-quantized once to :data:`EMBEDDED_RUN_TYPE` into ``$LIMAMONO_HOME/models`` (a few
    seconds; written beside and renamed, so never half a file), keyed by the shipped file's
    size and modification time.

    Raises:
        limamono.models.resolve.ModelError: llama.cpp could not re-quantize it.
    """
    import ctypes

    from limamono.models import llama_lib
    from limamono.models.resolve import ModelError, embedded_gguf, limamono_home

    source = embedded_gguf()
    stat = source.stat()
    target = (limamono_home() / "models" / f"{source.stem}.{EMBEDDED_RUN_TYPE}-"
              f"{stat.st_size:x}-{int(stat.st_mtime):x}.gguf")
    if target.is_file():
        return target
    if progress is not None:
        progress(f"re-quantizing the embedded model to {EMBEDDED_RUN_TYPE} (once)")
    lib = llama_lib.load()
    params = lib.llama_model_quantize_default_params()
    params.ftype = EMBEDDED_RUN_FTYPE
    params.allow_requantize = True  # from Q4_1: every 8-bit block holds its 4-bit values
    params.nthread = 0
    with _atomic_output(target) as tmp:
        status = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                          ctypes.byref(params))
        if status != 0:
            raise ModelError(f"{source}: llama.cpp could not re-quantize it to "
                             f"{EMBEDDED_RUN_TYPE} (status {status}); fix: pass --model "
                             f"{source} to run the shipped file")
    return target


@contextmanager
def _atomic_output(output: Path) -> Iterator[Path]:
    """A temp path beside ``output``, renamed to it when the block succeeds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
