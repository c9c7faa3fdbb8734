"""The `judge` stage: the LLM judge's 1-5 scores of every judged method's answers on the open-ended tasks.

Reads the evaluate stage's predictions (data/eval/<split>/<dataset>/<task>/<method>.json) and, per query, gives
the judge the task prompt, the answer, the gold as the reference answer and the user's profile (the source's own
profile text, e.g. a Personal Reddit persona, else the LLM summary). Writes each item's score and feedback to
data/judge/<split>/<dataset>/<task>/<method>.jsonl and the means (Table 3) to reports/judge, where the judge's
label always says which model judged and whether it was the local fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from p2p.cache import Cache
from p2p.config import Config
from p2p.io import write_json, write_jsonl, write_text
from p2p.judge.judge import Judge, JudgeItem, JudgeSettings, make_judge, summarize_scores
from p2p.tasks import get_task
from p2p.tasks.evaluate import read_outputs

log = logging.getLogger(__name__)


def judged_tasks(cfg: Config) -> list[tuple[str, str]]:
    return [(dataset, task) for dataset, task in cfg.data.tasks() if get_task(task).kind == "open_ended"]


def settings(cfg: Config) -> JudgeSettings:
    jc = cfg.judge
    return JudgeSettings(base_url=jc.base_url, model=jc.model, api_key_env=jc.api_key_env,
                         temperature=jc.temperature, max_new_tokens=jc.max_new_tokens, concurrency=jc.concurrency,
                         timeout=jc.timeout, retries=jc.retries, unparsable_retries=jc.unparsable_retries,
                         forced_choice=jc.forced_choice)


def judge_items(cfg: Config, root: Path, split: str, dataset: str, task: str, method: str) -> tuple[list[str],
                                                                                                   list[JudgeItem]]:
    """(query ids, judge items) of one method's predictions on one task and split."""
    from p2p.evaluation import predictions_path
    from p2p.stages import read_prepared, read_summaries, summaries_path

    spec = get_task(task)
    predictions = read_outputs(predictions_path(cfg, root, split, dataset, task, method), spec)
    summaries = read_summaries(summaries_path(cfg, root, dataset, task))
    ids, items = [], []
    for record in read_prepared(cfg, root, dataset, task):
        profile = record.profile_text or summaries.get(record.user_id, "")
        for query in record.queries:
            if query.id in predictions:
                ids.append(query.id)
                items.append(JudgeItem(spec.build_prompt(query.input), predictions[query.id], query.output or "",
                                       profile))
    return ids, items


def output_path(root: Path, split: str, dataset: str, task: str, method: str) -> Path:
    return root / "data" / "judge" / split / dataset / task / f"{method}.jsonl"


def judge_stage(cfg: Config, root: Path) -> tuple[dict[str, Any], str]:
    """Score every judged method x open-ended task x split; returns (split -> task -> method -> summary, label)."""
    tasks = judged_tasks(cfg)
    methods = [m for m in cfg.judge.methods if m in cfg.evaluate.methods]
    metrics: dict[str, Any] = {split: {} for split in cfg.evaluate.splits}
    written: list[str] = []
    if not tasks or not methods:
        log.info("no open-ended task or no judged method configured: nothing to judge")
        write_json(root / "data" / "judge" / "index.json", written)
        return metrics, "none (nothing to judge)"
    with Cache(root / cfg.judge.cache, "judge") as cache:
        judge: Judge = make_judge(settings(cfg), cache, local_model=cfg.judge.local_model or cfg.model.base_llm,
                                  cache_dir=root / cfg.model.cache_dir, device=cfg.model.device, seed=cfg.seed,
                                  batch_size=cfg.generation.batch_size)
        for split in cfg.evaluate.splits:
            for dataset, task in tasks:
                for method in methods:
                    ids, items = judge_items(cfg, root, split, dataset, task, method)
                    results = judge.score(items)
                    path = output_path(root, split, dataset, task, method)
                    write_jsonl(path, ({"id": i, "score": r.score, "attempts": r.attempts, "forced": r.forced,
                                        "feedback": r.feedback}
                                       for i, r in zip(ids, results)))
                    written.append(str(path.relative_to(root / "data" / "judge")))
                    metrics[split].setdefault(task, {})[method] = summarize_scores(results)
                    log.info("%s %s %s: %s", split, task, method, metrics[split][task][method])
    write_json(root / "data" / "judge" / "index.json", written)
    return metrics, judge.label


def summary_markdown(metrics: dict[str, Any], label: str, local: bool) -> str:
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
        lines += [f"## {split}", "", "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for task, by_method in by_task.items():
            cells = []
            for m in methods:
                s = by_method.get(m)
                forced = f", {s['forced']} forced" if s and s.get("forced") else ""
                cells.append("n/a" if not s or s["mean"] is None
                             else f"{s['mean']:.2f} ({s['missing']} missing{forced})")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("")
    if not any(metrics.values()):
        lines.append("No open-ended task is configured (Personal Reddit, Empathetic Conversations): nothing judged.")
    return "\n".join(lines) + "\n"


def write_reports(metrics: dict[str, Any], label: str, local: bool, out_dir: Path) -> list[Path]:
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "summary.md", summary_markdown(metrics, label, local))
    return [out_dir / "metrics.json", out_dir / "summary.md"]
