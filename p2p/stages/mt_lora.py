"""Stage `mt_lora`: the MT-LoRA baseline, one LoRA on the train stage's very samples without the profile.

Writes `mt_lora.dir` as a PEFT adapter directory (and train_history.json); a killed run resumes from its checkpoint
under `train.checkpoints`, named by the train stage's fingerprint of the samples and the mt_lora settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from p2p.baselines.lora_training import LoraRun
from p2p.baselines.mt_lora import train_mt_lora
from p2p.cache import content_key
from p2p.config import Config
from p2p.lora.peft import export_adapter
from p2p.paths import Paths
from p2p.stages.common import base_model, lora_shape
from p2p.stages.recorder import Recorder
from p2p.stages.train import all_samples, fingerprint
from p2p.training import Sample

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    result = mt_lora_stage(cfg, root)
    for point in result.history:
        rec.log_metrics({"loss": point["loss"], "grad_norm": point["grad_norm"]}, step=int(point["step"]))
    rec.log_metrics({"train_seconds": result.seconds, "steps": result.steps})
    rec.log_artifact(Paths(cfg, root).mt_lora, "mt_lora")


def checkpoint_path(cfg: Config, root: Path, samples: dict[str, list[Sample]]) -> Path:
    """The resumable state of this very run: named by P2P's training fingerprint and the mt_lora settings."""
    settings = cfg.mt_lora.model_dump(mode="json", exclude={"dir", "checkpoint_every"})
    return Paths(cfg, root).mt_lora_checkpoint(content_key(fingerprint(cfg, samples), settings)[:16])


def mt_lora_stage(cfg: Config, root: Path) -> LoraRun:
    """Train on the same samples as the `train` stage; writes `mt_lora.dir` as a PEFT adapter directory."""
    _, samples = all_samples(cfg, root, profiles=False)
    model, tokenizer, layout = base_model(cfg, root, training=True)
    torch.manual_seed(cfg.train_seed)
    checkpoint = checkpoint_path(cfg, root, samples)
    log.info("checkpoint: %s", checkpoint)
    run = train_mt_lora(model, tokenizer, layout, lora_shape(cfg), samples, cfg.mt_lora, cfg.train, cfg.train_seed,
                        checkpoint=checkpoint)
    out = Paths(cfg, root).mt_lora
    export_adapter(out, run.lora.layout, run.lora.lora, run.lora.adapters(1), cfg.model.base_llm, history=run.history)
    return run
