"""Stage `fetch`: generate the embedded benchmark under `data.raw_dir/synth`, the stage's only output.

Real datasets are not this stage's: DVC deletes a stage's outputs before it runs the stage, so files a user
downloaded must never be one (an offline rerun would delete them and could not fetch them again). They are inputs
instead, folders `data.raw_dir/<dataset>` that `p2p data fetch` fills (only missing files) or a user fills by hand,
and that `dvc add` tracks; the prepare stage reads them (docs/data.md#real-data-dvc-tracked-inputs).
"""

from __future__ import annotations

import logging
from pathlib import Path

from p2p.config import Config
from p2p.data import synth
from p2p.paths import Paths
from p2p.stages.recorder import Recorder

log = logging.getLogger(__name__)


def generate_benchmark(cfg: Config, root: Path) -> list[Path]:
    """Generate the `synth` tasks of `data.sources` (`data.synth` sizes, `seed`); returns their task directories.

    Without any, the output folder is left empty: DVC needs the stage's output to exist, and no real source's
    files are ever written here.
    """
    out = Paths(cfg, root).raw / "synth"
    tasks = [task for dataset, task in cfg.data.tasks() if dataset == "synth"]
    if not tasks:
        out.mkdir(parents=True, exist_ok=True)
        return []
    s = cfg.data.synth
    written = synth.generate(out, seed=cfg.seed, users=s.users, history_items=s.history_items,
                             queries_per_user=s.queries_per_user, tasks=tuple(tasks))
    return sorted(written.values())


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    tasks = generate_benchmark(cfg, root)
    log.info("synth: %d tasks generated", len(tasks))
    for dataset in sorted({source.dataset for source in cfg.data.sources} - {"synth"}):
        log.info("%s: an input under %s/%s, read by the prepare stage (get it with `p2p data fetch %s`, then `dvc add` "
                 "the folder)", dataset, cfg.data.raw_dir, dataset, dataset)
    rec.log_metrics({"synth_tasks": len(tasks)})
