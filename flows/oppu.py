"""Stage `oppu`: a fresh LoRA per test user, trained on that user's history only (One PEFT Per User).

Each user is its own Prefect task (`train-user`), so the UI shows every user's training and a failure names the
user; a user's finished adapter is kept under train.checkpoints, so a rerun after a failure trains only the rest.
Writes data/oppu/<dataset>/<task>.safetensors (the adapters stacked in user order) and .json (users, seconds and
steps per user); MLflow gets the seconds per user of every task.
"""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT
from p2p.baselines import oppu
from p2p.baselines.lora_training import LoraRun
from p2p.baselines.mt_lora import lora_shape
from p2p.config import Config, load_config
from p2p.data.records import UserRecord
from p2p.hyper.lora import find_targets, freeze
from p2p.io import read_json
from p2p.models.loading import load_causal_lm
from p2p.stages import read_prepared, split_path
from p2p.tracking import stage_run


@task(name="train-user", cache_policy=NONE, task_run_name="oppu-{record.user_id}")
def train_user(model, tokenizer, layout, lora, record: UserRecord, cfg: Config) -> LoraRun:
    return oppu.train_user(model, tokenizer, layout, lora, record, cfg, oppu.checkpoint_path(cfg, ROOT, record))


@flow(name="oppu")
def oppu_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("oppu", cfg, root=ROOT) as run:
        model, tokenizer = load_causal_lm(cfg.model.base_llm, ROOT / cfg.model.cache_dir, seed=cfg.seed,
                                          device=cfg.model.device)
        freeze(model)
        layout, lora = find_targets(model, tuple(cfg.lora.targets)), lora_shape(cfg)
        for dataset, task_id in cfg.data.tasks():
            records = read_prepared(cfg, ROOT, dataset, task_id)
            users = oppu.evaluated_users(read_json(split_path(cfg, ROOT, dataset, task_id)), cfg.evaluate.splits)
            stats = oppu.oppu_task(records, users, model, tokenizer, layout, lora, cfg,
                                   oppu.adapters_path(cfg, ROOT, dataset, task_id),
                                   train=lambda record: train_user(model, tokenizer, layout, lora, record, cfg))
            get_run_logger().info("%s/%s: %d users, %.2f s per user", dataset, task_id, stats["users"],
                                  stats["seconds_per_user"])
            run.log_metrics(stats, prefix=f"{dataset}/{task_id}/")


if __name__ == "__main__":
    oppu_flow()
