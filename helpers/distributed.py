"""Training on several processes (``torchrun``), in one place.

``torchrun --nproc_per_node=N script.py`` starts N copies of a script and tells each its place in the
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Everything the course does differently in such
a run is here: joining the process group, which GPU a process drives, each process's shard of the
data, averaging numbers across processes, and which process prints and writes files.

:func:`helpers.fit` talks to a :class:`Processes` object only. In an ordinary single-process run
(``WORLD_SIZE`` unset or 1) that object does nothing: it shards nothing, averages nothing, and
its process is the main one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def local_rank() -> int:
    """Which GPU of this machine the process drives: ``$LOCAL_RANK``, 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world_size() -> int:
    """How many processes torchrun started (``$WORLD_SIZE``); 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and in every ordinary single-process run."""
    return not is_initialized() or dist.get_rank() == 0


class Processes:
    """This process's place among the processes of a run, and what they do together.

    ``Processes.start(device)`` joins the process group when torchrun launched several processes
    (NCCL on CUDA, gloo on the CPU), else returns a single-process object on which every method
    is the identity.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")

    @classmethod
    def start(cls, device: torch.device) -> Processes:
        if launched_world_size() > 1 and dist.is_available() and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: wrapped in DistributedDataParallel (gradients averaged across
        processes in the backward pass) when there are several processes, else itself."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, data):
        """This process's part of the training data.

        A ``DataLoader`` gets a ``DistributedSampler``; a callable ``step -> batch`` is called with
        ``step * world_size + rank``, so a callable that derives its batch from the index gives each
        process distinct batches. Anything else is returned as it is.
        """
        if self.world_size == 1:
            return data
        if isinstance(data, torch.utils.data.DataLoader):
            from torch.utils.data.distributed import DistributedSampler

            shuffle = isinstance(data.sampler, torch.utils.data.RandomSampler)
            sampler = DistributedSampler(data.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle)
            return torch.utils.data.DataLoader(
                data.dataset, batch_size=data.batch_size, sampler=sampler, collate_fn=data.collate_fn,
                num_workers=data.num_workers, drop_last=data.drop_last, pin_memory=data.pin_memory,
            )
        if callable(data) and not isinstance(data, Iterable):
            world, rank = self.world_size, self.rank
            return lambda step: data(step * world + rank)
        return data

    def mean(self, values: list[float]) -> list[float]:
        """The average of each number over all processes."""
        if self.world_size == 1 or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def max(self, value: float) -> float:
        """The largest of one number over all processes (e.g. the slowest clock)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def finish(self):
        """Leave the process group (at the end of a script launched by torchrun)."""
        if is_initialized():
            dist.destroy_process_group()
