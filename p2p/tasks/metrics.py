"""Task metrics: the official LaMP definitions, and the P2P paper's variants as a labelled secondary.

Official = the LaMP benchmark's own evaluator (github.com/LaMP-Benchmark/LaMP, eval/evaluation.py), so numbers are
comparable with published LaMP results:
- classification: `str(x).strip()`, exact case-sensitive match into the fixed label list, anything else is index
  -1; accuracy on the indices; macro F1 over all K label indices (`labels=range(K)`), so -1 is always a miss and a
  label that is neither predicted nor gold adds an F1 of 0 to the average.
- rating: `float(x)`; an unparsable prediction becomes the extreme farthest from the gold (1.0 if |1-y| > |5-y|
  else 5.0, so a gold of exactly 3 gives 5.0); MAE and RMSE. A non-finite number ("nan", "inf") is unparsable here
  (the official script would report a NaN MAE), and a non-finite gold is an error.
- generation: ROUGE-1 and ROUGE-L F-measure from `rouge-score`, no stemmer, default tokenizer. The official script
  goes through Hugging Face `evaluate`, whose bootstrap aggregate is a resampled estimate of the mean; we report the
  plain mean over examples (what the bootstrap estimates, without its sampling noise).

P2P style (the authors' code): classification matches case-insensitively and reports weighted F1; rating takes the
first number in the text and drops unparsable predictions (reporting how many).

Choice scoring (p2p.models.choice: the answer is the label of highest likelihood) is scored on the chosen labels:
accuracy and macro F1 as the official classification metrics, MAE and RMSE of the chosen rating; `label_share` is
how often free generation's answers are exactly a label (the `format_valid` metric).

METEOR (reported by LongLaMP) is not provided: nltk's METEOR needs the WordNet corpus, which is not available
offline, and METEOR without its synonym stage would be a different metric under the same name.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

STYLES = ("official", "p2p")


def _check_pairs(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} golds")
    if not golds:
        raise ValueError("nothing to score: no examples")


def label_index(text: str, labels: Sequence[str], *, ignore_case: bool = False) -> int:
    """Index of the stripped text in `labels`, or -1 (a miss) when it is not exactly one of them."""
    text = str(text).strip()
    if ignore_case:
        text, labels = text.lower(), [label.lower() for label in labels]
    try:
        return list(labels).index(text)
    except ValueError:
        return -1


def classification_scores(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str],
                          style: str = "official") -> dict[str, float]:
    """Accuracy and F1 (official: macro over all labels, case-sensitive; p2p: weighted, case-insensitive).

    A gold outside the label list is a ValueError: it means the wrong task or a broken file, and the official
    script would silently count it as -1 (matching every unparsable prediction).
    """
    _check_pairs(preds, golds)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    ignore_case = style == "p2p"
    gold_idx = [label_index(g, labels, ignore_case=ignore_case) for g in golds]
    if -1 in gold_idx:
        bad = golds[gold_idx.index(-1)]
        raise ValueError(f"gold {bad!r} is not one of the {len(labels)} labels")
    pred_idx = [label_index(p, labels, ignore_case=ignore_case) for p in preds]
    accuracy = sum(p == g for p, g in zip(pred_idx, gold_idx)) / len(gold_idx)
    average = "macro" if style == "official" else "weighted"
    from sklearn.metrics import f1_score  # imported here: sklearn's import is slow, and most callers never need it

    f1 = f1_score(gold_idx, pred_idx, labels=list(range(len(labels))), average=average, zero_division=0.0)
    return {"accuracy": float(accuracy), f"f1_{average}": float(f1)}


def finite_number(text: str) -> float | None:
    """`float(text)` when that is a finite number, else None: "nan", "inf" and "1e999" are no rating."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def gold_rating(gold: str) -> float:
    """A gold rating as a number; anything but a finite number is a ValueError (the wrong task or a broken file)."""
    value = finite_number(gold)
    if value is None:
        raise ValueError(f"gold rating {gold!r} is not a number")
    return value


def official_rating(pred: str, gold: float) -> float:
    """The official reading of one rating: `float(pred)`, or the extreme farthest from the gold if that fails (a
    non-finite number fails too: the official script would score NaN, and one NaN makes the MAE NaN)."""
    value = finite_number(pred)
    if value is None:
        return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0
    return value


_NUMBER = re.compile(r"-?\d+\.?\d*")


def first_number(text: str) -> float | None:
    """P2P reading of a rating: the whole text as a float, else the first number in it, else None (a non-finite
    value counts as no number)."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        match = _NUMBER.search(text)
        return finite_number(match.group()) if match else None
    return value if math.isfinite(value) else None


def _mae_rmse(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    errors = [p - g for p, g in pairs]
    return sum(abs(e) for e in errors) / len(errors), math.sqrt(sum(e * e for e in errors) / len(errors))


def rating_scores(preds: Sequence[str], golds: Sequence[str], style: str = "official") -> dict[str, float | int | None]:
    """MAE and RMSE of ratings. Golds must be numbers (ValueError otherwise).

    p2p style also returns `n_scored` and `n_dropped`; when every prediction is dropped, MAE and RMSE are None.
    """
    _check_pairs(preds, golds)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    gold_values = [gold_rating(g) for g in golds]
    if style == "official":
        mae, rmse = _mae_rmse([(official_rating(p, g), g) for p, g in zip(preds, gold_values)])
        return {"mae": mae, "rmse": rmse}
    pairs = [(v, g) for v, g in ((first_number(p), g) for p, g in zip(preds, gold_values)) if v is not None]
    mae, rmse = _mae_rmse(pairs) if pairs else (None, None)
    return {"mae": mae, "rmse": rmse, "n_scored": len(pairs), "n_dropped": len(golds) - len(pairs)}


def choice_classification_scores(chosen: Sequence[str], golds: Sequence[str],
                                 labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro F1 (over all label indices, as the official F1) of answers chosen from the labels by
    choice scoring. Every chosen answer and every gold must be one of the labels (ValueError otherwise)."""
    _check_pairs(chosen, golds)
    outside = [c for c in chosen if str(c) not in labels]
    if outside:
        raise ValueError(f"chosen answer {outside[0]!r} is not one of the {len(labels)} labels")
    scores = classification_scores(chosen, golds, labels, "official")
    return {"accuracy": scores["accuracy"], "f1": scores["f1_macro"]}


def choice_rating_scores(chosen: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """MAE and RMSE of ratings chosen by choice scoring (each a number, e.g. the label "4"), against numeric golds."""
    _check_pairs(chosen, golds)
    pairs = []
    for c, g in zip(chosen, golds):
        value = finite_number(c)
        if value is None:
            raise ValueError(f"chosen rating {c!r} is not a number")
        pairs.append((value, gold_rating(g)))
    mae, rmse = _mae_rmse(pairs)
    return {"mae": mae, "rmse": rmse}


def label_share(texts: Sequence[str], labels: Sequence[str]) -> float:
    """The share of texts that are exactly one of the labels under the official rule (`strip()`, then a
    case-sensitive exact match): how often free generation answers in the task's format. No texts: ValueError."""
    if not texts:
        raise ValueError("nothing to score: no answers")
    return sum(label_index(t, labels) != -1 for t in texts) / len(texts)


@functools.cache
def _rouge() -> Any:
    """The ROUGE scorer, imported on first use: `rouge_score` imports nltk and scipy (~3 s), which every process
    that imports this module (each stage, the CLI) would pay otherwise."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def rouge_per_example(preds: Sequence[str], golds: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1 and ROUGE-L F-measure of each example (texts stripped, as the official script does)."""
    _check_pairs(preds, golds)
    out: dict[str, list[float]] = {"rouge1": [], "rougeL": []}
    for pred, gold in zip(preds, golds):
        scores = _rouge().score(str(gold).strip(), str(pred).strip())  # score(target, prediction)
        for key, values in out.items():
            values.append(scores[key].fmeasure)
    return out


def rouge_scores(preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measure over examples (texts stripped, as the official script does)."""
    return {key: sum(values) / len(values) for key, values in rouge_per_example(preds, golds).items()}


#: Metrics where lower is better (the error metrics of ratings); every other metric: higher is better.
LOWER_IS_BETTER = ("mae", "rmse")


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of metric `key` (`mae`, `official/rmse`, ...) is the better one."""
    return key.rsplit("/", 1)[-1] in LOWER_IS_BETTER
