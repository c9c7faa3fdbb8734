"""The `train` stage as plain functions of a Config: build samples, train the hypernetwork, score held-out users.

Training uses the users of each task's `train` split: users in neither the random nor the OOD test set, so one
hypernetwork serves both test splits and no test user ever reaches training. After training, the stage scores
the OOD test users three ways, with the same model and prompts: with their own profile, with another test user's
profile (shuffled), and with no adapter (the base model). A hypernetwork that uses the profile beats shuffled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2p.config import Config
from p2p.data.records import UserRecord
from p2p.hyper.checkpoint import FORMAT_VERSION, HyperMeta, save_hypernetwork
from p2p.hyper.data import Sample, build_samples, history_samples, query_embeddings
from p2p.hyper.distributed import Distributed
from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.hyper.lora import LoraShape, find_targets, freeze
from p2p.hyper.personalize import Personalizer
from p2p.hyper.train import OnStep, TrainResult, train_hypernetwork
from p2p.io import read_json, write_json
from p2p.models.generation import Sampling
from p2p.models.loading import load_causal_lm, resolve_device
from p2p.profiles.embeddings import ablate
from p2p.stages import embedder_model, embeddings_path, read_prepared, split_path
from p2p.tasks import get_task
from p2p.tasks.evaluate import score

log = logging.getLogger(__name__)

CONDITIONS = ("p2p", "p2p_shuffled", "base")


@dataclass
class TaskData:
    dataset: str
    task: str
    records: list[UserRecord]
    queries: dict[str, np.ndarray]  # query id -> profile embedding
    users: dict[str, np.ndarray]  # user id -> user-level profile embedding
    split: dict[str, Any]


def load_task_data(cfg: Config, root: Path, dataset: str, task: str) -> TaskData:
    path = embeddings_path(cfg, root, dataset, task)
    with np.load(path, allow_pickle=False) as data:
        users = dict(zip(data["user_ids"].tolist(), data["users"].astype(np.float32)))
    return TaskData(dataset, task, read_prepared(cfg, root, dataset, task), query_embeddings(path), users,
                    read_json(split_path(cfg, root, dataset, task)))


def select_train_users(users: list[str], clusters: dict[str, int], user_fraction: float, cluster_fraction: float,
                       seed: int) -> list[str]:
    """Fig. 3's training populations: the users of a seeded `cluster_fraction` of their clusters (diversity), then a
    seeded `user_fraction` of those users (quantity); at least one cluster and one user. 1.0 and 1.0: everyone."""
    rng = np.random.default_rng([seed, 3])
    names = sorted({clusters[u] for u in users})
    kept = {names[i] for i in rng.permutation(len(names))[:max(1, round(cluster_fraction * len(names)))]}
    pool = sorted(u for u in users if clusters[u] in kept)
    chosen = {pool[i] for i in rng.permutation(len(pool))[:max(1, round(user_fraction * len(pool)))]}
    return [u for u in users if u in chosen]


def train_samples(data: TaskData, cfg: Config) -> list[Sample]:
    """The task's training samples: every query of every `train` user (or the share `train.user_fraction` and
    `train.cluster_fraction` choose), padded from history items if too few."""
    everyone = set(data.split["train"])
    leaked = everyone & (set(data.split["random_test"]) | set(data.split["ood_test"]))
    if leaked:
        raise ValueError(f"{data.dataset}/{data.task}: test users in the train split: {sorted(leaked)[:5]}")
    train_users = everyone
    if cfg.train.user_fraction < 1 or cfg.train.cluster_fraction < 1:
        train_users = set(select_train_users(data.split["train"], data.split["cluster"], cfg.train.user_fraction,
                                             cfg.train.cluster_fraction, cfg.seed))
        log.info("%s: training on %d of %d train users", data.task, len(train_users), len(everyone))
    samples = build_samples(data.records, data.queries, train_users)
    needed = cfg.train.min_samples_per_task - len(samples)
    if needed > 0:
        train_records = [r for r in data.records if r.user_id in train_users]
        samples += history_samples(train_records, data.users, needed, cfg.seed)
    return samples


def hyper_meta(cfg: Config, layout: Any, embed_dim: int, tasks: list[str]) -> HyperMeta:
    lc, hc = cfg.lora, cfg.hyper
    return HyperMeta(base_llm=cfg.model.base_llm, embedder=embedder_model(cfg), embedder_kind=cfg.model.embedder_kind,
                     embed_instruction=cfg.embed.instruction, embed_dim=embed_dim,
                     lora=LoraShape(tuple(lc.targets), lc.rank, lc.alpha, lc.dropout),
                     shape=HyperShape(hc.latent, hc.head_in, hc.blocks, hc.dropout), layers=layout.layers,
                     shapes=layout.shapes, tasks=tuple(tasks), seed=cfg.seed, retrieval_k=cfg.profile.retrieval_k,
                     embed_pooling=cfg.embed.pooling)


def output_dir(cfg: Config, root: Path) -> Path:
    return root / cfg.train.dir


def report_dir(root: Path) -> Path:
    return root / "reports" / "p2p"


def fingerprint(cfg: Config, samples: dict[str, list[Sample]]) -> str:
    """Hash of everything that shapes training: settings, base model and every sample (text and embedding).

    Checkpoints live in a folder named by it, so a rerun resumes only a run of the very same training.
    """
    digest = hashlib.sha256()
    # user_fraction and cluster_fraction act through the samples, which are hashed below; activation checkpointing
    # and the number of processes do not change what is computed, so a run resumes on any number of GPUs
    settings = cfg.train.model_dump(mode="json", exclude={"dir", "checkpoints", "checkpoint_every",
                                                           "eval_max_new_tokens", "user_fraction", "cluster_fraction",
                                                           "gradient_checkpointing", "processes"})
    digest.update(json.dumps([settings, cfg.hyper.model_dump(mode="json"), cfg.lora.model_dump(mode="json"),
                              cfg.model.base_llm, cfg.seed, FORMAT_VERSION], sort_keys=True).encode())
    for task in sorted(samples):
        for s in samples[task]:
            digest.update(json.dumps([task, s.user_id, s.query_id, s.prompt, s.target]).encode())
            digest.update(s.embedding.tobytes())
    return digest.hexdigest()[:16]


def train_stage(cfg: Config, root: Path, on_step: OnStep | None = None,
                dist: Distributed | None = None) -> tuple[Personalizer, TrainResult, list[TaskData]]:
    """Train on every configured task; writes `train.dir` (the final hypernetwork) and checkpoints under it.

    `dist`: this process's rank in a data-parallel run; every rank trains, rank 0 writes the outputs.
    """
    dist = dist or Distributed()
    tasks = [load_task_data(cfg, root, dataset, task) for dataset, task in cfg.data.tasks()]
    samples = {data.task: train_samples(data, cfg) for data in tasks}
    for task, rows in samples.items():
        log.info("%s: %d training samples", task, len(rows))
    dims = {s.embedding.shape[0] for rows in samples.values() for s in rows}
    if len(dims) != 1:
        raise ValueError(f"profile embeddings of different sizes across tasks: {sorted(dims)}; rerun the embed stage")
    model, tokenizer = load_causal_lm(cfg.model.base_llm, root / cfg.model.cache_dir, seed=cfg.seed,
                                      device=dist.device(resolve_device(cfg.model.device)))
    freeze(model)
    layout = find_targets(model, tuple(cfg.lora.targets))
    meta = hyper_meta(cfg, layout, dims.pop(), list(samples))
    torch.manual_seed(cfg.seed)
    hyper = HyperNetwork(meta.embed_dim, layout, meta.lora, meta.shape)
    checkpoints = root / cfg.train.checkpoints / fingerprint(cfg, samples)
    log.info("checkpoints: %s", checkpoints)
    result = train_hypernetwork(model, tokenizer, hyper, meta, samples, cfg.train, checkpoints, seed=cfg.seed,
                                on_step=on_step, dist=dist)
    out = output_dir(cfg, root)
    if dist.is_main:
        save_hypernetwork(out, hyper, meta)
        write_json(out / "train_history.json", result.history)
    return Personalizer(model, tokenizer, hyper, meta, batch_size=cfg.generation.batch_size), result, tasks


def shuffled_embeddings(samples: list[Sample], seed: int) -> np.ndarray:
    """Each sample gets a profile embedding of another user (users permuted without fixed points)."""
    return ablate(np.stack([s.embedding for s in samples]), [s.user_id for s in samples], "shuffled", seed)


def max_new_tokens(tokenizer: Any, samples: list[Sample], cap: int) -> int:
    """Enough tokens for the longest gold answer of the task (plus a margin), at most `cap`."""
    from p2p.evaluation import answer_budget

    return answer_budget(tokenizer, [s.target for s in samples], cap)


def evaluate_users(personalizer: Personalizer, data: TaskData, split: str, cfg: Config,
                   conditions: tuple[str, ...] = CONDITIONS) -> dict[str, dict[str, Any]]:
    """Scores of one task's users in `split` (e.g. ood_test) per condition; greedy decoding."""
    samples = build_samples(data.records, data.queries, data.split[split])
    if not samples:
        return {}
    spec = get_task(data.task)
    sampling = Sampling(max_new_tokens=max_new_tokens(personalizer.tokenizer, samples, cfg.train.eval_max_new_tokens))
    prompts, golds = [s.prompt for s in samples], [s.target for s in samples]
    own = np.stack([s.embedding for s in samples])
    results = {}
    for condition in conditions:
        if condition == "base":
            texts = _base_answers(personalizer, prompts, sampling)
        else:
            embeddings = own if condition == "p2p" else shuffled_embeddings(samples, cfg.seed)
            texts = [g.text for g in personalizer.generate(prompts, embeddings, sampling)]
        results[condition] = {"n": len(samples), **score(spec, texts, golds, "p2p")}
    return results


def _base_answers(personalizer: Personalizer, prompts: list[str], sampling: Sampling) -> list[str]:
    from p2p.models.generation import TransformersBackend

    backend = TransformersBackend(personalizer.model, personalizer.tokenizer, "base",
                                  batch_size=personalizer.batch_size, progress=False)
    return [g.text for g in backend.generate([[{"role": "user", "content": p}] for p in prompts], sampling)]


def reference_scores(cfg: Config, root: Path, data: TaskData, split: str) -> dict[str, dict[str, Any]]:
    """For the synthetic benchmark: the oracle's and the best user-blind answer's scores on the same users."""
    if data.dataset != "synth":
        return {}
    from p2p.data import synth

    task_dir = root / cfg.data.raw_dir / "synth" / data.task
    users = set(data.split[split])
    ids = [q.id for r in data.records if r.user_id in users for q in r.queries]
    golds = {q.id: q.output for r in data.records for q in r.queries}
    spec = get_task(data.task)
    out = {}
    for name, predict in (("oracle", synth.oracle_predictions), ("query_only", synth.query_only_predictions)):
        predicted = predict(task_dir)
        out[name] = {"n": len(ids), **score(spec, [predicted[i] for i in ids], [golds[i] for i in ids], "p2p")}
    return out


def headline(task: str, scores: dict[str, Any]) -> tuple[str, float]:
    """The one number per task that the report compares (higher is better except MAE)."""
    kind = get_task(task).kind
    key = {"classification": "accuracy", "rating": "mae", "generation": "rouge1"}[kind]
    return key, scores.get(key)


def evaluation_markdown(results: dict[str, dict[str, dict[str, Any]]], split: str) -> str:
    lines = [f"# P2P on held-out users ({split})", "",
             "Greedy answers of the trained hypernetwork's adapters. `p2p`: each user's own profile; "
             "`p2p_shuffled`: another test user's profile; `base`: no adapter. `oracle` and `query_only` (synthetic "
             "benchmark only) are the planted rule with the true preference, and the best user-blind answer.", "",
             "| task | metric | " + " | ".join(("p2p", "p2p_shuffled", "base", "oracle", "query_only")) + " |",
             "|---|---|---|---|---|---|---|"]
    for task, by_condition in results.items():
        key, _ = headline(task, {})
        cells = []
        for condition in ("p2p", "p2p_shuffled", "base", "oracle", "query_only"):
            value = by_condition.get(condition, {}).get(key)
            cells.append("n/a" if value is None else f"{value:.3f}")
        lines.append(f"| {task} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flat_metrics(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    return {f"{task}/{condition}/{key}": float(value) for task, by_condition in results.items()
            for condition, scores in by_condition.items() for key, value in scores.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}




def write_reports(results: dict[str, dict[str, dict[str, Any]]], history: list[dict[str, float]], split: str,
                  out_dir: Path) -> list[Path]:
    """reports/p2p: metrics.json (DVC metrics), summary.md, loss.csv (DVC plots) and loss.png."""
    from p2p.io import write_text
    from p2p.report.figures import line_figure

    write_json(out_dir / "metrics.json", {"final_loss": history[-1]["loss"] if history else None,
                                          "steps": len(history), **flat_metrics(results)})
    write_text(out_dir / "summary.md", evaluation_markdown(results, split))
    write_text(out_dir / "loss.csv", "step,loss,ce\n" + "".join(f"{h['step']},{h['loss']:.6f},{h['ce']:.6f}\n"
                                                              for h in history))
    line_figure({"loss (with L2)": [(h["step"], h["loss"]) for h in history],
                 "cross-entropy": [(h["step"], h["ce"]) for h in history]}, out_dir / "loss.png",
                title="Hypernetwork training", xlabel="optimizer step", ylabel="loss")
    return [out_dir / name for name in ("metrics.json", "summary.md", "loss.csv", "loss.png")]
