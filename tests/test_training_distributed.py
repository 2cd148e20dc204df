"""DDP on the CPU: 2 gloo processes with batch 1 take the same steps as 1 process with batch 2."""

import csv
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rawks_triton.training import TrainConfig, Trainer
from rawks_triton.training.threads import torch_threads

TINY = {"train_count": 4, "val_count": 1, "height": 28, "width": 36}


def _config(out, batch_size):
    return TrainConfig(
        data="synthetic",
        data_options=dict(TINY),
        steps=3,
        batch_size=batch_size,
        lr=5e-3,
        eval_every=3,
        checkpoint_every=3,
        log_every=1,
        figures=0,
        progress=False,
        out=str(out),
        reach_weight=0.01,
        threads=1,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(trainer):
    """The gradients of one step's loss (averaged by DDP across processes when distributed), on the
    trainer's thread count as its run would use (a thread count changes the solves' rounding)."""
    with torch_threads(trainer.threads):
        trainer.loss(trainer.batch(0), "joint").backward()
    grads = {f"q.{k}": p.grad.clone() for k, p in trainer.q_net.named_parameters()}
    grads.update({f"b.{k}": p.grad.clone() for k, p in trainer.b_net.named_parameters()})
    for p in list(trainer.q_net.parameters()) + list(trainer.b_net.parameters()):
        p.grad = None
    return grads


def _worker(rank, world, port, out, result_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    try:
        trainer = Trainer(_config(out, batch_size=1))
        assert trainer.dist.world_size == world and trainer.dist.rank == rank
        grads = _grads(trainer)
        trainer.run()
        state = {f"q.{k}": v for k, v in trainer.q_net.state_dict().items()}
        state.update({f"b.{k}": v for k, v in trainer.b_net.state_dict().items()})
        torch.save({"grads": grads, "state": state}, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_losses(out):
    with open(out / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == "train"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), tmp_path / "ddp", str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    single = Trainer(_config(tmp_path / "single", batch_size=world))
    grads = _grads(single)
    # Averaging the gradients of the two halves (DDP) gives the gradient of the whole batch.
    for key, g in grads.items():
        scale = float(g.abs().max()) + 1e-12
        for r in range(world):
            error = float((ranks[r]["grads"][key] - g).abs().max()) / scale
            assert error < 1e-4, (
                f"rank {r}, {key}: DDP gradient differs from the single-process one by {error:.3g} (relative)"
            )
    single.run()
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), f"{key} differs between the ranks"
    ddp_losses, single_losses = _train_losses(tmp_path / "ddp"), _train_losses(tmp_path / "single")
    assert len(ddp_losses) == 3 and len(single_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)
