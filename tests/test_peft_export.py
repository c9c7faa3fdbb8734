"""An exported adapter is the same bytes in every process: PEFT keeps target_modules as a set, whose order follows
the string hash seed, and DVC hashes the adapter directory (the mt_lora stage's output)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

EXPORT = """
import sys, torch
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout
from p2p.lora.peft import export_adapter
kinds = ("q_proj", "v_proj", "k_proj", "o_proj")
layout = TargetLayout({k: (f"model.layers.0.self_attn.{k}",) for k in kinds}, (0,), {k: (8, 8) for k in kinds})
g = torch.Generator().manual_seed(0)
adapters = Adapters({k: torch.randn(1, 1, 2, 8, generator=g) for k in kinds},
                    {k: torch.randn(1, 1, 8, 2, generator=g) for k in kinds})
export_adapter(sys.argv[1], layout, LoraShape(kinds, 2, 4.0, 0.0), adapters, "tiny-random-qwen2")
"""


def export_in_a_process(out: Path, hash_seed: int, umask: int = 0o022) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    subprocess.run([sys.executable, "-c", EXPORT, str(out)], check=True, env=env, timeout=300, umask=umask)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_the_same_adapter_exports_to_the_same_bytes_whatever_the_hash_seed(tmp_path):
    runs = [export_in_a_process(tmp_path / f"seed{seed}", seed) for seed in (0, 1)]
    assert set(runs[0]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert all(run == runs[0] for run in runs[1:])
    assert '"target_modules": [\n    "k_proj",\n    "o_proj",\n    "q_proj",\n    "v_proj"\n  ]' in \
        (tmp_path / "seed0" / "adapter_config.json").read_text()


def test_an_adapter_directory_gets_the_modes_the_umask_allows(tmp_path):
    """A teammate can read what the umask lets them (mkdtemp made it 0700, safetensors its weights 0600)."""
    for umask, dir_mode, file_mode in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        out = tmp_path / f"umask{umask:o}"
        export_in_a_process(out, 0, umask)
        assert out.stat().st_mode & 0o777 == dir_mode
        assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
            "adapter_config.json": file_mode, "adapter_model.safetensors": file_mode}
