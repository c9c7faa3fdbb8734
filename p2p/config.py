"""Typed configuration, loaded from params.yaml.

params.yaml holds base sections plus named presets; `load_config` deep-merges the chosen preset over the base and
validates the result, so a typo in params.yaml is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2p.io import InputError, read_text
from p2p.methods import CONFIGURABLE

log = logging.getLogger(__name__)

DATASETS = ("synth", "lamp", "longlamp", "p2p_data", "personal_reddit", "empathetic_conversations")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    tasks: list[str] = Field(min_length=1)


class SynthConfig(_Strict):
    users: int = Field(gt=0)
    # per user: a fixed count, or [fewest, most] to draw each user's count from (Fig. 5 needs a spread)
    history_items: Annotated[int, Field(gt=0)] | Annotated[list[Annotated[int, Field(gt=0)]],
                                                           Field(min_length=2, max_length=2)]
    queries_per_user: int = Field(gt=0)

    @field_validator("history_items")
    @classmethod
    def _ordered(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and value[0] > value[1]:
            raise ValueError(f"a range [fewest, most] needs fewest <= most, got {value}")
        return value


class DataConfig(_Strict):
    raw_dir: Path
    prepared_dir: Path
    sources: list[SourceConfig] = Field(min_length=1)  # none would make every per-task stage a silent no-op
    synth: SynthConfig
    queries_per_user: int | None = Field(default=None, gt=0)

    def tasks(self) -> list[tuple[str, str]]:
        """Every configured (dataset, task) pair, in params order: what each per-task stage loops over."""
        return [(source.dataset, task) for source in self.sources for task in source.tasks]


class SummarizeConfig(_Strict):
    dir: Path
    cache: Path
    max_new_tokens: int = Field(gt=0)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_item_chars: int = Field(gt=0)
    history_token_budget: int = Field(gt=0)


class EmbedConfig(_Strict):
    dir: Path
    cache: Path
    batch_size: int = Field(gt=0)
    instruction: bool
    pooling: Literal["text", "sections"]


class SplitConfig(_Strict):
    dir: Path
    test_users: int = Field(gt=0)
    small_population: int = Field(gt=0)
    test_fraction: float = Field(gt=0, lt=1)
    min_cluster_size: int = Field(ge=1)
    n_init_search: int = Field(ge=1)
    n_init_final: int = Field(ge=1)
    history_bins: int = Field(ge=1)
    embedder: Literal["profile", "tfidf"]
    # profile: the full profile (summary, label histogram, `retrieval_k` items) embedded by `profile_model`: fixed
    # here, so the ablations of the profile, of its k and of the P2P embedder (Tables 4-5, Fig. 6) share the splits
    profile_model: str
    retrieval_k: int = Field(ge=0)
    embedding_dim: int = Field(gt=1)
    # synthetic benchmark, per task: the planted preferences of this many users of each test split leave training
    holdout_preferences: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class ProfileConfig(_Strict):
    retrieval_k: int = Field(ge=0)
    variant: Literal["full", "summary_only", "retrieved_only", "full_history_only", "random", "shuffled"]


class ModelConfig(_Strict):
    base_llm: str
    embedder: str
    embedder_kind: Literal["sentence", "last_layer"]
    cache_dir: Path
    device: str
    # auto: bf16 autocast on a GPU and on a CPU with native bf16 (AMX, AVX512-BF16), else fp32 (p2p.models.precision)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class OpenAIConfig(_Strict):
    base_url: str
    model: str | None
    api_key_env: str
    concurrency: int = Field(gt=0)
    timeout: float = Field(gt=0)
    retries: int = Field(ge=1)
    # Evaluation's adapter methods on a vLLM server (p2p.vllm_client): where the adapters are exported here,
    # and where the server reads that directory (None: the same path, e.g. a shared disk).
    adapter_dir: Path = Path(".cache/served_adapters")
    lora_dir_on_server: str | None = None


class GenerationConfig(_Strict):
    backend: Literal["transformers", "openai"]
    batch_size: int = Field(gt=0)
    openai: OpenAIConfig


class LoraConfig(_Strict):
    targets: list[str] = Field(min_length=1)
    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)


class HyperConfig(_Strict):
    latent: int = Field(gt=0, multiple_of=4)
    head_in: int = Field(gt=0)
    blocks: int = Field(ge=0)
    dropout: float = Field(ge=0, lt=1)
    architecture: Literal["ours", "released"] = "ours"  # released: the authors' module (docs/paper-preset.md)
    standardize_inputs: bool = True  # per-coordinate mean/std of the training embeddings (the authors: off)


class TrainConfig(_Strict):
    dir: Path
    checkpoints: Path
    steps: int = Field(gt=0)
    tasks_per_batch: int = Field(gt=0)
    samples_per_task: int = Field(gt=0)
    grad_accum: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup: float = Field(ge=0, le=1)
    schedule: Literal["linear", "hf_linear"] = "linear"  # hf_linear: transformers' linear schedule (the authors')
    grad_clip: float = Field(gt=0)
    label_smoothing: float = Field(ge=0, lt=1)
    l2_adapters: float = Field(ge=0)
    neftune_alpha: float = Field(ge=0)
    max_length: int = Field(gt=8)
    loss: Literal["completion", "causal_lm"]
    min_samples_per_task: int = Field(ge=0)
    checkpoint_every: int = Field(gt=0)
    gradient_checkpointing: bool = False  # recompute the base model's layers in backward (GPU memory for time)
    processes: int = Field(default=1, gt=0)  # data-parallel processes the train stage launches (torchrun)
    user_fraction: float = Field(gt=0, le=1)
    cluster_fraction: float = Field(gt=0, le=1)
    max_users: int | None = Field(default=None, gt=0)  # Fig. 3 diversity: at most this many users (matched counts)
    seed: int | None = None  # the training stages' randomness (train, mt_lora, oppu); None: the top-level `seed`


class MtLoraConfig(_Strict):
    """MT-LoRA trains with every `train` setting (steps, batches, regularisers, schedule) but its learning rate."""

    dir: Path
    lr: float = Field(gt=0)
    checkpoint_every: int = Field(gt=0)


class OppuConfig(_Strict):
    dir: Path
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    grad_accum: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup: float = Field(ge=0, le=1)
    schedule: Literal["linear", "hf_linear"] = "linear"
    grad_clip: float = Field(gt=0)
    loss: Literal["completion", "causal_lm"]
    max_length: int = Field(gt=8)
    parallel_users: int = Field(gt=0)  # users whose LoRAs train together in one batch (rows: x batch_size)




class AnswerTokens(_Strict):
    """New tokens per generated answer, by task kind: a budget that never looks at the answers being scored."""

    classification: int = Field(gt=0)
    rating: int = Field(gt=0)
    generation: int = Field(gt=0)
    open_ended: int = Field(gt=0)


class EvaluateConfig(_Strict):
    dir: Path
    splits: list[Literal["random_test", "ood_test"]] = Field(min_length=1)
    methods: list[Literal[CONFIGURABLE]] = Field(min_length=1)  # type: ignore[valid-type]
    retrieval_k: int = Field(ge=0)
    context_tokens: int = Field(gt=0)
    answer_tokens: AnswerTokens
    history_buckets: int = Field(gt=0)
    bootstrap_resamples: int = Field(ge=1)  # user-cluster resamples behind every 95% interval
    bootstrap_seed: int


class JudgeConfig(_Strict):
    dir: Path
    base_url: str | None
    model: str | None
    api_key_env: str
    local_model: str | None
    methods: list[Literal[CONFIGURABLE]] = Field(min_length=1)  # type: ignore[valid-type]
    temperature: float = Field(ge=0)
    max_new_tokens: int = Field(gt=0)
    concurrency: int = Field(gt=0)
    timeout: float = Field(gt=0)
    retries: int = Field(ge=1)
    unparsable_retries: int = Field(ge=0)
    forced_choice: bool = False
    cache: Path


class NoiseConfig(_Strict):
    scale: float = Field(ge=0)  # per coordinate (p2p.profiles.noise); 0: off
    clip: float = Field(gt=0)  # L2 norm, in units of sqrt(dim)


class PrivacyConfig(_Strict):
    noise: NoiseConfig  # the defence P2P deploys: evaluate_p2p, `p2p serve` and `p2p personalize` apply it
    sweep: list[float] = Field(min_length=1)  # noise scales the privacy stage audits (each with P2P's OOD accuracy)
    delta: float = Field(gt=0, lt=1)  # of the (epsilon, delta) the report gives each scale
    sketch_width: int = Field(gt=0)  # adapter features: width^2 numbers per layer and module (p2p.privacy.attacks)
    members_per_user: int = Field(gt=0)  # membership: history items per audited user (and as many non-members)
    resamples: int = Field(gt=0)  # user-bootstrap resamples of every interval


class ReportConfig(_Strict):
    dir: Path  # every stage's human-readable report goes in a folder under it (reports/splits, reports/eval, ...)


class TrackingConfig(_Strict):
    uri: str
    experiment: str


class Config(_Strict):
    preset: str  # any preset params.yaml defines (load_config checks the name)
    seed: int
    data: DataConfig
    summarize: SummarizeConfig
    embed: EmbedConfig
    split: SplitConfig
    profile: ProfileConfig
    model: ModelConfig
    generation: GenerationConfig
    lora: LoraConfig
    hyper: HyperConfig
    train: TrainConfig
    mt_lora: MtLoraConfig
    oppu: OppuConfig
    evaluate: EvaluateConfig
    judge: JudgeConfig
    privacy: PrivacyConfig
    report: ReportConfig
    tracking: TrackingConfig

    @property
    def train_seed(self) -> int:
        """The seed of what the training stages draw (initialisation, batches, dropout, noise): `train.seed`, else
        `seed`. Data, summaries and splits follow `seed` alone, so seeds of training share the test users."""
        return self.seed if self.train.seed is None else self.train.seed

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for logging params to MLflow."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return base with override merged in; dicts merge recursively, everything else (lists too) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_params_path() -> Path:
    return Path(os.environ.get("P2P_PARAMS", "params.yaml"))


class _ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads params.yaml (1.2 floats: `1e-4` is a number, not a string), refusing a key given twice
    (YAML itself keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own construct_mapping reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}', first at line {first}",
                                                        key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_ParamsLoader.add_implicit_resolver(  # YAML 1.2's float forms that YAML 1.1 reads as strings (no dot: 1e-4, 2E+3)
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _read_params(path: Path) -> dict[str, Any]:
    """params.yaml as a mapping; bad YAML and wrong shapes are InputErrors naming the file (and line)."""
    try:
        raw = yaml.load(read_text(path), Loader=_ParamsLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        what = "; ".join(str(part) for part in (getattr(err, "context", None), getattr(err, "problem", None)) if part)
        raise InputError(path, f"not valid YAML ({what or err})",
                         record=None if mark is None else f"line {mark.line + 1}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(path, f"expected a mapping of sections, got a {type(raw).__name__}")
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise InputError(path, f"expected a mapping of preset names to overrides, got a {type(presets).__name__}",
                         field="presets")
    for name, override in presets.items():
        if override is not None and not isinstance(override, dict):
            raise InputError(path, f"expected a mapping of overrides, got a {type(override).__name__}",
                             field=f"presets.{name}")
    return raw


#: Settings renamed, still read under their old name for one release: (section, old key) -> new key.
RENAMED = {("hyper", "layout"): "architecture"}
#: Settings removed, still accepted (and ignored) for one release: (section, key) -> what replaces them.
REMOVED = {("train", "check"): "the evaluate stages score P2P, its shuffled control and the base model on the "
                               "test users (`dvc repro evaluate_p2p evaluate_p2p_shuffled evaluate_base`)",
           ("train", "eval_max_new_tokens"): "the evaluate stages' answer budget is evaluate.answer_tokens"}


def _renamed(params: dict[str, Any], where: str) -> dict[str, Any]:
    """`params` (the file's sections, or a preset's overrides) with each renamed setting under its new key, and one
    warning line for each old key found."""
    out = dict(params)
    for (section, old), new in RENAMED.items():
        values = out.get(section)
        if not isinstance(values, dict) or old not in values:
            continue
        if new in values:
            raise ValueError(f"{where}: {section}.{old} is the old name of {section}.{new}; set only {section}.{new}")
        log.warning("%s: %s.%s is now called %s.%s; read as %s.%s (rename it: the old name goes in the next release)",
                    where, section, old, section, new, section, new)
        out[section] = {(new if key == old else key): value for key, value in values.items()}
    for (section, key), instead in REMOVED.items():
        values = out.get(section)
        if isinstance(values, dict) and key in values:
            log.warning("%s: %s.%s is no longer a setting and is ignored (%s); delete it: it is refused from the "
                        "next release", where, section, key, instead)
            out[section] = {k: v for k, v in values.items() if k != key}
    return out


def load_config(path: str | os.PathLike | None = None, preset: str | None = None) -> Config:
    """Load params.yaml, apply the preset (argument, else the file's `preset` key) and validate.

    Validation is strict on the settings' JSON form: YAML's `true` is not the integer 1, nor is `2.0` or `"5"`.
    """
    path = Path(path) if path is not None else default_params_path()
    if not os.path.lexists(path):
        raise InputError(path, "no such params file (run from the project root, or set P2P_PARAMS)")
    raw = _read_params(path)
    presets = raw.pop("presets", None) or {}
    raw.pop("grid", None)  # the experiment grid of `make paper` (p2p.grid), not a stage setting
    chosen = preset or raw.get("preset", "cpu")
    if not isinstance(chosen, str):
        raise InputError(path, f"expected a preset name, got a {type(chosen).__name__}", field="preset")
    if chosen not in presets:
        raise ValueError(f"{path}: unknown preset '{chosen}'; presets defined there: {', '.join(presets) or 'none'}")
    merged = deep_merge(_renamed(raw, str(path)), _renamed(presets[chosen] or {}, f"{path}: preset '{chosen}'"))
    merged["preset"] = chosen
    try:
        return Config.model_validate_json(json.dumps(merged, default=str), strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        got = "" if isinstance(first["input"], (dict, list)) else f", got {first['input']!r}"
        raise ValueError(f"{path}: preset '{chosen}': {where}: {first['msg']}{got} "
                         f"({err.error_count()} problem(s) in total)") from None
