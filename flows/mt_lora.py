"""Stage `mt_lora`: one LoRA on every train user's (input, output) pairs without user context (the MT-LoRA baseline).

Writes data/mt_lora (a PEFT adapter directory and train_history.json); the loss per step goes to MLflow.
"""

from prefect import flow

from flows import ROOT, run_name, run_stage
from p2p.config import load_config
from p2p.layout import Layout
from p2p.stages import mt_lora
from p2p.tracking import stage_run


@flow(name="mt_lora", flow_run_name=run_name("mt_lora"))
def mt_lora_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("mt_lora", cfg, root=ROOT) as run:
        result = mt_lora.mt_lora_stage(cfg, ROOT)
        for point in result.history:
            run.log_metrics({"loss": point["loss"], "grad_norm": point["grad_norm"]}, step=int(point["step"]))
        run.log_metrics({"train_seconds": result.seconds, "steps": result.steps})
        run.log_artifact(Layout(cfg, ROOT).mt_lora, "mt_lora")


if __name__ == "__main__":
    run_stage(mt_lora_flow)
