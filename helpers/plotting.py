"""Plots the notebooks share: attention heat maps with token labels, and loss curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def plot_attention(weights, x_labels=None, y_labels=None, ax=None, title=None, cmap="viridis"):
    """One attention map (Tq, Tk): row i shows where query i looks. Labels are tokens."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    if ax is None:
        size = max(3.0, 0.3 * weights.size(-1))
        _, ax = plt.subplots(figsize=(size, size))
    ax.imshow(weights, cmap=cmap, vmin=0, vmax=float(weights.max()))
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90, fontsize=8)
    else:
        ax.set_xlabel("key")
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    else:
        ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_attention_heads(weights, labels=None, ncols=4, size=2.6, suptitle=None):
    """All heads of one layer, (H, T, T), side by side."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    n = weights.size(0)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h < n:
            plot_attention(weights[h], labels, labels if h % ncols == 0 else None, ax=ax, title=f"head {h}")
            if h % ncols:
                ax.set_yticks([])
                ax.set_ylabel("")
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(histories, ax=None, metric: str | None = None, logy: bool = False):
    """Loss curves of one History or a dict ``{label: History}`` (train dashed, validation solid).
    With ``metric`` it plots that metric instead."""
    if not isinstance(histories, dict):
        histories = {"": histories}
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for i, (label, h) in enumerate(histories.items()):
        color = f"C{i}"
        prefix = f"{label} " if label else ""
        if metric:
            ax.plot(h.step, h.metrics[metric], color=color, label=f"{prefix}{metric}")
            continue
        ax.plot(h.step, h.train_loss, "--", color=color, label=f"{prefix}train")
        if h.val_loss:
            ax.plot(h.step, h.val_loss, "-", color=color, label=f"{prefix}validation")
    ax.set_xlabel("step")
    ax.set_ylabel(metric or "loss")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
