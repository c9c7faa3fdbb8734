"""Each stage's `summary.md`: the split report, the train stage's run, every method's scores, the judge's means."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2p.methods import PROPOSED
from p2p.report.markdown import markdown_table, number, with_interval
from p2p.tasks import headline_key, headline_metric
from p2p.tasks.bootstrap import resolved
from p2p.tasks.metrics import lower_is_better


def split_summary(reports: list[dict[str, Any]]) -> str:
    """reports/splits/summary.md: sizes, the chosen k, test->train against train->train similarity, and a line per
    task whose OOD test had to take clusters smaller than `split.min_cluster_size`, saying why; on the synthetic
    benchmark, the share of each test split's users with a scene or a planted preference no train user has."""
    header = ["dataset", "task", "users", "train", "random test", "OOD test", "excluded", "k", "silhouette",
              "random test→train", "random train→train", "OOD test→train", "OOD train→train"]
    rows = []
    for rep in reports:
        s, sim = rep["sizes"], rep["similarity"]
        best = max(p["silhouette"] for p in rep["silhouette"])
        rows.append([rep["dataset"], rep["task"], rep["n_users"], s["train"], s["random_test"], s["ood_test"],
                     s["excluded"], rep["k"], f"{best:.3f}", number(sim["random"]["test_to_train"]),
                     number(sim["random"]["train_to_train"]), number(sim["ood"]["test_to_train"]),
                     number(sim["ood"]["train_to_train"])])
    lines = ["# User splits", "",
             "Cosine similarity of test users to train users vs train to train (mean of per-user means, "
             "L2-normalised profile embeddings). The OOD test should sit further from train than train does from "
             "itself; the random test about as far.", "", *markdown_table(header, rows)]
    small = [rep for rep in reports if rep["ood_small_clusters"]]
    if small:
        lines += ["", "OOD tests that had to take users from clusters smaller than `split.min_cluster_size`:", ""]
        for rep in small:
            clusters = ", ".join(f"{c} (size {rep['cluster_sizes'][c]})" for c in rep["ood_small_clusters"])
            lines.append(f"- {rep['dataset']}/{rep['task']}: clusters {clusters}; min_cluster_size "
                         f"{rep['min_cluster_size']}: {rep['ood_small_clusters_why']}")
    planted = [rep for rep in reports if rep.get("held_out")]
    if planted:
        lines += ["", "What each test split holds out (synthetic benchmark, from the planted `preferences.json`): "
                  "its users whose scene (film scene, product domain, register) no train user comes from, and "
                  "those whose planted preference (LaMP-2M: the tag pair; LaMP-3: the rating bias; LaMP-7: the "
                  "signature) no train user has. Only on the unseen preferences must a model read the profile "
                  "rather than recall a training user like this one.", "",
                  *markdown_table(["dataset", "task", "split", "users", "unseen scene", "unseen preference"],
                                  [[rep["dataset"], rep["task"], split, held["users"],
                                    _share(held["unseen_scene"], held["users"]),
                                    _share(held["unseen_preference"], held["users"])]
                                   for rep in planted for split, held in rep["held_out"].items()])]
        for rep in planted:
            if rep.get("holdout_preferences"):
                h = rep["holdout_preferences"]
                lines.append(f"\n{rep['dataset']}/{rep['task']}: the planted preferences of {h['per_split']} users "
                             f"per test split are held out of training (`split.holdout_preferences`): "
                             f"{len(h['preferences'])} preferences, {h['train_users_moved']} train users withheld.")
    lines += ["", "Silhouette curve (k: score):", ""]
    for rep in reports:
        curve = ", ".join(f"{p['k']}: {p['silhouette']:.3f}" for p in rep["silhouette"])
        lines.append(f"- {rep['dataset']}/{rep['task']}: {curve}")
    return "\n".join(lines) + "\n"


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({count / total:.0%})" if total else "0 of 0"


def train_summary(history: list[dict[str, float]]) -> str:
    """reports/p2p/summary.md: how the hypernetwork's training went, and where its scores are."""
    last = history[-1] if history else None
    run = (f"{len(history)} optimizer steps; final loss {last['loss']:.4f} (cross-entropy {last['ce']:.4f}, the rest "
           f"the L2 penalty on the generated adapters); every step in loss.csv and loss.png." if last else
           "No optimizer step ran.")
    return "\n".join(["# P2P hypernetwork training", "", run, "",
                      "Its scores on the test users, beside every baseline (the shuffled-profile control and the "
                      "bare base model among them), are the evaluate stage's: reports/eval/summary.md. After a change "
                      "to P2P's training, `dvc repro evaluate` reruns only P2P's answers and the scoring."]) + "\n"


def difference_cell(entry: Mapping[str, Any] | None, metric: str) -> str:
    """`+0.125 [+0.050, +0.200]`: P2P minus a method with its paired interval, bold and marked ▲ where the
    interval excludes 0 in P2P's favour, ▼ where it excludes 0 against P2P (lower is better for MAE and RMSE)."""
    if not entry or entry.get("diff") is None:
        return "n/a"
    text = with_interval(entry["diff"], entry.get("ci95"), signed=True, interval_digits=3)
    side = resolved(entry.get("ci95")) * (-1 if lower_is_better(metric) else 1)
    return f"**{text} ▲**" if side > 0 else f"**{text} ▼**" if side < 0 else text


def eval_summary(metrics: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]],
                 comparisons: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]], preset: str,
                 unseen: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> str:
    """reports/eval/summary.md: per split a table in the paper's shape (a row per task, a column per method, the
    headline metric with its 95% interval, the queries and users it rests on), P2P minus every other method with
    the paired interval of the difference (resolved differences marked), milliseconds per instance, then (synthetic
    benchmark) the same on the test users whose planted preference no training user has (`unseen`)."""
    lines = ["# Every method on held-out users", "",
             f"Preset `{preset}`. Every method on the same test queries. Tasks with a fixed label set (classification, "
             "rating) are scored by choice: the answer is the label the model finds most likely after the method's "
             "exact prompt and adapter (`choice/...`; MAE: lower is better); other tasks by the official LaMP metric "
             "of the greedy answer (ROUGE-1). The greedy answers of the labelled tasks are scored too, below: the "
             "official metric and `format_valid`, the share of answers that are a label. `oracle` and `query_only` "
             "(synthetic benchmark only) are the planted rule with the true preference and the best user-blind "
             "answer. Open-ended tasks show milliseconds per instance here; the judge report scores them.", "",
             "Each value carries its 95% bootstrap interval over test users, `value [lo, hi]`: the users are "
             "resampled with replacement, each with all their queries (`evaluate.bootstrap_resamples` times, seed "
             "`evaluate.bootstrap_seed`), and the interval is the 2.5th to 97.5th percentile of the metric over the "
             "resamples. Every metric's interval: metrics.json; every comparison: comparisons.json.", ""]
    for split, by_task in metrics.items():
        methods = list(dict.fromkeys(m for by_method in by_task.values() for m in by_method))
        rows = []
        for task, by_method in by_task.items():
            key = headline_key(task)
            first = next(iter(by_method.values()), {})
            size = f"{first['n_queries']} / {first['n_users']}" if "n_queries" in first and "n_users" in first \
                else "n/a"
            rows.append([task, key, size, *(with_interval(by_method.get(m, {}).get(key),
                                                           by_method.get(m, {}).get(key + "_ci95"))
                                            for m in methods)])
        times = [[task, *(number(by_method.get(m, {}).get("ms_per_instance"), 0) for m in methods)]
                 for task, by_method in by_task.items()]
        lines += [f"## {split}", "", *markdown_table(["task", "metric", "queries / users", *methods], rows), ""]
        generated = []
        for task, by_method in by_task.items():
            for key in (headline_metric(task, "official"), "format_valid"):
                if key != headline_key(task) and any(key in scores for scores in by_method.values()):
                    generated.append([task, key, *(with_interval(by_method.get(m, {}).get(key),
                                                                 by_method.get(m, {}).get(key + "_ci95"))
                                                   for m in methods)])
        if generated:
            lines += [f"The greedy answers of the labelled tasks ({split}): the official metric (exact match; "
                      "unparsable ratings count as the farthest extreme) and the share of answers that are a label.",
                      "", *markdown_table(["task", "metric", *methods], generated), ""]
        compared = comparisons.get(split, {})
        others = [m for m in methods if f"{PROPOSED}-{m}" in {c for by_pair in compared.values() for c in by_pair}]
        if others:
            diffs = []
            for task, by_pair in compared.items():
                key = headline_key(task)
                diffs.append([task, key, *(difference_cell(by_pair.get(f"{PROPOSED}-{m}", {}).get(key), key)
                                           for m in others)])
            lines += [f"P2P minus each method ({split}), with the paired 95% interval of the difference (both "
                      "methods on the same user resamples). **▲**: the interval excludes 0 in P2P's favour; **▼**: "
                      "it excludes 0 against P2P (MAE and RMSE: lower is better, so a negative difference favours "
                      "P2P); unmarked: not resolved at this sample size.", "",
                      *markdown_table(["task", "metric", *others], diffs), ""]
        lines += ["Milliseconds per instance:", "", *markdown_table(["task", *methods], times), ""]
        lines += _unseen_section(split, (unseen or {}).get(split, {}))
    return "\n".join(lines)


def _unseen_section(split: str, by_task: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The test users of `split` whose planted preference no training user has: a method is right there only by
    reading the profile (chance on LaMP-2M's three named candidates: 1/3)."""
    rows = []
    for task, found in by_task.items():
        key = headline_key(task)
        scores, compared = found.get("scores", {}), found.get("comparisons", {})
        cells = [with_interval(scores.get(m, {}).get(key), scores.get(m, {}).get(key + "_ci95"))
                 for m in ("p2p", "p2p_shuffled", "mt_lora", "query_only")]
        diffs = [difference_cell(compared.get(f"{PROPOSED}-{m}", {}).get(key), key) for m in ("p2p_shuffled",
                                                                                              "mt_lora")]
        rows.append([task, key, f"{found.get('users', 0)} of {found.get('test_users', 0)}", *cells, *diffs])
    if not rows:
        return []
    return [f"Test users of {split} whose planted preference no training user has (LaMP-2M: the tag pair; LaMP-3: "
            "the bias). P2P can only be right there by reading the profile. Paired differences as above.", "",
            *markdown_table(["task", "metric", "users", "P2P", "P2P, shuffled", "MT-LoRA", "user-blind best",
                             "P2P − shuffled", "P2P − MT-LoRA"], rows), ""]


def judge_summary(metrics: dict[str, Any], label: str, local: bool) -> str:
    """reports/judge/summary.md: the judge's mean 1-5 score per method, task and split (Table 3)."""
    lines = ["# LLM judge (Table 3)", "", f"Judge: {label}.", ""]
    if local:
        lines += ["**A local model judged these answers: no judge endpoint was configured (judge.base_url). The "
                  "scores are not comparable with the paper's GPT-4o judge.**", ""]
    lines += ["Mean 1-5 personalisation score (App. J rubric) over the answers whose judgement held a `[RESULT] n`; "
              "`missing` counts answers the judge never scored; `forced` counts scores read as the local judge's most "
              "probable digit after an appended `[RESULT]` (judge.forced_choice), not written by it.", ""]
    for split, by_task in metrics.items():
        if not by_task:
            continue
        methods = list(dict.fromkeys(m for by_method in by_task.values() for m in by_method))
        rows = []
        for task, by_method in by_task.items():
            cells = []
            for m in methods:
                s = by_method.get(m)
                forced = f", {s['forced']} forced" if s and s.get("forced") else ""
                cells.append("n/a" if not s or s["mean"] is None
                             else f"{s['mean']:.2f} ({s['missing']} missing{forced})")
            rows.append([task, *cells])
        lines += [f"## {split}", "", *markdown_table(["task", *methods], rows), ""]
    if not any(metrics.values()):
        lines.append("No open-ended task is configured (Personal Reddit, Empathetic Conversations): nothing judged.")
    return "\n".join(lines) + "\n"
