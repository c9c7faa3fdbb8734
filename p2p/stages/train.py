"""Stage `train`: the P2P hypernetwork on every task's `train` users.

Training uses the users of each task's `train` split: users in neither the random nor the OOD test set, so one
hypernetwork serves both test splits and no test user ever reaches training. The recipe (docs/architecture.md §9):
samples (p2p.hyper.data) -> a hypernetwork of the `hyper` sizes (p2p.hyper.hypernet) trained through the frozen
base model (p2p.hyper.train) -> `train.dir` (p2p.hyper.checkpoint). Checkpoints go to a folder named by a
fingerprint of the settings and every sample, so a rerun of the same training resumes and a changed one starts
fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2p.config import Config
from p2p.hyper.checkpoint import FORMAT_VERSION, HyperMeta, save_hypernetwork
from p2p.hyper.data import HISTORY_SAMPLE, ItemEmbeddings, train_samples
from p2p.hyper.distributed import Distributed, from_environment, shutdown
from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.hyper.personalize import Personalizer
from p2p.hyper.train import OnStep, TrainResult, train_hypernetwork
from p2p.io import write_json, write_text
from p2p.lora.hooks import TargetLayout
from p2p.models.loading import resolve_device
from p2p.paths import Paths, TaskData, load_task_data, read_summaries
from p2p.profiles.build import item_profile
from p2p.report.figures import line_figure
from p2p.report.stage_reports import train_summary
from p2p.stages.common import base_model, corpus_embedder, embedder_model, evaluated_users, lora_shape
from p2p.stages.embed import profile_vectors
from p2p.stages.recorder import Recorder
from p2p.training import Sample

log = logging.getLogger(__name__)

#: The split whose first user's adapter is logged as an example of what a deployment ships.
EXAMPLE_SPLIT = "ood_test"
#: Fig. 4: stop timing P2P's adapters after this many seconds (the curve is linear; the stage must stay cheap).
ADAPTER_TIMING_BUDGET_S = 5.0


def processes(cfg: Config) -> int:
    """How many data-parallel processes the stage runs as: the Prefect shell relaunches itself under torchrun when
    this is above one (`train.processes`). Every rank runs `run`; rank 0 writes and reports."""
    return cfg.train.processes


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Train, write `train.dir` and the train report; report each step's loss, the hypernetwork, one OOD test user's
    adapter as a PEFT directory (what a deployment ships). The evaluate stages score the trained hypernetwork."""
    dist = from_environment()
    try:
        def on_step(step: int, metrics: dict[str, float]) -> None:
            rec.log_metrics(metrics, step=step)
            rec.progress(100.0 * step / cfg.train.steps)

        personalizer, result, tasks = train_stage(cfg, root, on_step=on_step, dist=dist)
        if not dist.is_main:
            return
        rec.progress(100.0)  # also when it resumed from its last checkpoint: no step left
        paths = Paths(cfg, root)
        rec.log_artifact(paths.hypernetwork, "hypernetwork")
        rec.log_torch_model(personalizer.hyper, "hypernetwork-model", Path(__file__).resolve().parents[1])
        example = next((data for data in tasks if data.split.get(EXAMPLE_SPLIT)), None)
        if example is not None:
            user = sorted(example.split[EXAMPLE_SPLIT])[0]
            with tempfile.TemporaryDirectory() as tmp:
                out = personalizer.export(Path(tmp) / f"{example.task}-{user}", example.users[user], example.task)
                rec.log_artifact(out, f"adapter/{example.task}-{user}")
        reports = paths.report("p2p")
        write_reports(result.history, reports)
        evaluated = [(data, user) for data in tasks if data.task in personalizer.hyper.tasks
                     for user in evaluated_users(data.split, cfg.evaluate.splits)]
        seconds = time_adapters(personalizer.hyper, [(data.task, data.users[user]) for data, user in evaluated])
        write_json(paths.adapter_seconds, {"budget_s": ADAPTER_TIMING_BUDGET_S, "users": [
            {"dataset": data.dataset, "task": data.task, "user": user, "seconds": s}
            for (data, user), s in zip(evaluated, seconds)]})
        rec.log_metrics({"train_seconds": result.seconds, "resumed_from_step": result.resumed_from})
        rec.log_artifact(reports, "reports")
        rec.publish(reports / "summary.md", "train-summary")
    finally:
        shutdown(dist)


def task_samples(data: TaskData, cfg: Config, embed_items: ItemEmbeddings) -> list[Sample]:
    """One task's training samples under `train.user_fraction`, `train.cluster_fraction`, `min_samples_per_task`
    (padding rows' profiles from `embed_items`: `item_embeddings` in the stage)."""
    tc = cfg.train
    return train_samples(data, user_fraction=tc.user_fraction, cluster_fraction=tc.cluster_fraction,
                         min_samples=tc.min_samples_per_task, seed=cfg.seed, embed_items=embed_items,
                         max_users=tc.max_users)


def item_embeddings(data: TaskData, cfg: Config, root: Path) -> ItemEmbeddings:
    """The padding rows' profile embeddings: each history item's profile built without it (`item_profile`: a real
    query's profile, from the user's summary and the rest of the history) and embedded as the embed stage embeds
    profiles; the embedder loads only when a task pads. The vector ablations keep the user's vector from the embed
    stage, which holds none of the user's items (`random`: noise; `shuffled`: another user's profile)."""
    def embed(asked: list[tuple[Any, dict[str, Any], str]]) -> np.ndarray:
        if cfg.profile.variant in ("random", "shuffled"):
            return np.stack([data.users[record.user_id] for record, _, _ in asked])
        paths = Paths(cfg, root)
        summaries = read_summaries(paths.summaries(data.dataset, data.task))
        texts = [item_profile(record, summaries[record.user_id], item, query, cfg.profile.retrieval_k,
                              cfg.profile.variant) for record, item, query in asked]
        log.info("%s: embedding %d padding rows' profiles (each without its item)", data.task, len(texts))
        return profile_vectors(texts, data.task, cfg, root, corpus_embedder(cfg, root))

    return embed


#: The profile embedding of a sample trained without profiles (MT-LoRA).
NO_PROFILE = np.zeros(0, dtype=np.float32)


def no_profiles(asked: list[Any]) -> np.ndarray:
    """`item_embeddings` for samples without profiles: an empty embedding per padding row."""
    return np.zeros((len(asked), 0), dtype=np.float32)


def all_samples(cfg: Config, root: Path, profiles: bool = True) -> tuple[list[TaskData], dict[str, list[Sample]]]:
    """Every configured task's data and training samples. The mt_lora stage trains on the very same samples
    without their profiles (`profiles=False`: empty embeddings), so it needs nothing of the embed stage and an
    ablation of P2P's profile (Table 5, Fig. 6) leaves it be."""
    paths = Paths(cfg, root)
    tasks = [load_task_data(paths, dataset, task, embeddings=profiles) for dataset, task in cfg.data.tasks()]
    if not profiles:
        for data in tasks:
            data.queries.update({q.id: NO_PROFILE for r in data.records for q in r.queries})
    samples = {data.task: task_samples(data, cfg, item_embeddings(data, cfg, root) if profiles else no_profiles)
               for data in tasks}
    for task, rows in samples.items():
        padded = sum(row.query_id.endswith(HISTORY_SAMPLE) for row in rows)
        log.info("%s: %d training samples (%d queries of %d train users, %d made from their history items)", task,
                 len(rows), len(rows) - padded, len({row.user_id for row in rows}), padded)
    return tasks, samples


def hyper_meta(cfg: Config, layout: TargetLayout, embed_dim: int, tasks: list[str]) -> HyperMeta:
    """What the checkpoint records besides the weights: the models, the adapter layout, the hypernetwork's sizes."""
    hc = cfg.hyper
    return HyperMeta(base_llm=cfg.model.base_llm, embedder=embedder_model(cfg), embedder_kind=cfg.model.embedder_kind,
                     embed_instruction=cfg.embed.instruction, embed_dim=embed_dim, lora=lora_shape(cfg),
                     shape=HyperShape(hc.latent, hc.head_in, hc.blocks, hc.dropout, hc.architecture,
                                      hc.standardize_inputs), layers=layout.layers,
                     shapes=layout.shapes, tasks=tuple(tasks), seed=cfg.seed, retrieval_k=cfg.profile.retrieval_k,
                     embed_pooling=cfg.embed.pooling)


def fingerprint(cfg: Config, samples: dict[str, list[Sample]]) -> str:
    """Hash of everything that shapes training: settings, base model and every sample (text and embedding).

    Checkpoints live in a folder named by it, so a rerun resumes only a run of the very same training.
    """
    digest = hashlib.sha256()
    # user_fraction, cluster_fraction and max_users act through the samples, which are hashed below (and the seed
    # through cfg.train_seed); activation checkpointing and the number of processes do not change what is computed,
    # so a run resumes on any number of GPUs
    settings = cfg.train.model_dump(mode="json", exclude={"dir", "checkpoints", "checkpoint_every",
                                                           "user_fraction", "cluster_fraction",
                                                           "max_users", "seed", "gradient_checkpointing",
                                                           "processes"})
    digest.update(json.dumps([settings, cfg.hyper.model_dump(mode="json"), cfg.lora.model_dump(mode="json"),
                              cfg.model.base_llm, cfg.train_seed, FORMAT_VERSION], sort_keys=True).encode())
    for task in sorted(samples):
        for s in samples[task]:
            digest.update(json.dumps([task, s.user_id, s.query_id, s.prompt, s.target]).encode())
            digest.update(s.embedding.tobytes())
    return digest.hexdigest()[:16]


def train_stage(cfg: Config, root: Path, on_step: OnStep | None = None,
                dist: Distributed | None = None) -> tuple[Personalizer, TrainResult, list[TaskData]]:
    """Train on every configured task; writes `train.dir` (the final hypernetwork) and checkpoints under
    `train.checkpoints`. `dist`: this process's rank in a data-parallel run; every rank trains, rank 0 writes."""
    dist = dist or Distributed()
    paths = Paths(cfg, root)
    tasks, samples = all_samples(cfg, root)
    dims = {s.embedding.shape[0] for rows in samples.values() for s in rows}
    if len(dims) != 1:
        raise ValueError(f"profile embeddings of different sizes across tasks: {sorted(dims)}; rerun the embed stage")
    model, tokenizer, layout = base_model(cfg, root, device=dist.device(resolve_device(cfg.model.device)),
                                          training=True)
    meta = hyper_meta(cfg, layout, dims.pop(), [task for task, rows in samples.items() if rows])
    torch.manual_seed(cfg.train_seed)
    hyper = HyperNetwork(meta.embed_dim, layout, meta.lora, meta.shape, meta.tasks)
    checkpoints = paths.checkpoints / fingerprint(cfg, samples)
    log.info("checkpoints: %s", checkpoints)
    result = train_hypernetwork(model, tokenizer, hyper, meta, samples, cfg.train, checkpoints, seed=cfg.train_seed,
                                on_step=on_step, dist=dist)
    if dist.is_main:
        save_hypernetwork(paths.hypernetwork, hyper, meta, history=result.history)
    return Personalizer(model, tokenizer, hyper, meta, batch_size=cfg.generation.batch_size), result, tasks


def time_adapters(hyper: HyperNetwork, users: list[tuple[str, np.ndarray]],
                  budget_s: float = ADAPTER_TIMING_BUDGET_S) -> list[float]:
    """Seconds to generate each (task, profile embedding)'s adapter, one user at a time (one hypernetwork forward;
    embedding the profile text is not included), until `budget_s` is spent: P2P's side of Fig. 4, timed by the stage
    that has the hypernetwork (the report stage only reads it). The OPPU side is the oppu stage's training time."""
    if not users:
        return []
    device = next(hyper.parameters()).device
    was_training = hyper.training
    hyper.eval()

    def forward(task: str, vector: np.ndarray) -> None:
        adapters = hyper(torch.as_tensor(vector[None], dtype=torch.float32, device=device), task)
        next(iter(adapters.a.values())).sum().item()  # on a GPU, wait for the device

    seconds: list[float] = []
    with torch.no_grad():
        forward(*users[0])  # warm-up
        began = time.perf_counter()
        for task, vector in users:
            start = time.perf_counter()
            forward(task, vector)
            seconds.append(time.perf_counter() - start)
            if time.perf_counter() - began > budget_s:
                break
    hyper.train(was_training)
    return seconds


def write_reports(history: list[dict[str, float]], out_dir: Path) -> list[Path]:
    """`Paths.report("p2p")`: metrics.json (DVC metrics), summary.md, loss.csv (DVC plots) and loss.png."""
    write_json(out_dir / "metrics.json", {"final_loss": history[-1]["loss"] if history else None,
                                          "steps": len(history)})
    write_text(out_dir / "summary.md", train_summary(history))
    write_text(out_dir / "loss.csv", "step,loss,ce\n" + "".join(f"{h['step']},{h['loss']:.6f},{h['ce']:.6f}\n"
                                                              for h in history))
    line_figure({"loss (with L2)": [(h["step"], h["loss"]) for h in history],
                 "cross-entropy": [(h["step"], h["ce"]) for h in history]}, out_dir / "loss.png",
                title="Hypernetwork training", xlabel="optimizer step", ylabel="loss")
    return [out_dir / name for name in ("metrics.json", "summary.md", "loss.csv", "loss.png")]
