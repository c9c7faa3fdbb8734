"""A batch of adapters on disk: one safetensors file (`<kind>.A`, `<kind>.B`, row i = one user) and a JSON beside it
naming the rows. OPPU's stage writes it; evaluation reads it without importing any training code (so the
evaluation stages do not depend on the trainers in DVC's import graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p.io import atomic_path, read_json, write_json
from p2p.lora.hooks import Adapters


def save_adapters(path: Path, adapters: Adapters, rows: list[str], info: dict[str, Any]) -> None:
    """A batch of adapters as one safetensors file (`<kind>.A`, `<kind>.B`) plus `<name>.json` naming the rows."""
    from safetensors.torch import save_file

    tensors = {f"{k}.A": v.float().cpu().contiguous() for k, v in adapters.a.items()}
    tensors |= {f"{k}.B": v.float().cpu().contiguous() for k, v in adapters.b.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(path.with_suffix(".json"), {"rows": rows, **info})


def load_adapters(path: Path) -> tuple[Adapters, list[str], dict[str, Any]]:
    """(adapters, row names, info) written by `save_adapters`."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapters here; run the stage that trains them first")
    tensors = load_file(str(path))
    info = read_json(path.with_suffix(".json"))
    kinds = sorted({name.rsplit(".", 1)[0] for name in tensors})
    adapters = Adapters({k: tensors[f"{k}.A"] for k in kinds}, {k: tensors[f"{k}.B"] for k in kinds})
    return adapters, list(info.pop("rows")), info
