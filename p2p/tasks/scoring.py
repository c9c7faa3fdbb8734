"""Score a predictions file against a golds file, both in the official LaMP outputs format.

Format: `{"task": "LaMP_N", "golds": [{"id": str, "output": str}, ...]}` for golds and predictions alike (the
official evaluator reads predictions in the same shape). Every problem is an InputError naming the file, the entry
and the field, so a broken submission is fixed in one round instead of failing deep inside a metric.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from p2p.data.sources.lamp import read_lamp_outputs
from p2p.io import InputError
from p2p.tasks.metrics import (
    STYLES,
    choice_classification_scores,
    choice_rating_scores,
    classification_scores,
    finite_number,
    label_share,
    rating_scores,
    rouge_scores,
)
from p2p.tasks.registry import TaskSpec, choice_labels, get_task

_SHOWN_IDS = 5


def _check_task_name(name: str | None, path: Path, task: TaskSpec) -> None:
    """The file's own `task`, when present, must name the task being scored (LaMP_2 is accepted for LaMP-2M too:
    the movie-tagging release lives under LaMP_2/new and may carry the plain name)."""
    if name is None:
        return
    try:
        file_task = get_task(name).id
    except ValueError:
        raise InputError(path, f"unknown task name {name!r}", field="task") from None
    if file_task != task.id and not (task.id == "LaMP-2M" and name == "LaMP_2"):
        raise InputError(path, f"file is for {file_task}, not {task.id}", field="task")


def read_outputs(path: str | os.PathLike, task: TaskSpec) -> dict[str, str]:
    """Read one official-format outputs file into {id: output} for scoring `task` (non-empty, right task)."""
    path = Path(path)
    name, outputs = read_lamp_outputs(path)
    _check_task_name(name, path, task)
    if not outputs:
        raise InputError(path, "empty: nothing to score", field="golds")
    return outputs


def _check_same_ids(predictions: dict[str, str], golds: dict[str, str], path: Path) -> None:
    missing = [i for i in golds if i not in predictions]
    extra = [i for i in predictions if i not in golds]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gold ids without a prediction (e.g. {missing[:_SHOWN_IDS]})")
        if extra:
            parts.append(f"{len(extra)} prediction ids not in the golds (e.g. {extra[:_SHOWN_IDS]})")
        raise InputError(path, "ids do not match the golds: " + "; ".join(parts), field="golds")


def _check_golds(task: TaskSpec, golds: dict[str, str], path: Path, style: str) -> None:
    """Golds must be scorable: a label of the task, or a number for ratings (else: wrong task or broken file)."""
    for position, (entry_id, gold) in enumerate(golds.items()):
        field = f"golds[{position}].output"
        if task.kind == "classification":
            pool = task.labels if style == "official" else [label.lower() for label in task.labels]
            value = gold.strip() if style == "official" else gold.strip().lower()
            if value not in pool:
                raise InputError(path, f"{gold!r} is not one of the {task.id} labels {list(task.labels)}",
                                 record=f"id {entry_id}", field=field)
        elif task.kind == "rating" and finite_number(gold) is None:
            raise InputError(path, f"{gold!r} is not a number", record=f"id {entry_id}", field=field)


def score(task: TaskSpec, predictions: list[str], golds: list[str], style: str = "official") -> dict[str, Any]:
    """The task's metrics for aligned prediction and gold lists."""
    if task.kind == "classification":
        return classification_scores(predictions, golds, task.labels, style)
    if task.kind == "rating":
        return rating_scores(predictions, golds, style)
    if task.kind == "generation":
        return rouge_scores(predictions, golds)
    raise ValueError(f"{task.id} is open-ended: it is scored by the LLM judge, not by reference metrics")


def choice_score(task: TaskSpec, chosen: list[str], golds: list[str]) -> dict[str, float]:
    """The metrics of answers chosen by choice scoring (labels of `choice_labels(task)`), reported as `choice/<key>`:
    `accuracy` and `f1` (macro over the official label indices) for classification, `mae` and `rmse` for ratings."""
    if task.kind == "classification":
        return choice_classification_scores(chosen, golds, task.labels)
    if task.kind == "rating":
        labels = choice_labels(task)
        outside = [c for c in chosen if c not in labels]
        if outside:
            raise ValueError(f"chosen rating {outside[0]!r} is not one of {list(labels)}")
        return choice_rating_scores(chosen, golds)
    raise ValueError(f"{task.id} is a {task.kind} task: choice scoring needs a fixed label set")


def format_valid(task: TaskSpec, texts: list[str]) -> float:
    """The share of generated answers that are exactly one of the task's labels (`choice_labels`) after `strip()`:
    the official classification rule, applied to the ratings "1".."5" too ("4.0" or "4 stars" are not)."""
    return label_share(texts, choice_labels(task))


def evaluate_files(task: str, predictions: str | os.PathLike, golds: str | os.PathLike,
                   style: str = "official") -> dict[str, Any]:
    """Score a predictions file against a golds file; returns one flat dict (task, style, n, then the metrics)."""
    spec = get_task(task)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    if spec.kind == "open_ended":
        raise ValueError(f"{spec.id} is open-ended: it is scored by the LLM judge, not by reference metrics")
    predictions, golds = Path(predictions), Path(golds)
    gold_outputs = read_outputs(golds, spec)
    _check_golds(spec, gold_outputs, golds, style)
    predicted = read_outputs(predictions, spec)
    _check_same_ids(predicted, gold_outputs, predictions)
    ids = list(gold_outputs)
    metrics = score(spec, [predicted[i] for i in ids], [gold_outputs[i] for i in ids], style)
    return {"task": spec.id, "style": style, "n": len(ids), **metrics}
