"""Stage `split`: random and OOD user splits per task (paper App. H; docs/architecture.md §6) and the split report."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from p2p.config import Config
from p2p.data import synth
from p2p.data.records import UserRecord
from p2p.data.splits import make_splits
from p2p.io import write_json, write_text
from p2p.paths import Paths, read_prepared, read_summaries
from p2p.profiles.build import build_profiles
from p2p.profiles.profile_embedder import profile_embedder
from p2p.profiles.text_embedding import tfidf_embeddings
from p2p.report.figures import line_figure
from p2p.report.stage_reports import split_summary
from p2p.stages.embed import profile_vectors
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    reports = []
    for dataset, task in cfg.data.tasks():
        report = rec.step(split_task, "split-task", f"split {dataset}/{task}", dataset, task, cfg, root)
        sim = report["similarity"]["ood"]
        log.info("%s/%s: k=%d, sizes %s, OOD test->train %.3f vs train->train %.3f", dataset, task, report["k"],
                 report["sizes"], sim["test_to_train"] or float("nan"), sim["train_to_train"] or float("nan"))
        reports.append(report)
    out = Paths(cfg, root).report("splits")
    write_split_reports(reports, out)
    rec.log_artifact(out, "splits")
    rec.publish(out / "summary.md", "split-summary")
    for report in reports:
        rec.log_metrics(split_metrics(report), prefix=f"{report['dataset']}/{report['task']}/")


def profile_cluster_vectors(dataset: str, task: str, records: list[UserRecord], cfg: Config,
                            root: Path) -> np.ndarray:
    """What `split.embedder: profile` clusters on: each user's full profile (summary, label histogram,
    `split.retrieval_k` history items) embedded by `split.profile_model` as the embed stage embeds profiles. None of
    it follows the P2P profile's settings, so their ablations (Tables 4-5, Fig. 6) keep the same test users."""
    summaries = read_summaries(Paths(cfg, root).summaries(dataset, task))
    texts = [build_profiles(r, summaries[r.user_id], cfg.split.retrieval_k).user_text for r in records]
    embedder = profile_embedder("sentence", cfg.split.profile_model, Paths(cfg, root).model_cache, cfg.model.device,
                                batch_size=cfg.embed.batch_size)
    return profile_vectors(texts, task, cfg, root, embedder)


def user_text(record: UserRecord) -> str:
    """What the split stage clusters users on: the pre-existing profile if any, else the whole history as text."""
    if record.profile_text:
        return record.profile_text
    spec = get_task(record.task)
    return "\n".join(spec.item_text(item) for item in record.history)


def split_records(records: list[UserRecord], cfg: Config,
                  embeddings: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random and OOD user splits of one task's users: (assignment, report).

    `embeddings` (one row per record, in order) defaults to the TF-IDF profile embedding of `split.embedder`.
    """
    sc = cfg.split
    embedder = "given" if embeddings is not None else sc.embedder
    if embeddings is None:
        embeddings = tfidf_embeddings([user_text(r) for r in records], sc.embedding_dim, cfg.seed)
    splits = make_splits(embeddings, [r.user_id for r in records], [len(r.history) for r in records],
                         seed=cfg.seed, test_users=sc.test_users, small_population=sc.small_population,
                         test_fraction=sc.test_fraction, min_cluster_size=sc.min_cluster_size,
                         n_init_search=sc.n_init_search, n_init_final=sc.n_init_final, bins=sc.history_bins)
    names = ("train", "random_test", "ood_test", "excluded", "train_random", "train_ood")
    assignment = {name: getattr(splits, name) for name in names}
    assignment["cluster"] = dict(zip((r.user_id for r in records), splits.cluster_labels))
    queries = {r.user_id: len(r.queries) for r in records}
    report = {"embedder": embedder, **splits.report,
              "queries": {name: sum(queries[u] for u in assignment[name]) for name in names}}
    return assignment, report


def split_task(dataset: str, task: str, cfg: Config, root: Path) -> dict[str, Any]:
    """Split one prepared task; writes data/splits/<dataset>/<task>.json and .report.json, returns the report.

    Users are clustered on their full profiles' embeddings (`split.embedder: profile`) or on TF-IDF.
    The cross-task report (`write_split_reports`) goes to `Paths.report("splits")`.
    """
    paths = Paths(cfg, root)
    records = read_prepared(paths.prepared(dataset, task))
    embeddings = None
    if cfg.split.embedder == "profile":
        embeddings = profile_cluster_vectors(dataset, task, records, cfg, root)
    assignment, report = split_records(records, cfg, embeddings)
    if embeddings is not None:
        report["embedder"] = f"profile (sentence: {cfg.split.profile_model}, k {cfg.split.retrieval_k})"
    if dataset == "synth":
        per_split = cfg.split.holdout_preferences.get(task, 0)
        if per_split:
            report["holdout_preferences"] = hold_out_preferences(paths.synth_task(task), assignment, per_split,
                                                                 cfg.seed)
            report["sizes"] = {**report["sizes"], "train": len(assignment["train"])}
        report["held_out"] = held_out(paths.synth_task(task), assignment)
    report = {"dataset": dataset, "task": task, **report}
    write_json(paths.split(dataset, task), {"dataset": dataset, "task": task, **assignment})
    write_json(paths.split_report(dataset, task), report)
    return report


def hold_out_preferences(task_dir: Path, assignment: dict[str, Any], per_split: int, seed: int) -> dict[str, Any]:
    """Make some test users' planted preferences unseen in training: draw `per_split` users of each test split
    (seeded) and move every `train` user who shares one of their preferences (`synth.preference_key`) from `train`,
    `train_random` and `train_ood` to `withheld`. On those test users a model can only beat chance by reading the
    profile. Returns what was held out, for the split report."""
    task = Path(task_dir).name
    planted = synth.planted_preferences(task_dir)
    rng = np.random.default_rng([seed, per_split])
    keys: set[str] = set()
    for split in ("random_test", "ood_test"):
        users = assignment[split]
        drawn = [users[i] for i in sorted(rng.choice(len(users), size=min(per_split, len(users)), replace=False))]
        keys |= {synth.preference_key(task, planted[u]) for u in drawn}
    moved = {u for u in assignment["train"] if synth.preference_key(task, planted[u]) in keys}
    for name in ("train", "train_random", "train_ood"):
        assignment[name] = [u for u in assignment[name] if u not in moved]
    assignment["withheld"] = sorted(moved)
    return {"per_split": per_split, "preferences": sorted(keys), "train_users_moved": len(moved)}


def held_out(task_dir: Path, assignment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each test split of the synthetic benchmark holds out from `train` (p2p.data.synth): how many of its users
    come from a scene no training user comes from, and how many have a planted preference no training user has."""
    out = {}
    for split in ("random_test", "ood_test"):
        test, train = assignment[split], assignment["train"]
        counts = {"users": len(test),
                  "unseen_scene": len(synth.unseen_scene_users(task_dir, train, test)),
                  "unseen_preference": len(synth.unseen_preference_users(task_dir, train, test))}
        out[split] = {**counts, **{f"{key}_share": counts[key] / len(test) if test else None
                                   for key in ("unseen_scene", "unseen_preference")}}
    return out


def split_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The flat numbers worth tracking per task (DVC metrics, MLflow); the synthetic benchmark's held-out shares."""
    sim = report["similarity"]
    out = {f"{name}_users": float(size) for name, size in report["sizes"].items()}
    out.update({"k": float(report["k"]), "best_silhouette": max(p["silhouette"] for p in report["silhouette"])})
    for split in ("random", "ood"):
        for key in ("test_to_train", "train_to_train"):
            if sim[split][key] is not None:
                out[f"{split}_{key}"] = float(sim[split][key])
    for split, shares in report.get("held_out", {}).items():
        for key in ("unseen_scene_share", "unseen_preference_share"):
            if shares[key] is not None:
                out[f"{split}_{key}"] = float(shares[key])
    return out


def write_split_reports(reports: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The cross-task split report: metrics.json (DVC metrics), silhouette.csv (DVC plots), silhouette.png
    (k-means silhouette per k, the chosen k circled) and summary.md."""
    metrics = {f"{r['dataset']}/{r['task']}": split_metrics(r) for r in reports}
    write_json(out_dir / "metrics.json", metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["series", "k", "silhouette"])
    for rep in reports:
        for point in rep["silhouette"]:
            writer.writerow([f"{rep['dataset']}/{rep['task']}", point["k"], f"{point['silhouette']:.6f}"])
    write_text(out_dir / "silhouette.csv", buf.getvalue())
    line_figure({f"{r['dataset']}/{r['task']}": [(p["k"], p["silhouette"]) for p in r["silhouette"]]
                 for r in reports}, out_dir / "silhouette.png", title="Choosing k for the user clusters",
                xlabel="k (k-means clusters)", ylabel="silhouette", mark_best=True)
    write_text(out_dir / "summary.md", split_summary(reports))
    return [out_dir / name for name in ("metrics.json", "silhouette.csv", "silhouette.png", "summary.md")]
