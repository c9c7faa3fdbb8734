"""The precision the base model computes in: fp32, or bf16 autocast where the hardware multiplies bf16 natively.

Weights (and the optimizer state of whatever trains) stay fp32; only the matrix products run in bf16 under
`torch.autocast`. On a CPU with AMX or AVX512-BF16 this makes a SmolLM2-135M forward and backward about twice as
fast (docs/benchmarks.md, `p2p bench passes`); on one without them bf16 would be emulated and slower, so `auto`
keeps fp32 there. The summaries' model, which only generates, holds bf16 weights instead
(p2p.stages.common.generation_backend). A GPU computes in bf16 under `auto` (as the project always has) and in fp32
only when asked.

The loaded model carries its compute dtype (`set_compute_dtype`), so every place that runs it (generation, choice
scoring, training of the hypernetwork and of plain LoRAs) enters the same autocast with `autocast(model)` and needs
no setting of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "bf16"]

#: /proc/cpuinfo flags of native bf16 matrix instructions (x86: AMX tiles, AVX512-BF16 dot products).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

_ATTRIBUTE = "p2p_compute_dtype"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (a flag of NATIVE_BF16_FLAGS). torch has no public test for it:
    `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is also true on plain AVX512, where oneDNN emulates bf16."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def compute_dtype(precision: Precision, device: str | torch.device) -> torch.dtype:
    """The dtype matrix products run in: `auto` is bf16 on a GPU and on a CPU with native bf16, fp32 elsewhere."""
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def set_compute_dtype(model: Any, dtype: torch.dtype) -> None:
    """Record on `model` the dtype `autocast(model)` computes in."""
    setattr(model, _ATTRIBUTE, dtype)


def model_compute_dtype(model: Any) -> torch.dtype:
    """The dtype `model` computes in (fp32 unless `set_compute_dtype` said otherwise)."""
    import torch

    return getattr(model, _ATTRIBUTE, torch.float32)


def autocast(model: Any) -> contextlib.AbstractContextManager:
    """Autocast to the model's compute dtype on the model's device; nothing when that is fp32 (or was never set)."""
    import torch

    dtype = model_compute_dtype(model)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


@contextlib.contextmanager
def training_kernels(model: Any) -> Iterator[None]:
    """While adapters train on the frozen `model`: the cheaper kernels that give the same training, restored after.

    - Under bf16 autocast, every frozen linear layer holds a bf16 copy of its weight, exactly what autocast would
      cast it to on each call (and again for backward), so the products are unchanged and the casts are gone. A
      weight shared with the input embeddings (a tied output layer) stays fp32, so the residual stream does too.
    - On a CPU, eager attention instead of SDPA: SDPA's CPU flash-attention backward takes seven times its forward.

    Together a SmolLM2-135M training step runs about 1.2x faster on 2 cores (1.21x in `p2p bench passes`).
    """
    import torch

    embeddings = model.get_input_embeddings().weight
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if model_compute_dtype(model) == torch.bfloat16:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and weight is not embeddings and not weight.requires_grad \
                    and weight.dtype == torch.float32:
                swapped.append((weight, weight.data))
                weight.data = weight.data.to(torch.bfloat16)
    attention = model.config._attn_implementation
    eager = next(model.parameters()).device.type == "cpu" and attention != "eager"
    if eager:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        for weight, original in swapped:
            weight.data = original
        if eager:
            model.set_attn_implementation(attention)
