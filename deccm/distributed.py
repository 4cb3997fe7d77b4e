"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun --nproc_per_node N -m deccm.train teacher|student ...`` runs the same training
code in N processes (gloo on CPU, nccl on CUDA). Every process draws the same epoch order
and takes its share of each batch (rows rank, rank + N, ...), so a batch of B rows is still
B rows, split N ways; DistributedDataParallel averages the gradients, so all processes hold
the same weights after every step. Validation runs everywhere (the same numbers; rank 0's
is broadcast so every process takes the same decision); only rank 0 writes the run dir,
logs to MLflow and prints. Without torchrun (WORLD_SIZE unset or 1) nothing here does
anything and training is the single-process loop, bit for bit.

What changes under N processes: the loss's in-batch negatives come from a process's own
B / N rows, not all B, so a run is close to, not identical with, a single-process run
(tests/test_distributed.py states the tolerance).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def world() -> int:
    """Number of training processes (torchrun's WORLD_SIZE; 1 without torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun): rank 0 is the one that writes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    if world() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        log.info("process %d of %d on %s (%s)", rank(), world(), device, torch.distributed.get_backend())
    if not is_main():
        logging.getLogger("deccm").setLevel(logging.WARNING)  # one log, rank 0's
    return device


class _Loss(nn.Module):
    """DDP wraps a module's forward: this one's forward is the model's loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        return self.model.loss(*args)


def loss_fn(model: nn.Module) -> Callable[..., Any]:
    """``model.loss`` alone, or through DistributedDataParallel (gradients averaged over the processes)."""
    if world() <= 1:
        return model.loss
    dev = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(_Loss(model), device_ids=[dev] if dev.type == "cuda" else None)


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This process's rows of a batch: rank, rank + N, ..."""
    n = world()
    return idx if n <= 1 else idx[rank()::n]


def mean(values: dict[str, float]) -> dict[str, float]:
    """Average per-process sums (an epoch's losses) over the processes."""
    if world() <= 1 or not values:
        return values
    keys = sorted(values)
    t = _tensor([values[k] for k in keys])
    torch.distributed.all_reduce(t)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist())}


def broadcast(value: float) -> float:
    """Rank 0's value on every process, so all take the same decision from it."""
    if world() <= 1:
        return value
    t = _tensor([value])
    torch.distributed.broadcast(t, 0)
    return float(t.item())


def _tensor(values: list[float]) -> torch.Tensor:
    """A float64 tensor where the backend can reduce it (nccl: this process's GPU)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    return torch.tensor(values, dtype=torch.float64, device=dev)


def barrier() -> None:
    if world() > 1:
        torch.distributed.barrier()
