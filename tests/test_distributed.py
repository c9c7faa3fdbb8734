"""Data-parallel training (p2p.hyper.distributed): two gloo processes under torchrun train the same weights as one
process with the same global batch, and checkpoints resume across a different number of processes.

Real torchrun, real gloo process group, real DDP, the real tiny Qwen2; CPU. Dropout and NEFTune are off in these
runs: their random streams are per rank, so with them on, N ranks match one process in distribution, not bitwise.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import run
from safetensors.torch import load_file

from p2p.hyper.checkpoint import latest_checkpoint, load_train_state
from p2p.hyper.distributed import Distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


class Stop(Exception):
    pass


def torchrun(processes: int, model_cache: Path, checkpoints: Path, out: Path, steps: int = 6) -> dict:
    """Run the worker under torchrun with `processes` gloo ranks; rank 0's final weights."""
    env = {"OMP_NUM_THREADS": "1", "P2P_DIST_BACKEND": "gloo", "HF_HUB_OFFLINE": "1",
           **{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(WORKER), str(model_cache), str(checkpoints), str(out),
                           f"--steps={steps}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_file(out)


def assert_same_weights(got: dict, expected: dict) -> None:
    """Equal up to float rounding, as Adam amplifies it: Adam divides each gradient entry by its running RMS, so
    rounding noise in near-zero entries becomes a visible share of a step (lr 5e-3). Measured after 6 steps: at
    most 1.2e-4 (an entry of ~0.02); atol 5e-4, a tenth of one step. The gradients themselves are compared tightly
    by assert_same_history."""
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-3, atol=5e-4, msg=f"{key} differs")


def assert_same_history(got: list[dict], expected: list[dict]) -> None:
    """The global batch's loss and gradient norm (before clipping) at every step: Adam is blind to a wrong overall
    gradient scale, the gradient norm is not."""
    for key in ("loss", "ce", "l2", "grad_norm"):
        assert [h[key] for h in got] == pytest.approx([h[key] for h in expected], rel=1e-4), key


@pytest.fixture(scope="module")
def one_process(model_cache, tmp_path_factory):
    """The reference: one process, 6 steps, never interrupted."""
    hyper, result = run(model_cache, tmp_path_factory.mktemp("single"), steps=6)
    return {k: v.detach().clone() for k, v in hyper.state_dict().items()}, result


def test_two_gloo_ranks_train_the_same_weights_as_one_process(model_cache, tmp_path, one_process):
    expected, result = one_process
    got = torchrun(2, model_cache, tmp_path / "checkpoints", tmp_path / "two.safetensors")
    assert_same_weights(got, expected)
    assert_same_history(json.loads((tmp_path / "two.json").read_text()), result.history)
    # rank 0 alone wrote the checkpoints (the last two are kept), and they record the run's size
    state = load_train_state(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["step"] == 6 and state["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000006"]


def test_a_one_process_checkpoint_resumes_on_two_processes(model_cache, tmp_path, one_process):
    expected, _ = one_process
    checkpoints = tmp_path / "checkpoints"

    def stop_after_four(step: int, metrics: dict) -> None:
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        run(model_cache, checkpoints, steps=6, on_step=stop_after_four)
    assert load_train_state(latest_checkpoint(checkpoints))["world_size"] == 1
    got = torchrun(2, model_cache, checkpoints, tmp_path / "resumed.safetensors")
    assert_same_weights(got, expected)
    assert_same_history(json.loads((tmp_path / "resumed.json").read_text()), one_process[1].history)


def test_a_two_process_checkpoint_resumes_in_one_process(model_cache, tmp_path, one_process):
    expected, _ = one_process
    checkpoints = tmp_path / "checkpoints"
    torchrun(2, model_cache, checkpoints, tmp_path / "two.safetensors", steps=6)
    # drop the final checkpoint: resume from step 4 of the two-process run, alone
    shutil.rmtree(checkpoints / "step-000006")
    hyper, result = run(model_cache, checkpoints, steps=6)
    assert result.resumed_from == 4
    assert_same_weights({k: v.detach() for k, v in hyper.state_dict().items()}, expected)
    assert_same_history(result.history, one_process[1].history)


def test_rows_are_dealt_round_robin_and_every_rank_needs_one():
    rows = list(range(7))
    shards = [Distributed(rank, 3, rank).shard(rows) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == rows
    with pytest.raises(ValueError, match="cannot give every one of 8 processes a row"):
        Distributed(0, 8, 0).shard(rows)
    assert Distributed().shard(rows) == rows and not Distributed().enabled
