"""Data-parallel training across processes: PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node=N -m genzoo train FAMILY ...          (one machine, N processes)
    torchrun --nnodes=M --node_rank=K --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --nproc_per_node=N \\
             -m genzoo train FAMILY ...                             (M machines; torchrun's own rendezvous)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them (or with WORLD_SIZE=1) nothing here does anything.
The backend is NCCL when training on CUDA (each process on its LOCAL_RANK's GPU), gloo on the CPU.

How the trainer divides the work (trainer.py):
- Every rank draws the same global batch of ``--batch-size`` examples (the order depends on seed and epoch
  only), prepares it in the data view with the same generator, and takes its contiguous 1/N of it, so N
  processes see exactly the data one process would (``--batch-size`` must be a multiple of N).
- The loss methods run through the DDP wrapper, which averages the gradients across ranks in the backward pass:
  with equal shards this is the gradient of the mean loss over the global batch, so a deterministic family
  trains to the same weights as one process (tested with two gloo processes).
- Each rank draws the model's own noise (a VAE's epsilon, a GAN's z, Langevin noise) from its own seed.
- The loss logged, and every decision to stop (time limit, a signal, a non-finite loss), is agreed across ranks
  in one all-reduce every ``Trainer.sync_every`` steps and at the end of every epoch (not every step: a
  collective per step costs time), so no rank is left waiting in a collective. A non-finite loss seen by
  one rank stops all of them at the next agreement; the checkpoint on disk is the last good one.
- Only rank 0 writes the run folder; a checkpoint written under DDP is an ordinary one (it loads and resumes in
  a single process).
- GAN: both players are in one DDP module; each player's step runs its loss through it and all-reduces the
  gradients of the parameters that took part (unused ones are found per step). Batch norm statistics stay
  per rank (SyncBatchNorm needs CUDA).
- EBM: each rank keeps its own replay buffer of Langevin chains (buffers are not broadcast), so N ranks keep N
  times as many chains; the checkpoint stores rank 0's buffer, and a resumed run starts every rank from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genzoo.errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Context:
    """The process's place in a torchrun launch (or the single-process context)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return Context(rank=int(os.environ.get("RANK", "0")), world=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them).") from None


def init(device: torch.device) -> Context:
    """Join the process group torchrun prepared (once per process); all ranks wait here for each other."""
    ctx = from_env()
    if ctx.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """Each rank on its own GPU (LOCAL_RANK) when training on CUDA."""
    if ctx.active and device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def check_batch(ctx: Context, batch_size: int) -> None:
    if batch_size % ctx.world:
        raise ConfigError(f"--batch-size {batch_size} (the global batch) must be a multiple of the {ctx.world} "
                          f"processes.")


def shard(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's contiguous 1/world of a global batch."""
    if not ctx.active:
        return x
    n = x.shape[0] // ctx.world
    return x[ctx.rank * n:(ctx.rank + 1) * n]


def agree(value: float, flags: tuple[bool, ...], ctx: Context, device: torch.device) -> tuple[float, tuple[bool, ...]]:
    """In one all-reduce: the mean of a scalar over the ranks (NaN anywhere makes it NaN everywhere), and each
    flag true on every rank if it is true on one."""
    if not ctx.active:
        return value, flags
    t = torch.tensor([value, *(float(f) for f in flags)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    values = t.tolist()
    return values[0] / ctx.world, tuple(v > 0 for v in values[1:])


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device, players: int, broadcast_buffers: bool):
    """The DDP wrapper of ``model`` (which broadcasts rank 0's weights to all ranks), or the model itself."""
    if not ctx.active:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options = {}
    if not broadcast_buffers:  # rank-local buffers (synced once at init, when all ranks hold the same values)
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        options = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=players > 1, **options)
