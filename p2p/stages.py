"""The pipeline's stages as plain functions of a Config: the Prefect flows and the CLI are thin shells over these.

Each function does one unit of work (one source, one task) and writes its outputs atomically under the project
root, so a flow can run them as separate Prefect tasks and a notebook can call them directly.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from p2p.cache import Cache
from p2p.config import Config, SourceConfig
from p2p.data import synth
from p2p.data.download import fetch
from p2p.data.prepare import hold_out_queries, load_source
from p2p.data.records import UserRecord, read_records, write_records
from p2p.data.splits import make_splits
from p2p.io import atomic_path, read_jsonl, write_json, write_jsonl, write_text
from p2p.models.generation import Backend, Sampling, TransformersBackend
from p2p.models.loading import load_causal_lm
from p2p.models.presets import local_model_id
from p2p.profiles.build import build_profiles
from p2p.profiles.embeddings import Embedder, EmbeddingResult, ablate, embed_profiles, embed_texts
from p2p.profiles.embeddings import make_embedder as _make_embedder
from p2p.profiles.summaries import CountTokens, approximate_tokens, summarize
from p2p.profiles.text_embedding import tfidf_embeddings
from p2p.report.figures import line_figure
from p2p.tasks import get_task
from p2p.tasks.prompts import render_embedding_prompt

if TYPE_CHECKING:
    from p2p.models.openai_backend import OpenAIBackend

log = logging.getLogger(__name__)


def prepared_path(cfg: Config, root: Path, dataset: str, task: str) -> Path:
    return root / cfg.data.prepared_dir / dataset / f"{task}.jsonl"


def read_prepared(cfg: Config, root: Path, dataset: str, task: str) -> list[UserRecord]:
    return list(read_records(prepared_path(cfg, root, dataset, task)))


def split_report_dir(root: Path) -> Path:
    """Where the cross-task split report goes (DVC outputs of the split stage)."""
    return root / "reports" / "splits"


def summaries_path(cfg: Config, root: Path, dataset: str, task: str) -> Path:
    return root / cfg.summarize.dir / dataset / f"{task}.jsonl"


def embeddings_path(cfg: Config, root: Path, dataset: str, task: str) -> Path:
    return root / cfg.embed.dir / dataset / f"{task}.npz"


def split_path(cfg: Config, root: Path, dataset: str, task: str) -> Path:
    return root / cfg.split.dir / dataset / f"{task}.json"


def fetch_source(source: SourceConfig, cfg: Config, root: Path) -> list[Path]:
    """Put one source's raw files under data/raw: generate the synthetic benchmark, or download the real data."""
    raw = root / cfg.data.raw_dir
    if source.dataset == "synth":
        s = cfg.data.synth
        written = synth.generate(raw / "synth", seed=cfg.seed, users=s.users, history_items=s.history_items,
                                 queries_per_user=s.queries_per_user, tasks=tuple(source.tasks))
        return sorted(written.values())
    return fetch(source.dataset, raw, tasks=source.tasks)


def prepare_task(dataset: str, task: str, cfg: Config, root: Path) -> dict[str, Any]:
    """Convert one task of one source into canonical JSONL; returns its size statistics."""
    records = load_source(dataset, task, root / cfg.data.raw_dir)
    if not records:
        raise ValueError(f"{dataset}/{task}: the raw files hold no user; run the fetch stage first")
    records = hold_out_queries(records, cfg.data.queries_per_user)
    write_records(prepared_path(cfg, root, dataset, task), records)
    return record_stats(records)


def record_stats(records: list[UserRecord]) -> dict[str, Any]:
    history = np.array([len(r.history) for r in records])
    queries = [q for r in records for q in r.queries]
    return {"users": len(records), "queries": len(queries), "history_items_mean": float(history.mean()),
            "history_items_max": int(history.max()),
            "avg_input_chars": float(np.mean([len(q.input) for q in queries])) if queries else 0.0,
            "avg_output_chars": float(np.mean([len(q.output or "") for q in queries])) if queries else 0.0}


def openai_backend(cfg: Config, progress: bool = True) -> OpenAIBackend:
    """The server of `generation.openai`, serving `model.base_llm` unless `generation.openai.model` names it."""
    from p2p.models.openai_backend import OpenAIBackend

    oa = cfg.generation.openai
    host = urlsplit(oa.base_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("user data will be sent to %s (generation.openai.base_url)", oa.base_url)
    return OpenAIBackend.from_env(oa.base_url, oa.model or cfg.model.base_llm, api_key_env=oa.api_key_env,
                                  concurrency=oa.concurrency, timeout=oa.timeout, retries=oa.retries, progress=progress)


def make_backend(cfg: Config, root: Path) -> tuple[Backend, CountTokens]:
    """The generation backend of `generation.backend`, and how to count its tokens for prompt budgets."""
    gen = cfg.generation
    if gen.backend == "openai":
        return openai_backend(cfg), approximate_tokens
    model, tokenizer = load_causal_lm(cfg.model.base_llm, root / cfg.model.cache_dir, seed=cfg.seed,
                                      device=cfg.model.device)
    backend = TransformersBackend(model, tokenizer, local_model_id(cfg.model.base_llm, cfg.seed),
                                  batch_size=gen.batch_size)
    return backend, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def summarize_task(dataset: str, task: str, cfg: Config, root: Path, backend: Backend,
                   count_tokens: CountTokens) -> dict[str, float]:
    """LLM summaries of one task's users -> data/summaries/<dataset>/<task>.jsonl; returns throughput stats."""
    records = read_prepared(cfg, root, dataset, task)
    sc = cfg.summarize
    sampling = Sampling(max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_p=sc.top_p, seed=cfg.seed)
    with Cache(root / sc.cache, "summaries") as cache:
        run = summarize(records, backend, cache, sampling, max_item_chars=sc.max_item_chars,
                        token_budget=sc.history_token_budget, count_tokens=count_tokens)
    write_jsonl(summaries_path(cfg, root, dataset, task),
                ({"user_id": user_id, **entry} for user_id, entry in run.summaries.items()))
    return run.stats()


def read_summaries(path: Path) -> dict[str, str]:
    return {row["user_id"]: row["summary"] for _, row in read_jsonl(path)}


def embedder_model(cfg: Config) -> str:
    """The model behind the profile embeddings: the sentence embedder, or the base LLM (its last-layer states)."""
    return cfg.model.embedder if cfg.model.embedder_kind == "sentence" else cfg.model.base_llm


def make_embedder(cfg: Config, root: Path) -> Embedder:
    return _make_embedder(cfg.model.embedder_kind, embedder_model(cfg), root / cfg.model.cache_dir,
                          device=cfg.model.device, batch_size=cfg.embed.batch_size)


def embed_task(dataset: str, task: str, cfg: Config, root: Path, embedder: Embedder) -> dict[str, float]:
    """Embed every user's profile text and every query's profile text of one task (`profile.variant`: Table 5).

    Writes data/embeddings/<dataset>/<task>.npz (user_ids, users, query_ids, query_users, queries, and
    cluster_users, the full profile's user vectors the split stage clusters on: float32, L2-normalised and scaled by
    sqrt(dim)) and <task>.texts.jsonl (the texts embedded, for inspection).
    """
    records = read_prepared(cfg, root, dataset, task)
    summaries = read_summaries(summaries_path(cfg, root, dataset, task))
    description = get_task(task).description
    profiles = [build_profiles(r, summaries[r.user_id], cfg.profile.retrieval_k, cfg.profile.variant)
                for r in records]
    query_rows = [(r.user_id, qid, text) for r, p in zip(records, profiles) for qid, text in p.query_texts.items()]
    texts = [p.user_text for p in profiles] + [text for _, _, text in query_rows]
    results: list[EmbeddingResult] = []

    def embed(strings: list[str]) -> np.ndarray:
        if cfg.embed.instruction:
            strings = [render_embedding_prompt(description, s) for s in strings]
        results.append(embed_texts(strings, embedder, cache, batch_size=max(cfg.embed.batch_size, 256)))
        return results[-1].vectors

    with Cache(root / cfg.embed.cache, "embeddings") as cache:
        vectors = embed_profiles(texts, embed, cfg.embed.pooling)
        cluster_users = vectors[:len(records)]
        if cfg.profile.variant != "full":  # splits stay those of the full profile, so ablations share test users
            full = [build_profiles(r, summaries[r.user_id], cfg.profile.retrieval_k).user_text for r in records]
            cluster_users = embed_profiles(full, embed, cfg.embed.pooling)
    owners = [r.user_id for r in records] + [user for user, _, _ in query_rows]
    vectors = ablate(vectors, owners, cfg.profile.variant, cfg.seed)
    result = EmbeddingResult(vectors, hits=sum(r.hits for r in results), misses=sum(r.misses for r in results),
                             seconds=sum(r.seconds for r in results))
    n_users = len(records)
    path = embeddings_path(cfg, root, dataset, task)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, user_ids=np.array([r.user_id for r in records]), users=result.vectors[:n_users],
                 query_ids=np.array([qid for _, qid, _ in query_rows]),
                 query_users=np.array([user for user, _, _ in query_rows]), queries=result.vectors[n_users:],
                 cluster_users=cluster_users)
    write_jsonl(path.with_suffix(".texts.jsonl"),
                [{"user_id": r.user_id, "text": p.user_text} for r, p in zip(records, profiles)]
                + [{"user_id": user, "query_id": qid, "text": text} for user, qid, text in query_rows])
    return {"texts": float(len(texts)), "cache_hits": float(result.hits), "embedded": float(result.misses),
            "seconds": result.seconds, "texts_per_second": result.texts_per_second, "dim": float(embedder.dim)}


def load_user_embeddings(path: Path, user_ids: list[str]) -> np.ndarray:
    """The embed stage's user vectors of the full profile (what splits cluster on), in the order of `user_ids`."""
    with np.load(path, allow_pickle=False) as data:
        index = {u: i for i, u in enumerate(data["user_ids"].tolist())}
        vectors = data["cluster_users"] if "cluster_users" in data else data["users"]
        missing = [u for u in user_ids if u not in index]
        if missing:
            raise ValueError(f"{path}: no embedding for {len(missing)} users (e.g. {missing[:3]}); rerun the embed "
                             f"stage")
        return vectors[[index[u] for u in user_ids]]


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

    Users are clustered on the embed stage's profile embeddings (`split.embedder: profile`) or on TF-IDF.
    """
    records = read_prepared(cfg, root, dataset, task)
    embeddings = None
    if cfg.split.embedder == "profile":
        embeddings = load_user_embeddings(embeddings_path(cfg, root, dataset, task), [r.user_id for r in records])
    assignment, report = split_records(records, cfg, embeddings)
    if embeddings is not None:
        report["embedder"] = f"profile ({cfg.model.embedder_kind}: {embedder_model(cfg)})"
    report = {"dataset": dataset, "task": task, **report}
    path = split_path(cfg, root, dataset, task)
    write_json(path, {"dataset": dataset, "task": task, **assignment})
    write_json(path.with_suffix(".report.json"), report)
    return report


def split_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The flat numbers worth tracking per task (DVC metrics, MLflow)."""
    sim = report["similarity"]
    out = {f"{name}_users": float(size) for name, size in report["sizes"].items()}
    out.update({"k": float(report["k"]), "best_silhouette": max(p["silhouette"] for p in report["silhouette"])})
    for split in ("random", "ood"):
        for key in ("test_to_train", "train_to_train"):
            if sim[split][key] is not None:
                out[f"{split}_{key}"] = float(sim[split][key])
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
    write_text(out_dir / "summary.md", split_summary_markdown(reports))
    return [out_dir / name for name in ("metrics.json", "silhouette.csv", "silhouette.png", "summary.md")]


def split_summary_markdown(reports: list[dict[str, Any]]) -> str:
    lines = ["# User splits", "",
             "Cosine similarity of test users to train users vs train to train (mean of per-user means, "
             "L2-normalised profile embeddings). The OOD test should sit further from train than train does from "
             "itself; the random test about as far.", "",
             "| dataset | task | users | train | random test | OOD test | excluded | k | silhouette "
             "| random test→train | random train→train | OOD test→train | OOD train→train |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        s, sim = rep["sizes"], rep["similarity"]
        best = max(p["silhouette"] for p in rep["silhouette"])
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {rep['dataset']} | {rep['task']} | {rep['n_users']} | {s['train']} | {s['random_test']} "
                     f"| {s['ood_test']} | {s['excluded']} | {rep['k']} | {best:.3f} "
                     f"| {fmt(sim['random']['test_to_train'])} | {fmt(sim['random']['train_to_train'])} "
                     f"| {fmt(sim['ood']['test_to_train'])} | {fmt(sim['ood']['train_to_train'])} |")
    lines += ["", "Silhouette curve (k: score):", ""]
    for rep in reports:
        curve = ", ".join(f"{p['k']}: {p['silhouette']:.3f}" for p in rep["silhouette"])
        lines.append(f"- {rep['dataset']}/{rep['task']}: {curve}")
    return "\n".join(lines) + "\n"
