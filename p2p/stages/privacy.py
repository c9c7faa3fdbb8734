"""Stage `privacy`: what a user's adapter reveals about the user, for P2P and OPPU, and the noise defence's price.

Per task and evaluated test split (p2p.privacy.audit says what each attack assumes and scores): attribute
inference (synthetic LaMP-2M and LaMP-3), linkage (regenerated and inverted) and membership (loss and calibrated),
for P2P's adapters at every noise scale of `privacy.sweep`, for OPPU's adapters and, as the reference, for the
profile embedding itself. Beside each scale: P2P's choice-scored headline on the OOD test users with that noise
(P2P's price for the defence) and the (epsilon, delta) the noise gives, if any. Writes `reports/privacy/`:
metrics.json (a DVC metric), summary.md and tradeoff.png (p2p.report.privacy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2p.config import Config
from p2p.data import synth
from p2p.data.records import UserRecord
from p2p.evaluation.answers import Models, choose_labels, split_queries
from p2p.hyper.checkpoint import load_hypernetwork
from p2p.hyper.personalize import Personalizer
from p2p.io import write_dir, write_json
from p2p.lora.hooks import Adapters
from p2p.lora.stacked import load_adapters
from p2p.paths import Paths, TaskData, load_task_data
from p2p.privacy import audit
from p2p.privacy.attacks import adapter_features, cosine_similarity, inversion_map, ridge_probe
from p2p.privacy.metrics import gaussian_epsilon, with_interval
from p2p.profiles.noise import EmbeddingNoise
from p2p.report.privacy import OOD_SPLIT, privacy_figure, privacy_summary, swept_split
from p2p.stages.common import base_model, evaluated_users, lora_shape
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task, headline_key
from p2p.training import Encoded

log = logging.getLogger(__name__)

REPORT_FILES = ("metrics.json", "summary.md", "tradeoff.png")  # reports/privacy, written whole
METHODS = ("p2p", "oppu", "embedding", "constant")  # what the report lists, in order


def audited_scales(cfg: Config) -> list[float]:
    """`privacy.sweep` and the deployed noise scale, in increasing order."""
    return sorted({*cfg.privacy.sweep, cfg.privacy.noise.scale})


def first_queries(data: TaskData) -> dict[str, str]:
    """user id -> the id of the user's first query that has a profile embedding (the audited adapter's)."""
    out = {}
    for record in data.records:
        for query in record.queries:
            if query.id in data.queries:
                out[record.user_id] = query.id
                break
    return out


class Auditor:
    """The base model and the hypernetwork, loaded once, and the helpers every task's audit shares."""

    def __init__(self, cfg: Config, root: Path):
        self.cfg, self.paths = cfg, Paths(cfg, root)
        self.model, self.tokenizer, self.layout = base_model(cfg, root)
        hyper, meta = load_hypernetwork(self.paths.hypernetwork, self.layout, device=str(self.model.device))
        self.lora = lora_shape(cfg)
        self.personalizer = Personalizer(self.model, self.tokenizer, hyper, meta,
                                         batch_size=cfg.generation.batch_size)
        self.models = Models(self.model, self.tokenizer, self.layout, self.lora, cfg.generation.batch_size,
                             self.personalizer)
        pc = cfg.privacy
        self.width, self.resamples, self.seed = pc.sketch_width, pc.resamples, cfg.seed

    def adapters(self, embeddings: np.ndarray, task: str) -> Adapters:
        """P2P's adapters of these embeddings, in batches of 64 rows."""
        parts = [self.personalizer.adapters(embeddings[i:i + 64], task) for i in range(0, len(embeddings), 64)]
        return Adapters({k: torch.cat([p.a[k] for p in parts]) for k in parts[0].a},
                        {k: torch.cat([p.b[k] for p in parts]) for k in parts[0].b})

    def features(self, adapters: Adapters) -> np.ndarray:
        return adapter_features(adapters, self.width, self.seed)

    def losses(self, examples: list[Encoded], adapters: Adapters | None) -> np.ndarray:
        """Each example's loss under the base model, or row i under adapter i."""
        if adapters is not None:
            device = self.model.device
            adapters = Adapters({k: v.to(device) for k, v in adapters.a.items()},
                                {k: v.to(device) for k, v in adapters.b.items()})
        return audit.item_losses(self.model, self.tokenizer, examples, batch_size=self.cfg.generation.batch_size,
                                 layout=self.layout, lora=self.lora, adapters=adapters)

    def noisy(self, noise: EmbeddingNoise, embeddings: np.ndarray, keys: list[str]) -> np.ndarray:
        return noise.apply(embeddings, keys, str(self.cfg.seed))

    def ood_headline(self, data: TaskData, noise: EmbeddingNoise) -> dict[str, Any] | None:
        """P2P's choice-scored headline on the OOD test users with `noise` on every query's embedding."""
        pairs = split_queries(data.records, data.split.get(OOD_SPLIT, []))
        spec = get_task(data.task)
        key = headline_key(data.task)
        if not pairs or not key.startswith("choice/"):
            return None
        keys = [q.id for _, q in pairs]
        embeddings = self.noisy(noise, np.stack([data.queries[k] for k in keys]), keys)
        picks = choose_labels(self.models, data.task, [spec.build_prompt(q.input) for _, q in pairs],
                              self.personalizer.row_adapters(embeddings, data.task))
        chosen = [p["choice"] for p in picks]
        golds = [str(q.output) for _, q in pairs]
        if key.endswith("accuracy"):
            values = [float(c.strip() == g.strip()) for c, g in zip(chosen, golds)]
        else:
            values = [abs(float(c) - float(g)) for c, g in zip(chosen, golds)]
        return {"metric": key, **with_interval(values, [r.user_id for r, _ in pairs], self.resamples, self.seed)}


def audit_task(auditor: Auditor, cfg: Config, dataset: str, task: str) -> dict[str, Any]:
    """Every attack on every evaluated split of one task (see the module docstring); the sweep's OOD headlines."""
    paths, pc = auditor.paths, cfg.privacy
    data = load_task_data(paths, dataset, task)
    first = first_queries(data)
    pool = sorted(first)
    index = {u: i for i, u in enumerate(pool)}
    pool_embeddings = np.stack([data.queries[first[u]] for u in pool])
    pool_features = auditor.features(auditor.adapters(pool_embeddings, task))  # what the attacker regenerates
    train = [u for u in data.split["train"] if u in index]
    train_rows = [index[u] for u in train]
    invert = inversion_map(pool_features[train_rows], pool_embeddings[train_rows])
    records: dict[str, UserRecord] = {r.user_id: r for r in data.records}
    planted = synth.planted_preferences(paths.synth_task(task)) if (
        dataset == "synth" and task in audit.ATTRIBUTE_TASKS) else None
    train_y = None if planted is None else audit.attribute_targets(task, [planted[u] for u in train])
    # the attacker's probes, fitted once on the training users: on their adapters and on their embeddings
    adapter_probe = None if planted is None else ridge_probe(pool_features[train_rows], train_y)
    embedding_probe = None if planted is None else ridge_probe(pool_embeddings[train_rows], train_y)
    evaluated = [u for u in evaluated_users(data.split, cfg.evaluate.splits) if u in index]
    oppu = oppu_released(auditor, paths.oppu_adapters(dataset, task), evaluated)

    out: dict[str, Any] = {"embedding_dim": int(pool_embeddings.shape[1]), "splits": {}, "ood": {}}
    audited = {s: [u for u in data.split.get(s, []) if u in index] for s in cfg.evaluate.splits}
    audited = {s: users for s, users in audited.items() if users}
    swept = swept_split(list(audited))
    for split, users in audited.items():
        rows = [index[u] for u in users]
        keys = [first[u] for u in users]
        items = audit.membership_items(list(records.values()), users, pc.members_per_user, cfg.seed)
        examples = audit.encode_items(items, task, auditor.tokenizer, cfg.oppu.max_length)
        item_rows = [users.index(m.owner) for m in items]
        base = auditor.losses(examples, None)
        result: dict[str, Any] = {"users": len(users), "pool": len(pool), "membership_items": len(items)}
        if planted is not None:
            truth = audit.attribute_targets(task, [planted[u] for u in users])
            result["embedding"] = {"attribute": attribute(task, embedding_probe(pool_embeddings[rows]), truth, users,
                                                          auditor)}
            result["constant"] = {"attribute": attribute(task, audit.constant_guess(task, train_y, len(users)), truth,
                                                         users, auditor)}
        # the sweep on the split the trade-off reads (p2p.report.privacy), the deployed scale on every split
        for scale in audited_scales(cfg) if split == swept else [pc.noise.scale]:
            log.info("%s %s: P2P's adapters at noise %g, %d users, %d membership items", task, split, scale,
                     len(users), len(items))
            noise = EmbeddingNoise(scale, pc.noise.clip)
            released = auditor.adapters(auditor.noisy(noise, pool_embeddings[rows], keys), task)
            features = auditor.features(released)
            figures: dict[str, Any] = {
                "linkage_regenerated": audit.regenerated_linkage(features, pool_features, rows, users,
                                                                 auditor.resamples, auditor.seed),
                "linkage_inverted": audit.inverted_linkage(invert, features, pool_embeddings, rows, users,
                                                           auditor.resamples, auditor.seed),
                "membership": audit.membership(items, auditor.losses(examples, released.rows(item_rows)), base,
                                               auditor.resamples, auditor.seed)}
            if planted is not None:
                figures["attribute"] = attribute(task, adapter_probe(features), truth, users, auditor)
            result.setdefault("p2p", {})[str(scale)] = figures
        if oppu is not None:
            log.info("%s %s: OPPU's adapters", task, split)
            result["oppu"] = oppu_figures(auditor, task, oppu, users, evaluated, pool_embeddings, index, items,
                                          examples, base, planted)
        out["splits"][split] = result
    for scale in audited_scales(cfg):
        log.info("%s: P2P's OOD headline at noise %g", task, scale)
        out["ood"][str(scale)] = auditor.ood_headline(data, EmbeddingNoise(scale, pc.noise.clip))
    return out


def attribute(task: str, guesses: np.ndarray, truth: np.ndarray, users: list[str], auditor: Auditor) -> dict:
    """The attack's per-user figure (LaMP-2M tag accuracy, LaMP-3 bias error) with its interval."""
    return {"metric": "tag_accuracy" if task == "LaMP-2M" else "bias_mae",
            **with_interval(audit.attribute_errors(task, guesses, truth), users, auditor.resamples, auditor.seed)}


def oppu_released(auditor: Auditor, path: Path, evaluated: list[str]) -> tuple[Adapters, np.ndarray, list[str]] | None:
    """OPPU's adapters of the evaluated users (numpy), their features and their users; None without the stage."""
    if not path.is_file():
        log.warning("%s: no OPPU adapters; the audit leaves OPPU out", path)
        return None
    adapters, users, _ = load_adapters(path)
    row = {u: i for i, u in enumerate(users)}
    kept = [u for u in evaluated if u in row]
    picked = adapters.rows([row[u] for u in kept])
    return picked, auditor.features(picked), kept


def oppu_figures(auditor: Auditor, task: str, oppu: tuple[Adapters, np.ndarray, list[str]], users: list[str],
                 evaluated: list[str], pool_embeddings: np.ndarray, index: dict[str, int], items: list,
                 examples: list, base: np.ndarray, planted: dict[str, Any] | None) -> dict[str, Any]:
    """OPPU's attacks on one split's users: probes and the inversion cross-fitted over every evaluated user that
    has an OPPU adapter (OPPU trains none for training users), membership with each user's own adapter."""
    adapters, features, kept = oppu
    at = {u: i for i, u in enumerate(kept)}
    users = [u for u in users if u in at]
    rows = [at[u] for u in users]
    embeddings = pool_embeddings[[index[u] for u in kept]]
    inverted = audit.cross_fitted(features, embeddings)[rows]
    figures: dict[str, Any] = {
        "linkage_inverted": audit.linkage(cosine_similarity(inverted, pool_embeddings), [index[u] for u in users],
                                          users, auditor.resamples, auditor.seed)}
    item_users = [m.owner for m in items]
    mine = [i for i, u in enumerate(item_users) if u in at]
    released = adapters.rows([at[item_users[i]] for i in mine])
    figures["membership"] = audit.membership([items[i] for i in mine], auditor.losses([examples[i] for i in mine],
                                             released), base[mine], auditor.resamples, auditor.seed)
    if planted is not None:
        y = audit.attribute_targets(task, [planted[u] for u in kept])
        figures["attribute"] = attribute(task, audit.cross_fitted(features, y)[rows], y[rows], users, auditor)
    return figures


def guarantees(cfg: Config, dims: dict[str, int]) -> dict[str, dict[str, float]]:
    """scale -> epsilon of the Gaussian mechanism at `privacy.delta`, per embedding width (inf: no guarantee)."""
    pc = cfg.privacy
    return {str(scale): {str(dim): gaussian_epsilon(EmbeddingNoise(scale, pc.noise.clip).sensitivity(dim), scale,
                                                    pc.delta) for dim in sorted(set(dims.values()))}
            for scale in audited_scales(cfg)}


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Audit every task (one step of `rec` each) and write reports/privacy as a whole."""
    paths = Paths(cfg, root)
    auditor = Auditor(cfg, root)
    tasks = {f"{dataset}/{task}": rec.step(audit_task, "audit-task", f"privacy {task}", auditor, cfg, dataset, task)
             for dataset, task in cfg.data.tasks()}
    dims = {name: result["embedding_dim"] for name, result in tasks.items()}
    metrics = {"delta": cfg.privacy.delta, "clip": cfg.privacy.noise.clip, "epsilon": guarantees(cfg, dims),
               "tasks": tasks}
    out = paths.report("privacy")

    def fill(tmp: Path) -> None:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "summary.md").write_text(privacy_summary(metrics, cfg.privacy.noise.scale), encoding="utf-8")
        privacy_figure(metrics, tmp / "tradeoff.png")

    write_dir(out, fill, ours=lambda entry: entry.name in REPORT_FILES and entry.is_file())
    rec.log_metrics(flat_metrics(metrics, cfg.privacy.noise.scale))
    rec.publish(out / "summary.md", "privacy")
    rec.log_artifact(out, "privacy")


def flat_metrics(metrics: dict[str, Any], deployed: float) -> dict[str, float]:
    """The headline figures as MLflow metrics, `<task>/<split>/<method>/<attack>`; P2P's at the deployed noise."""
    out = {}
    for name, result in metrics["tasks"].items():
        for split, figures in result["splits"].items():
            for method in METHODS:
                by_attack = figures.get(method) or {}
                if method == "p2p":
                    by_attack = by_attack.get(str(deployed), {})
                for attack, value in headlines(by_attack).items():
                    out[f"{name}/{split}/{method}/{attack}"] = value
    return out


def headlines(by_attack: dict[str, Any]) -> dict[str, float]:
    """attack -> its headline number: the attribute figure, linkage's top-1, each membership score's AUC."""
    out = {}
    for attack, figure in by_attack.items():
        if "value" in figure:
            out[attack] = float(figure["value"])
        elif "top1" in figure:
            out[attack] = float(figure["top1"]["value"])
        else:
            out |= {f"{attack}_{score}": float(inner["value"]) for score, inner in figure.items()}
    return out
