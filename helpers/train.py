"""One training loop for every notebook: AdamW, warm-up then cosine decay, gradient clipping,
periodic evaluation, a progress bar, and a history that plots as loss curves."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import get_device

# A notebook's progress bar is a widget: every redraw is a message from the kernel. Bounding the
# redraws per bar (at most PROGRESS_REDRAWS, at least PROGRESS_MININTERVAL seconds apart) keeps a long
# training cell from flooding the kernel's output channel, which drops messages once it is full
# (a notebook runner waiting on that channel, such as nbval, then times out).
PROGRESS_REDRAWS = 50
PROGRESS_MININTERVAL = 0.5


@dataclass
class History:
    """What :func:`fit` measured. ``train_loss`` is averaged over each evaluation interval."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    steps_done: int = 0

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1] if self.val_loss else float("nan")

    def plot(self, ax=None, label: str = "", **kwargs):
        from .plotting import plot_history

        return plot_history({label: self} if label else self, ax=ax, **kwargs)


def lr_at(step: int, total: int, lr: float, warmup: int, min_lr: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    """Default loss: ``batch = (inputs, targets)``, logits ``(..., V)`` against targets ``(...)``.
    Targets equal to -100 are ignored (padding, prompt positions)."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


# --------------------------------------------------------------------------- distributed training


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); returns (rank, world size).

    Backend: NCCL on CUDA, gloo on the CPU. Outside torchrun this does nothing and returns (0, 1).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_mean(values: list[float], device, world: int) -> list[float]:
    """Average a few numbers over all ranks (a no-op in a single process)."""
    if world == 1 or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


def _all_max(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def _shard(data, rank: int, world: int):
    """Give every rank its own part of the training data.

    A ``DataLoader`` gets a ``DistributedSampler``; a callable ``step -> batch`` is called with
    ``step * world + rank``, so a callable that derives its batch from the index sees distinct batches.
    """
    if world == 1:
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        from torch.utils.data.distributed import DistributedSampler

        shuffle = isinstance(data.sampler, torch.utils.data.RandomSampler)
        sampler = DistributedSampler(data.dataset, num_replicas=world, rank=rank, shuffle=shuffle)
        return torch.utils.data.DataLoader(
            data.dataset, batch_size=data.batch_size, sampler=sampler, collate_fn=data.collate_fn,
            num_workers=data.num_workers, drop_last=data.drop_last, pin_memory=data.pin_memory,
        )
    if callable(data) and not isinstance(data, Iterable):
        return lambda step: data(step * world + rank)
    return data


def _batches(data) -> Callable[[int], object]:
    """A callable ``step -> batch`` from a callable, or from an iterable cycled epoch after epoch."""
    if callable(data) and not isinstance(data, Iterable):
        return data
    state = {"it": iter(data)}

    def next_batch(_step):
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(data)
            return next(state["it"])

    return next_batch


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases, norms or 1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn=cross_entropy_loss, max_batches: int | None = None,
             device=None, autocast_dtype=None) -> float:
    """Mean loss over the batches of ``data`` (an iterable, or a callable ``i -> batch``)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    if callable(data) and not isinstance(data, Iterable):
        get_batch = data
        data = (get_batch(i) for i in range(max_batches or 1))
    losses = []
    for batch in itertools.islice(data, max_batches):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses.append(loss_fn(model, to_device(batch, device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def fit(
    model: nn.Module,
    train_data,
    *,
    steps: int,
    lr: float = 3e-4,
    val_data=None,
    loss_fn: Callable = cross_entropy_loss,
    warmup: int | None = None,
    min_lr: float | None = None,
    weight_decay: float = 0.1,
    betas=(0.9, 0.95),
    grad_clip: float | None = 1.0,
    eval_every: int | None = None,
    eval_batches: int = 20,
    metrics: dict[str, Callable[[nn.Module], float]] | None = None,
    time_limit: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    device=None,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return its :class:`History`.

    train_data / val_data: an iterable of batches (a ``DataLoader``; cycled) or a callable
    ``step -> batch``. ``loss_fn(model, batch)`` returns a scalar loss. ``metrics`` are extra
    functions of the model evaluated with the validation loss (e.g. accuracy).
    ``time_limit`` (seconds) ends training early; the learning-rate schedule then follows
    whichever of steps or time is further along, so the decay still completes.
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward pass in mixed precision.

    Launched with ``torchrun --nproc_per_node=N``, the same call trains with DistributedDataParallel:
    each rank sees its own shard of ``train_data``, gradients are averaged across ranks, the logged
    losses and metrics are averaged too, and only rank 0 draws the progress bar. ``loss_fn`` must then
    call ``model(...)`` (the wrapped model) for its forward pass.
    """
    device = torch.device(device) if device else get_device()
    model.to(device).train()
    rank, world = setup_distributed(device)
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    warmup = steps // 20 if warmup is None else warmup
    min_lr = lr / 10 if min_lr is None else min_lr
    eval_every = eval_every or max(1, steps // 10)
    optimizer = optimizer or make_optimizer(model, lr, weight_decay, betas)
    next_batch = _batches(_shard(train_data, rank, world))
    history = History()
    metrics = metrics or {}

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training", leave=True, miniters=max(1, steps // PROGRESS_REDRAWS),
                   mininterval=PROGRESS_MININTERVAL)

    start, window, elapsed = time.perf_counter(), [], 0.0
    for step in range(steps):
        fraction = max(step / steps, elapsed / time_limit if time_limit else 0.0)
        rate = lr_at(int(fraction * steps), steps, lr, warmup, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = rate

        batch = to_device(next_batch(step), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(train_model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        window.append(loss.item())
        history.steps_done = step + 1

        last = step == steps - 1
        if time_limit is not None:
            elapsed = time.perf_counter() - start
            if world > 1:  # every rank follows the slowest clock, so all stop at the same step
                elapsed = _all_max(elapsed, device)
            last = last or elapsed >= time_limit
        if (step + 1) % eval_every == 0 or last:
            logged = [sum(window) / len(window)]
            window = []
            if val_data is not None:
                logged.append(evaluate(model, val_data, loss_fn, eval_batches, device, autocast_dtype))
            for fn in metrics.values():
                was_training = model.training
                model.eval()
                with torch.no_grad():
                    logged.append(float(fn(model)))
                model.train(was_training)
            logged = _all_mean(logged, device, world)
            history.step.append(step + 1)
            history.lr.append(rate)
            history.train_loss.append(logged.pop(0))
            if val_data is not None:
                history.val_loss.append(logged.pop(0))
            for name in metrics:
                history.metrics.setdefault(name, []).append(logged.pop(0))
            history.seconds.append(time.perf_counter() - start)
            if bar is not None:
                shown = {"train": f"{history.train_loss[-1]:.3f}"}
                if history.val_loss:
                    shown["val"] = f"{history.val_loss[-1]:.3f}"
                shown.update({k: f"{v[-1]:.3f}" for k, v in history.metrics.items()})
                bar.set_postfix(shown, refresh=False)  # shown at the next redraw
        if bar is not None:
            bar.update(1)
        if last:
            break
    if bar is not None:
        bar.close()
    model.eval()
    return history
