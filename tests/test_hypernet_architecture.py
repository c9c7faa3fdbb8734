"""The hypernetwork's two architectures (`hyper.architecture`), input standardisation switch, and the authors' LR
schedule.

`released` must have exactly the parameters of the authors' module (cf-x/P2P src/hyper_llm_modulator/
hyper_modulator.py, `HyperModulator` with `encoder_type=linear`, `shared_AB_head=False`, `autoreg_gen=False`, no
fusion, as scripts/uv_train_p2p_qwen_unified.sh runs it); `ours` must be the module committed before the option
existed (golden values below, computed with that code).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from p2p.config import load_config
from p2p.hyper.checkpoint import META, HyperMeta, load_hypernetwork, read_meta, save_hypernetwork
from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.lora.hooks import LoraShape, TargetLayout
from p2p.stages.train import fingerprint
from p2p.training import warmup_linear

ROOT = Path(__file__).resolve().parents[1]

# The paper's run: Qwen2.5-7B-Instruct (28 layers; q_proj 3584 -> 3584, v_proj 3584 -> 4 KV heads x 128 = 512),
# Qwen3-Embedding-4B profiles (2560), r = 8, hypernet_latent_size 1024, head_in_size 2048
# (cf-x/P2P configs/hyper_lora_p13n_unified.yaml, scripts/uv_train_p2p_qwen_unified.sh,
# src/hyper_llm_modulator/utils/model_loading.py get_peft_config: r=8).
PAPER_EMBED, PAPER_LAYERS, PAPER_SHAPES = 2560, 28, {"q_proj": (3584, 3584), "v_proj": (3584, 512)}


def layout(n_layers: int, shapes: dict[str, tuple[int, int]]) -> TargetLayout:
    return TargetLayout(names={k: tuple(f"model.layers.{i}.self_attn.{k}" for i in range(n_layers)) for k in shapes},
                        layers=tuple(range(n_layers)), shapes=shapes)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def authors_trainable_parameters(embed: int, latent: int, head_in: int, rank: int, n_layers: int,
                                 shapes: dict[str, tuple[int, int]]) -> int:
    """Their module's trainable parameters, layer by layer from cf-x/P2P src/hyper_llm_modulator/hyper_modulator.py.

    (Their AB_offset, mean_recon_target and std_recon_target are zero `requires_grad=False` LoRA-sized
    ParameterDicts that never train; they are left out.)"""
    lin = lambda i, o: i * o + o  # noqa: E731  nn.Linear with bias
    norm = lambda w: 2 * w  # noqa: E731  nn.LayerNorm
    task_encoder = lin(embed, latent // 2) + norm(latent // 2)  # TaskEncoder: Linear + LayerNorm
    depth = n_layers * (latent // 4) + norm(latent // 4)  # layer_depth_encoder: Embedding + LayerNorm
    kind = len(shapes) * (latent // 4) + norm(latent // 4)  # layer_type_encoder: Embedding + LayerNorm
    mixer = lin(latent, 4 * latent) + lin(4 * latent, latent)  # Dropout, Linear, SiLU, Dropout, Linear, SiLU, Dropout
    residual = norm(latent) + lin(latent, 4 * latent) + lin(4 * latent, latent)  # MLPResidualBlock, pre-LayerNorm
    mlp3 = norm(latent) + lin(latent, 4 * latent) + lin(4 * latent, head_in)  # LayerNorm, Linear, ..., Linear, SiLU
    heads = sum(lin(head_in, rank * (d_in + d_out)) for d_in, d_out in shapes.values())  # one per module type
    return task_encoder + depth + kind + mixer + 2 * residual + mlp3 + heads  # mlp1 and mlp2: two residual blocks


def authors_module(embed: int, latent: int, head_in: int, rank: int, n_layers: int,
                   shapes: dict[str, tuple[int, int]]) -> nn.Module:
    """Their layers rebuilt in torch from the same file (shapes only; for counting)."""
    def residual() -> nn.Sequential:
        return nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(0.05),
                             nn.Linear(4 * latent, latent), nn.SiLU(), nn.Dropout(0.05))

    return nn.ModuleDict({
        "task_encoder": nn.Sequential(nn.Linear(embed, latent // 2), nn.LayerNorm(latent // 2)),
        "layer_depth_encoder": nn.Sequential(nn.Embedding(n_layers, latent // 4), nn.LayerNorm(latent // 4)),
        "layer_type_encoder": nn.Sequential(nn.Embedding(len(shapes), latent // 4), nn.LayerNorm(latent // 4)),
        "mixer": nn.Sequential(nn.Dropout(0.05), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(0.05),
                               nn.Linear(4 * latent, latent), nn.SiLU(), nn.Dropout(0.05)),
        "mlp1": residual(), "mlp2": residual(),
        "mlp3": nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(0.05),
                              nn.Linear(4 * latent, head_in), nn.SiLU()),
        "heads": nn.ModuleDict({m: nn.Linear(head_in, rank * (i + o)) for m, (i, o) in shapes.items()}),
    })


def test_released_architecture_has_the_authors_parameter_count_at_the_paper_size():
    with torch.device("meta"):
        ours = HyperNetwork(PAPER_EMBED, layout(PAPER_LAYERS, PAPER_SHAPES), LoraShape(rank=8),
                            HyperShape(1024, 2048, architecture="released", standardize_inputs=False), ("t",))
        theirs = authors_module(PAPER_EMBED, 1024, 2048, 8, PAPER_LAYERS, PAPER_SHAPES)
    expected = authors_trainable_parameters(PAPER_EMBED, 1024, 2048, 8, PAPER_LAYERS, PAPER_SHAPES)
    assert expected == 223_736_832
    assert count(theirs) == expected
    assert count(ours) == expected
    assert ours.describe()["head_parameters"] == 184_639_488
    # `ours` at the same size: the projection to head_in is one Linear instead of their two-layer MLP
    with torch.device("meta"):
        mine = HyperNetwork(PAPER_EMBED, layout(PAPER_LAYERS, PAPER_SHAPES), LoraShape(rank=8), HyperShape(1024, 2048),
                            ("t",))
    their_mlp3 = 2 * 1024 + (1024 * 4096 + 4096) + (4096 * 2048 + 2048)
    our_to_head = 2 * 1024 + (1024 * 2048 + 2048)
    assert count(mine) == 213_246_976 == expected - their_mlp3 + our_to_head


@pytest.mark.parametrize("latent,head_in,embed,n_layers", [(32, 48, 16, 3), (128, 256, 384, 30)])
def test_released_architecture_matches_the_authors_count_at_other_sizes(latent, head_in, embed, n_layers):
    shapes = {"q_proj": (24, 24), "v_proj": (24, 8)}
    with torch.device("meta"):
        ours = HyperNetwork(embed, layout(n_layers, shapes), LoraShape(rank=4),
                            HyperShape(latent, head_in, architecture="released"), ("t",))
        theirs = authors_module(embed, latent, head_in, 4, n_layers, shapes)
    assert count(ours) == count(theirs) == authors_trainable_parameters(embed, latent, head_in, 4, n_layers, shapes)


def _small(shape: HyperShape, tasks: tuple[str, ...] = ("t",)) -> tuple[HyperNetwork, torch.Tensor]:
    torch.manual_seed(0)
    hyper = HyperNetwork(16, layout(3, {"q_proj": (24, 24), "v_proj": (24, 8)}), LoraShape(rank=4, alpha=8.0), shape,
                         tasks)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 16, generator=g) * 3 + 1
    hyper.fit_input_scaling({task: x + 4 * i for i, task in enumerate(tasks)})  # task i: shifted by 4i
    with torch.no_grad():  # move the heads off their init so the outputs depend on every layer
        for p in hyper.heads.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return hyper.eval(), x


def test_ours_architecture_is_unchanged():
    """Golden values from the code before `hyper.architecture` existed (commit 5543a86): same parameters, same outputs
    (one task: its statistics are those the code then pooled over all samples)."""
    hyper, x = _small(HyperShape(latent=32, head_in=48))
    assert hyper.describe() == {"parameters": 42888, "head_parameters": 15680}
    assert [k for k in hyper.state_dict() if "depth_norm" in k or "module_norm" in k] == []
    with torch.no_grad():
        out = hyper(x[:2], "t")
    sums = [(out.a[k].double().sum().item(), out.b[k].double().sum().item(), out.b[k].double().abs().sum().item())
            for k in ("q_proj", "v_proj")]
    golden = [(2.1186487693339586, -0.652061260654591, 9.824849779135548),
              (-1.541243730345741, -0.44688681804109365, 2.860251489910297)]
    for got, want in zip(sums, golden):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_released_architecture_starts_at_the_base_model_and_conditions_on_the_user():
    torch.manual_seed(0)
    hyper = HyperNetwork(16, layout(3, {"q_proj": (24, 24), "v_proj": (24, 8)}), LoraShape(rank=4),
                         HyperShape(32, 48, architecture="released", standardize_inputs=False), ("t",)).eval()
    x = torch.randn(2, 16)
    out = hyper(x, "t")
    assert all(torch.count_nonzero(b) == 0 for b in out.b.values())  # B = 0 at init: the model is the base
    assert out.a["q_proj"].shape == (2, 3, 4, 24) and out.b["v_proj"].shape == (2, 3, 8, 4)
    hyper, x = _small(HyperShape(32, 48, architecture="released"))
    with torch.no_grad():
        out = hyper(x[:2], "t")
    assert not torch.allclose(out.b["q_proj"][0], out.b["q_proj"][1])


def test_standardisation_can_be_switched_off():
    hyper, x = _small(HyperShape(32, 48, standardize_inputs=False))
    assert torch.equal(hyper.input_mean, torch.zeros(1, 16)) and torch.equal(hyper.input_std, torch.ones(1, 16))
    with torch.no_grad():
        off = hyper(x, "t").b["q_proj"]
        hyper.input_mean.fill_(5.0)  # the buffers are ignored when off
        assert torch.equal(hyper(x, "t").b["q_proj"], off)
    on, _ = _small(HyperShape(32, 48))
    assert not torch.equal(on.input_mean, torch.zeros(1, 16))


def _meta(shape: HyperShape, lay: TargetLayout, tasks: tuple[str, ...] = ("t",)) -> HyperMeta:
    return HyperMeta(base_llm="tiny", embedder="e", embedder_kind="sentence", embed_instruction=False, embed_dim=16,
                     lora=LoraShape(rank=4, alpha=8.0), shape=shape, layers=lay.layers, shapes=lay.shapes,
                     tasks=tasks, seed=0)


def test_checkpoint_keeps_architecture_and_standardisation_and_reads_old_descriptions(tmp_path):
    shape = HyperShape(32, 48, architecture="released", standardize_inputs=False)
    hyper, x = _small(shape)
    save_hypernetwork(tmp_path / "released", hyper, _meta(shape, hyper.layout))
    loaded, meta = load_hypernetwork(tmp_path / "released", hyper.layout)
    assert meta.shape == shape
    with torch.no_grad():
        assert torch.equal(loaded(x, "t").b["q_proj"], hyper(x, "t").b["q_proj"])
    # a p2p.json written before the fields existed loads as it was trained: our architecture, standardised inputs
    old, _ = _small(HyperShape(32, 48))
    save_hypernetwork(tmp_path / "old", old, _meta(HyperShape(32, 48), old.layout))
    data = json.loads((tmp_path / "old" / META).read_text())
    for key in ("architecture", "standardize_inputs"):
        del data["shape"][key]
    (tmp_path / "old" / META).write_text(json.dumps(data))
    assert read_meta(tmp_path / "old").shape == HyperShape(32, 48, architecture="ours", standardize_inputs=True)
    reloaded, _ = load_hypernetwork(tmp_path / "old", old.layout)
    with torch.no_grad():
        assert torch.equal(reloaded(x, "t").a["v_proj"], old(x, "t").a["v_proj"])
    # one written while the architecture was called `layout` loads with the architecture it names
    data = json.loads((tmp_path / "released" / META).read_text())
    data["shape"]["layout"] = data["shape"].pop("architecture")
    (tmp_path / "released" / META).write_text(json.dumps(data))
    assert read_meta(tmp_path / "released").shape == shape
    renamed, _ = load_hypernetwork(tmp_path / "released", hyper.layout)
    with torch.no_grad():
        assert torch.equal(renamed(x, "t").b["q_proj"], hyper(x, "t").b["q_proj"])


def test_checkpoint_round_trip_keeps_each_tasks_statistics(tmp_path):
    tasks = ("LaMP-2M", "LaMP-3")
    hyper, x = _small(HyperShape(32, 48), tasks)
    assert hyper.input_mean.shape == (2, 16)
    torch.testing.assert_close(hyper.input_mean[1] - hyper.input_mean[0], torch.full((16,), 4.0))
    save_hypernetwork(tmp_path / "ck", hyper, _meta(HyperShape(32, 48), hyper.layout, tasks))
    loaded, meta = load_hypernetwork(tmp_path / "ck", hyper.layout)
    assert meta.tasks == loaded.tasks == tasks
    assert torch.equal(loaded.input_mean, hyper.input_mean) and torch.equal(loaded.input_std, hyper.input_std)
    with torch.no_grad():
        for task in tasks:
            assert torch.equal(loaded(x, task).b["q_proj"], hyper(x, task).b["q_proj"])
        assert not torch.equal(loaded(x, tasks[0]).b["q_proj"], loaded(x, tasks[1]).b["q_proj"])
    with pytest.raises(ValueError, match="not trained on task 'LaMP-7'"):
        loaded(x, "LaMP-7")


def test_a_layout_2_checkpoint_loads_with_its_pooled_statistics_for_every_task(tmp_path):
    """Before per-task statistics the buffers were one (dim,) row pooled over all tasks: each task gets it."""
    from safetensors.torch import load_file, save_file

    tasks = ("LaMP-2M", "LaMP-3")
    hyper, x = _small(HyperShape(32, 48), tasks)
    save_hypernetwork(tmp_path / "ck", hyper, _meta(HyperShape(32, 48), hyper.layout, tasks))
    weights = load_file(tmp_path / "ck" / "hypernetwork.safetensors")
    weights["input_mean"], weights["input_std"] = x.mean(0), x.std(0, correction=0)
    save_file(weights, tmp_path / "ck" / "hypernetwork.safetensors")
    loaded, _ = load_hypernetwork(tmp_path / "ck", hyper.layout)
    assert torch.equal(loaded.input_mean, torch.stack([x.mean(0)] * 2))
    with torch.no_grad():
        assert torch.equal(loaded(x, tasks[0]).b["q_proj"], loaded(x, tasks[1]).b["q_proj"])


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="hyper.architecture"):
        HyperShape(32, 48, architecture="huge")


def test_hf_linear_is_the_transformers_schedule_the_authors_use():
    transformers = pytest.importorskip("transformers")
    for total, fraction in [(10, 0.2), (10000, 0.2), (7, 0.3), (5, 0.0)]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        hf = transformers.get_scheduler("linear", opt, num_warmup_steps=int(total * fraction),
                                        num_training_steps=total)
        ours = warmup_linear(total, fraction, "hf_linear")
        for step in range(total + 1):
            assert math.isclose(hf.lr_lambdas[0](step), ours(step), abs_tol=1e-12)
    assert warmup_linear(10000, 0.2, "hf_linear")(0) == 0.0
    assert warmup_linear(10, 0.2)(0) == 0.5  # ours: the first step already trains
    with pytest.raises(ValueError, match="schedule"):
        warmup_linear(10, 0.2, "cosine")


def test_paper_preset_uses_the_released_setup_and_the_others_do_not():
    paper = load_config(ROOT / "params.yaml", preset="paper")
    assert (paper.hyper.architecture, paper.hyper.standardize_inputs) == ("released", False)
    assert (paper.train.warmup, paper.train.schedule) == (0.2, "hf_linear")
    for preset in ("cpu", "smoke", "cpu-full", "gpu-small"):
        cfg = load_config(ROOT / "params.yaml", preset=preset)
        assert (cfg.hyper.architecture, cfg.hyper.standardize_inputs, cfg.train.schedule) == ("ours", True, "linear")


def test_fingerprint_changes_with_the_new_settings():
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    base = fingerprint(cfg, {})
    changed = [cfg.model_copy(update={"hyper": cfg.hyper.model_copy(update={"architecture": "released"})}),
               cfg.model_copy(update={"hyper": cfg.hyper.model_copy(update={"standardize_inputs": False})}),
               cfg.model_copy(update={"train": cfg.train.model_copy(update={"schedule": "hf_linear"})})]
    prints = {fingerprint(c, {}) for c in changed}
    assert base not in prints and len(prints) == 3
