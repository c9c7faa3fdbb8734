"""How well the trained hypernetwork fits the users it trained on, against the users it never saw.

    python scripts/choice_by_split.py [--checkpoint data/p2p] [--preset cpu]   (after `dvc repro train`)

Choice-scores P2P (the label the adapted model finds most likely, as the evaluate stage) on the labelled tasks'
queries of every split, `train` included, with each user's own profile embedding and with another user's of the
same split (`p2p_shuffled`). Own ≫ shuffled on `train` but not on the test splits: it learned its users, not the
mapping; own low on `train` too: it has not fitted them (underfitting, a recipe question). Prints one JSON line
per (task, split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p.config import load_config  # noqa: E402
from p2p.evaluation.answers import split_queries  # noqa: E402
from p2p.hyper.personalize import Personalizer  # noqa: E402
from p2p.models.choice import label_logprobs  # noqa: E402
from p2p.paths import Paths, load_task_data  # noqa: E402
from p2p.profiles.embeddings import ablate  # noqa: E402
from p2p.tasks import get_task  # noqa: E402
from p2p.tasks.registry import LABELLED_KINDS, choice_labels  # noqa: E402
from p2p.tasks.scoring import choice_score  # noqa: E402

SPLITS = ("train", "random_test", "ood_test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="data/p2p")
    parser.add_argument("--preset", default=None, help="the params.yaml preset (default: the file's `preset`)")
    args = parser.parse_args()
    cfg = load_config(ROOT / "params.yaml", preset=args.preset)
    paths = Paths(cfg, ROOT)
    p2p = Personalizer.from_checkpoint(ROOT / args.checkpoint, paths.model_cache, with_embedder=False)
    for data in (load_task_data(paths, dataset, task) for dataset, task in cfg.data.tasks()):
        spec = get_task(data.task)
        if spec.kind not in LABELLED_KINDS:
            continue
        labels = list(choice_labels(data.task))
        for split in SPLITS:
            pairs = split_queries(data.records, data.split[split])
            prompts = [spec.build_prompt(query.input) for _, query in pairs]
            golds = [query.output for _, query in pairs]
            own = np.stack([data.queries[query.id] for _, query in pairs])
            line = {"task": data.task, "split": split, "queries": len(pairs),
                    "users": len({record.user_id for record, _ in pairs})}
            for name, vectors in (("own", own), ("shuffled", ablate(own, [r.user_id for r, _ in pairs],
                                                                    "shuffled", cfg.seed))):
                scores = label_logprobs(p2p.model, p2p.tokenizer, prompts, labels, batch_size=16,
                                        row_context=p2p.row_adapters(vectors))
                metrics = choice_score(spec, [labels[i] for i in scores.choose()], golds)
                line |= {f"{name}_{key}": round(value, 3) for key, value in metrics.items()}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
