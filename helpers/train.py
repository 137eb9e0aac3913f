"""One training loop for every notebook: AdamW, warm-up then cosine decay, gradient clipping,
mixed precision chosen by the hardware, periodic evaluation, the best weights kept and early stopping on
request, a progress bar, and a history that plots as loss curves."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import get_device, grad_scaler, mixed_precision, resolve_autocast
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
    best_step: int | None = None  # with fit(keep_best=...): the evaluation whose weights the model ends with
    best_score: float | None = None  # and its score (the validation loss, or the chosen metric)
    stopped_early: bool = False  # fit(patience=...) ended training before its last step

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
        stopped = " (stopped early)" if self.stopped_early else ""
        best = f" | kept step {self.best_step}: {self.best_score:.4g}" if self.best_step is not None else ""
        return f"training: {steps} steps in {seconds:.1f} s{stopped}{figures}{best}"

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
    """A batch (a tensor, or a dict, list or tuple of them) moved to ``device``. A copy to an accelerator does not
    wait (``non_blocking``; the GPU's queue orders it before its use); a copy back to the CPU always waits, since the
    CPU could otherwise read the memory before the copy has filled it."""
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type != "cpu")
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
             device=None, autocast_dtype="auto") -> float:
    """Mean loss over the batches of ``data`` (an iterable, or a callable ``i -> batch``), each batch moved to the
    model's device. ``autocast_dtype``: ``"auto"`` (the hardware's choice, :func:`helpers.config.autocast_dtype`;
    float32 on the CPU), a dtype, or ``None`` for float32."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if callable(data) and not isinstance(data, Iterable):
        get_batch = data
        data = (get_batch(i) for i in range(max_batches or 1))
    losses = []
    with evaluating(model), mixed_precision(device, autocast_dtype):
        for batch in itertools.islice(data, max_batches):
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
    autocast_dtype: torch.dtype | str | None = "auto",
    keep_best: bool | str = False,
    patience: int | None = None,
    device=None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return its :class:`History`.

    train_data / val_data: an iterable of batches (a ``DataLoader``; cycled) or a callable
    ``step -> batch``. ``loss_fn(model, batch)`` returns a scalar loss. ``metrics`` are extra
    functions of the model evaluated with the validation loss (e.g. accuracy), in eval mode.
    ``time_limit`` (seconds) ends training early; the learning-rate schedule then follows
    whichever of steps or time is further along, so the decay still completes.
    ``autocast_dtype`` is the precision of the forward pass: ``"auto"`` (default) is the hardware's choice
    (:func:`helpers.config.autocast_dtype`: bfloat16 on recent GPUs, float16 with a loss-scaling
    ``GradScaler`` on older ones such as the T4, float32 on the CPU), or give a dtype, or ``None`` for float32.
    Gradients are clipped to norm 1. With ``progress`` a bar is drawn while training and one
    summary line (:meth:`History.summary`) is printed at the end.

    Model selection on the validation data: ``keep_best=True`` ends training with the weights of the evaluation
    with the lowest validation loss (``keep_best="accuracy"``: with the highest value of that metric, one of
    ``metrics``), not those of the last step; ``patience=N`` stops training after N evaluations in a row without
    a new best (it needs ``keep_best``). ``History.best_step`` and ``best_score`` say which evaluation was kept.

    Launched with ``torchrun --nproc_per_node=N``, the same call trains with DistributedDataParallel
    (see :mod:`helpers.distributed`): each process sees its own shard of ``train_data``, gradients and
    the logged figures are averaged across processes, and only the main process draws and prints.
    ``loss_fn`` must then call ``model(...)`` (the wrapped model) for its forward pass.
    """
    device = torch.device(device) if device else get_device()
    autocast_dtype = resolve_autocast(autocast_dtype, device)
    select = _selection(keep_best, patience, val_data, metrics)
    model.to(device).train()
    procs = Processes.start(device)
    train_model = procs.wrap(model)
    warmup = steps // 20 if warmup is None else warmup
    min_lr = lr / 10 if min_lr is None else min_lr
    eval_every = eval_every or max(1, steps // 10)
    optimizer = make_optimizer(model, lr, weight_decay, betas)
    scaler = grad_scaler(device, autocast_dtype)  # a no-op unless float16 on CUDA
    best_state = None
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
        with mixed_precision(device, autocast_dtype):
            loss = loss_fn(train_model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)  # skipped (and the scale lowered) when float16 gradients overflowed
        scaler.update()
        window.append(loss.detach())  # read back at the next evaluation: no wait for the GPU at every step
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
            if select is not None:
                best_state, stop = _track_best(history, model, select, best_state, patience)
                if stop and not last:
                    history.stopped_early = last = True
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in history.latest().items()}, refresh=False)
        if bar is not None:
            bar.update(1)
        if last:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    if show:
        print(history.summary(steps), flush=True)
    model.eval()
    return history


def _selection(keep_best, patience, val_data, metrics):
    """For ``keep_best``: ``(history -> the latest figure, +1 when lower is better / -1 when higher is)``, or
    None; bad combinations are clear errors before any training."""
    if patience is not None and not keep_best:
        raise ValueError("patience=N stops when the kept model stops improving: pass keep_best=True (validation "
                         "loss) or keep_best='<metric>' too")
    if not keep_best:
        return None
    if keep_best is True:
        if val_data is None:
            raise ValueError("keep_best=True keeps the weights of the lowest validation loss: pass val_data")
        return (lambda history: history.val_loss[-1]), 1
    if keep_best not in (metrics or {}):
        raise ValueError(f"keep_best={keep_best!r} is not one of the metrics ({', '.join(metrics or {}) or 'none'})")
    return (lambda history: history.metrics[keep_best][-1]), -1


def _track_best(history, model, select, best_state, patience):
    """After an evaluation: keep a copy of the weights if they are the best so far; returns (the best weights,
    whether patience ran out). The copy lives on the CPU, so it costs no accelerator memory."""
    latest, sign = select
    figure = latest(history)
    best = history.best_score
    better = not math.isnan(figure) and (best is None or math.isnan(best) or sign * figure < sign * best)
    if history.best_step is None or better:  # a NaN (diverged) evaluation is never better than a number
        history.best_step, history.best_score = history.step[-1], figure
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    evaluations_since = sum(1 for s in history.step if s > history.best_step)
    return best_state, patience is not None and evaluations_since >= patience


def _log(history, model, procs, window, val_data, loss_fn, eval_batches, metrics, device, autocast_dtype):
    """Append the interval's mean training loss, the validation loss and the metrics (averaged
    over the processes) to ``history``."""
    logged = [torch.stack(window).float().mean().item()]
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
