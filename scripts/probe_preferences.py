"""How much of each user's planted preference a linear probe reads from the profile embeddings P2P is given.

    python scripts/probe_preferences.py [--preset cpu]        (after `dvc repro split`: it reads the embed stage's
                                                                query embeddings, the splits and the planted truth)

A ceiling that is not the hypernetwork's: if a logistic regression on the `train` users' query embeddings already
picks the preferred answer for the test users, the information is in the embedding and what P2P misses is in its
training. Per synthetic task and test split, the probe is fitted on the `train` users (inputs standardised by their
mean and std, as `hyper.standardize_inputs`) and scored like choice scoring:
- LaMP-2M: one classifier per tag (is it one of the user's two?); the answer is the candidate named in the
  description with the highest probability. Accuracy; best user-blind answer about 1/3.
- LaMP-3: a classifier of the user's rating bias; the answer is the review's base score plus that bias, clipped.
  MAE. This one also applies the generator's own base-score rule, so it is an optimistic bound.
Prints one line per (task, split, C) and, last, the JSON of the best C on the OOD test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p.config import load_config  # noqa: E402
from p2p.data.synth import MOVIE_TAGS, QUERY_PREFIXES, _clip_score, named_tags, review_base_score  # noqa: E402
from p2p.io import read_json  # noqa: E402
from p2p.paths import Paths, query_embeddings, read_prepared  # noqa: E402

REGULARISATION = (0.1, 1.0, 10.0, 100.0)  # C of the logistic regressions (inverse strength)


def probe(task: str, paths: Paths, split_name: str, c: float) -> float:
    split = read_json(paths.split("synth", task))
    planted = read_json(paths.synth_task(task) / "preferences.json")["users"]
    vectors = query_embeddings(paths.embeddings("synth", task))
    queries = [(record.user_id, q) for record in read_prepared(paths.prepared("synth", task)) for q in record.queries]
    train = [(u, q) for u, q in queries if u in set(split["train"])]
    test = [(u, q) for u, q in queries if u in set(split[split_name])]
    x_train = np.stack([vectors[q.id] for _, q in train])
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)

    def inputs(pairs):
        return (np.stack([vectors[q.id] for _, q in pairs]) - mean) / std

    text = [q.input[len(QUERY_PREFIXES[task]):] for _, q in test]
    if task == "LaMP-2M":
        prob = np.stack([LogisticRegression(C=c, max_iter=5000).fit(
            inputs(train), [tag in planted[u]["tags"] for u, _ in train]).predict_proba(inputs(test))[:, 1]
                         for tag in MOVIE_TAGS], axis=1)
        picks = [max(named_tags(t), key=lambda tag: prob[i, MOVIE_TAGS.index(tag)]) for i, t in enumerate(text)]
        return float(np.mean([p == q.output for p, (_, q) in zip(picks, test)]))
    bias = LogisticRegression(C=c, max_iter=5000).fit(inputs(train), [planted[u]["bias"] for u, _ in train])
    guesses = bias.predict(inputs(test))
    return float(np.mean([abs(_clip_score(review_base_score(t) + int(b)) - int(q.output))
                          for t, b, (_, q) in zip(text, guesses, test)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None)
    args = p.parse_args()
    cfg = load_config(ROOT / "params.yaml", args.preset)
    paths = Paths(cfg, ROOT)
    tasks = [t for source in cfg.data.sources if source.dataset == "synth" for t in source.tasks
             if t in ("LaMP-2M", "LaMP-3")]
    best = {}
    for task in tasks:
        metric = "accuracy" if task == "LaMP-2M" else "mae"
        for split in ("ood_test", "random_test"):
            scores = {c: probe(task, paths, split, c) for c in REGULARISATION}
            for c, score in scores.items():
                print(f"{task:8s} {split:12s} C={c:<6g} {metric} {score:.3f}")
            if split == "ood_test":
                pick = max(scores, key=scores.get) if metric == "accuracy" else min(scores, key=scores.get)
                best[task] = {"C": pick, metric: round(scores[pick], 3)}
    print(json.dumps({"preset": cfg.preset, "ood_test": best}))


if __name__ == "__main__":
    main()
