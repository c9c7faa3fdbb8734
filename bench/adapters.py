"""Adapter generation benchmark: milliseconds per user to turn profile embeddings into a full set of LoRA weights.

    p2p bench adapters --preset paper [--users 1,16,64] [--repeats 5] [--device auto]

Runs the preset's hypernetwork (its size, its embedder's input size, random weights: speed does not depend on
weight values) on batches of users and reports ms per user for each batch size, in two precisions:
- `autocast`: fp32 weights under the preset's `model.precision` (bf16 autocast on a GPU and on a CPU with native
  bf16, else fp32): what training and evaluation run;
- `bf16`: the weights themselves in bf16 (GPU only), the serving copy one would deploy.
The base model is never loaded: its target layers and shapes are read from its architecture on the meta device,
so the paper preset's 7B layout costs nothing here. Not included: embedding the profile text (the embedder's
forward) — the paper's 570 ms per user covers both; `p2p bench deploy` times the whole path on the cpu preset.

The memory floor of one call is one pass over the hypernetwork's weights plus writing the adapters; this run
measures the device's copy bandwidth (a large tensor copy) and prints that floor beside every measurement, and
the arithmetic per user (GFLOP), which bounds large batches instead.
Last line: one JSON object.
"""

from __future__ import annotations

import time

import torch
from common import BENCH_TASK, ROOT, device_name, parser, random_hypernetwork, report, synchronize

from p2p.config import load_config
from p2p.lora.targets import target_layout
from p2p.models.loading import resolve_device
from p2p.paths import Paths
from p2p.stages.common import lora_shape


def copy_bandwidth(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a device-to-device tensor copy (each byte read once and written once)."""
    source = torch.rand(megabytes * 2**20 // 4, dtype=torch.float32, device=device)  # written: no zero-page reads
    target = torch.zeros_like(source)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def flops_per_user(hyper) -> float:
    """Multiply-adds x 2 of one user's adapters: the user code once, then every (module type, layer) row through the
    shared trunk and its own module type's head."""
    def weights(module) -> int:
        return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight") and p.dim() == 2)

    rows = len(hyper.layout.kinds) * len(hyper.layout.layers)
    trunk = weights(hyper.mixer) + weights(hyper.blocks) + weights(hyper.to_head)
    heads = len(hyper.layout.layers) * weights(hyper.heads)
    return 2.0 * (weights(hyper.user) + rows * trunk + heads)


def time_call(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", default="1,16,64", help="batch sizes (users per hypernetwork call), comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "params.yaml", args.preset)
    device = torch.device(resolve_device(args.device))
    layout = target_layout(cfg.model.base_llm, Paths(cfg, ROOT).model_cache, lora_shape(cfg).targets)
    hyper = random_hypernetwork(cfg, layout).to(device).eval()
    parameters = sum(p.numel() for p in hyper.parameters())
    per_user = sum(len(layout.layers) * cfg.lora.rank * (d_in + d_out) for d_in, d_out in layout.shapes.values())
    bandwidth, flops = copy_bandwidth(device), flops_per_user(hyper)
    print(f"{cfg.model.base_llm}: {len(layout.layers)} layers x {layout.kinds}, {per_user:,} adapter numbers per "
          f"user; hypernetwork {parameters / 1e6:.1f} M parameters, {flops / 1e9:.1f} GFLOP per user; copy "
          f"bandwidth {bandwidth / 1e9:.1f} GB/s")

    from p2p.models.precision import autocast, compute_dtype, set_compute_dtype

    compute = compute_dtype(cfg.model.precision, device)
    set_compute_dtype(hyper, compute)
    precisions = {"autocast": (hyper, torch.float32)}
    if device.type == "cuda":
        precisions["bf16"] = (random_hypernetwork(cfg, layout).to(device, torch.bfloat16).eval(), torch.bfloat16)
    results: dict[str, object] = {}
    with torch.inference_mode():
        for label, (net, dtype) in precisions.items():
            weight_bytes = parameters * torch.finfo(dtype).bits // 8
            for users in (int(u) for u in args.users.split(",")):
                profiles = torch.randn(users, hyper.embed_dim, device=device, dtype=dtype)

                def call(net=net, profiles=profiles) -> None:
                    with autocast(hyper):
                        net(profiles, BENCH_TASK)

                seconds = time_call(call, device, args.repeats)
                out_bytes = users * per_user * (2 if compute == torch.bfloat16 else 4)  # autocast writes bf16
                floor = (weight_bytes + out_bytes) / bandwidth
                results[f"ms_per_user_{label}_{users}"] = round(1000 * seconds / users, 4)
                results[f"floor_ms_per_user_{label}_{users}"] = round(1000 * floor / users, 4)
                print(f"{label:8s} {users:4d} users/call: {1000 * seconds:9.2f} ms per call, "
                      f"{1000 * seconds / users:8.3f} ms per user (floor {1000 * floor / users:.3f}: "
                      f"{(weight_bytes + out_bytes) / 1e9:.2f} GB at the copy bandwidth)")
    report({"preset": cfg.preset, "model": cfg.model.base_llm, "embedder": cfg.model.embedder,
            "device": device_name(device), "hyper_params_m": round(parameters / 1e6, 1),
            "adapter_numbers_per_user": per_user, "gflop_per_user": round(flops / 1e9, 2),
            "copy_gb_per_s": round(bandwidth / 1e9, 1),
            "paper_ms_per_user": 570, **results})


if __name__ == "__main__":
    main()
