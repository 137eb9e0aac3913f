"""One training loop for every notebook: AdamW, warm-up then cosine decay, gradient clipping,
periodic evaluation, a progress bar, and a history that plots as loss curves."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import get_device
from .distributed import Processes
from .model import evaluating

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

    def latest(self) -> dict[str, float]:
        """The last logged value of the training loss, the validation loss and every metric."""
        out = {"train": self.train_loss[-1]} if self.train_loss else {}
        if self.val_loss:
            out["val"] = self.val_loss[-1]
        out.update({name: values[-1] for name, values in self.metrics.items()})
        return out

    def summary(self, total_steps: int | None = None) -> str:
        """One line: steps, seconds and the last logged figures, e.g.
        ``training: 3000/3000 steps in 236.1 s | train 1.512 | val 1.700``."""
        steps = f"{self.steps_done}/{total_steps}" if total_steps else f"{self.steps_done}"
        seconds = self.seconds[-1] if self.seconds else 0.0
        figures = "".join(f" | {name} {value:.4g}" for name, value in self.latest().items())
        return f"training: {steps} steps in {seconds:.1f} s{figures}"

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


def evaluate(model: nn.Module, data, loss_fn=cross_entropy_loss, max_batches: int | None = None,
             device=None, autocast_dtype=None) -> float:
    """Mean loss over the batches of ``data`` (an iterable, or a callable ``i -> batch``)."""
    device = device or next(model.parameters()).device
    if callable(data) and not isinstance(data, Iterable):
        get_batch = data
        data = (get_batch(i) for i in range(max_batches or 1))
    losses = []
    with evaluating(model):
        for batch in itertools.islice(data, max_batches):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses.append(loss_fn(model, to_device(batch, device)).item())
    return sum(losses) / len(losses)


def _progress_bar(steps: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="training", leave=True, miniters=max(1, steps // PROGRESS_REDRAWS),
                mininterval=PROGRESS_MININTERVAL)


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
    eval_every: int | None = None,
    eval_batches: int = 20,
    metrics: dict[str, Callable[[nn.Module], float]] | None = None,
    time_limit: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    device=None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return its :class:`History`.

    train_data / val_data: an iterable of batches (a ``DataLoader``; cycled) or a callable
    ``step -> batch``. ``loss_fn(model, batch)`` returns a scalar loss. ``metrics`` are extra
    functions of the model evaluated with the validation loss (e.g. accuracy), in eval mode.
    ``time_limit`` (seconds) ends training early; the learning-rate schedule then follows
    whichever of steps or time is further along, so the decay still completes.
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward pass in mixed precision.
    Gradients are clipped to norm 1. With ``progress`` a bar is drawn while training and one
    summary line (:meth:`History.summary`) is printed at the end.

    Launched with ``torchrun --nproc_per_node=N``, the same call trains with DistributedDataParallel
    (see :mod:`helpers.distributed`): each process sees its own shard of ``train_data``, gradients and
    the logged figures are averaged across processes, and only the main process draws and prints.
    ``loss_fn`` must then call ``model(...)`` (the wrapped model) for its forward pass.
    """
    device = torch.device(device) if device else get_device()
    model.to(device).train()
    procs = Processes.start(device)
    train_model = procs.wrap(model)
    warmup = steps // 20 if warmup is None else warmup
    min_lr = lr / 10 if min_lr is None else min_lr
    eval_every = eval_every or max(1, steps // 10)
    optimizer = make_optimizer(model, lr, weight_decay, betas)
    next_batch = _batches(procs.shard(train_data))
    history = History()
    metrics = metrics or {}
    show = progress and procs.is_main
    bar = _progress_bar(steps) if show else None

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
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        history.steps_done = step + 1

        last = step == steps - 1
        if time_limit is not None:
            elapsed = procs.max(time.perf_counter() - start)  # every process stops at the same step
            last = last or elapsed >= time_limit
        if (step + 1) % eval_every == 0 or last:
            _log(history, model, procs, window, val_data, loss_fn, eval_batches, metrics, device, autocast_dtype)
            history.step.append(step + 1)
            history.lr.append(rate)
            history.seconds.append(time.perf_counter() - start)
            window = []
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in history.latest().items()}, refresh=False)
        if bar is not None:
            bar.update(1)
        if last:
            break
    if bar is not None:
        bar.close()
    if show:
        print(history.summary(steps), flush=True)
    model.eval()
    return history


def _log(history, model, procs, window, val_data, loss_fn, eval_batches, metrics, device, autocast_dtype):
    """Append the interval's mean training loss, the validation loss and the metrics (averaged
    over the processes) to ``history``."""
    logged = [sum(window) / len(window)]
    if val_data is not None:
        logged.append(evaluate(model, val_data, loss_fn, eval_batches, device, autocast_dtype))
    with evaluating(model):
        logged += [float(fn(model)) for fn in metrics.values()]
    logged = procs.mean(logged)
    history.train_loss.append(logged.pop(0))
    if val_data is not None:
        history.val_loss.append(logged.pop(0))
    for name in metrics:
        history.metrics.setdefault(name, []).append(logged.pop(0))
