"""Save one generated adapter as a standard PEFT LoRA directory (adapter_config.json + adapter_model.safetensors).

`peft.PeftModel.from_pretrained(base, dir)` and vLLM's `--lora-modules` / dynamic loading read it as any other
LoRA. The config says rsLoRA, so PEFT's scaling (alpha / sqrt(r)) equals the hooks'. An adapter is user data (it
can leak the profile it was made from, paper §Ethics): it is written only where the caller asks, atomically, and
it replaces only a directory that is empty or an adapter directory of ours (`check_out_dir`), never a user's files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from p2p.io import check_replaceable, write_dir
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapter_state_dict

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
HISTORY_NAME = "train_history.json"  # beside a trained adapter (MT-LoRA): its loss per step


def _ours(entry: Path) -> bool:
    return entry.name in (CONFIG_NAME, WEIGHTS_NAME, HISTORY_NAME) and entry.is_file()


def check_out_dir(out_dir: str | os.PathLike, force: bool = False) -> None:
    """`out_dir` may be written: absent, empty, an adapter directory `export_adapter` wrote, or `force`."""
    check_replaceable(out_dir, _ours, force=force)


def export_adapter(out_dir: str | os.PathLike, layout: TargetLayout, lora: LoraShape, adapters: Adapters,
                   base_model: str, row: int = 0, force: bool = False,
                   history: list[dict[str, float]] | None = None) -> Path:
    """Write row `row` of `adapters` as a PEFT adapter directory at `out_dir` (replacing it whole); returns the path.

    `history`, when given, goes into the same directory as train_history.json; `force` replaces whatever is there.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(layout.kinds), use_rslora=lora.rslora, bias="none",
                        task_type="CAUSAL_LM", base_model_name_or_path=base_model)
    tensors = {name: t.float().cpu() for name, t in adapter_state_dict(layout, adapters, row).items()}

    def fill(tmp: Path) -> None:
        config.save_pretrained(tmp)
        # PEFT keeps target_modules as a set, so its saved order follows the process's string hash seed: sort it,
        # so the same adapter is the same bytes in every run (DVC hashes this file)
        saved = json.loads((tmp / CONFIG_NAME).read_text(encoding="utf-8"))
        saved["target_modules"] = sorted(saved["target_modules"])
        (tmp / CONFIG_NAME).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        if history is not None:
            (tmp / HISTORY_NAME).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")

    return write_dir(out_dir, fill, ours=_ours, force=force)


def load_adapter(adapter_dir: str | os.PathLike, layout: TargetLayout) -> Adapters:
    """A PEFT LoRA directory written by `export_adapter` (or any with the same targets) as a one-row `Adapters`."""
    import torch
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter weights here; run the stage that trains the adapter first")
    tensors = load_file(str(path))
    a, b = {}, {}
    for kind, names in layout.names.items():
        try:
            a[kind] = torch.stack([tensors[f"base_model.model.{n}.lora_A.weight"] for n in names])[None]
            b[kind] = torch.stack([tensors[f"base_model.model.{n}.lora_B.weight"] for n in names])[None]
        except KeyError as err:
            raise ValueError(f"{path}: no weight {err} for this base model's {kind} layers") from None
    return Adapters(a, b)
