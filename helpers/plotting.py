"""Plots the notebooks share: attention heat maps with token labels, and loss curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def plot_attention(weights, x_labels=None, y_labels=None, ax=None, title=None, cmap="viridis", colorbar=True,
                   vmax=None, xlabel="key", ylabel="query"):
    """One attention map (Tq, Tk): row i shows where query i looks (its weights over the keys sum to 1).

    ``x_labels`` are the key tokens (columns), ``y_labels`` the query tokens (rows). The axes are named
    ``xlabel`` and ``ylabel`` ("key", "query"; None leaves an axis unnamed), and a colour bar gives the
    scale, from 0 to ``vmax`` (default: the largest weight). Returns the Axes; its image is ``ax.images[0]``.
    """
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != 2:
        raise ValueError(f"plot_attention draws one map (Tq, Tk), got shape {tuple(weights.shape)}; "
                         "pick a batch element and a head, or use plot_attention_heads")
    for labels, size, name in ((x_labels, weights.size(1), "x_labels (keys)"),
                               (y_labels, weights.size(0), "y_labels (queries)")):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{name}: {len(labels)} labels for {size} positions")
    if ax is None:
        width = max(3.0, 0.3 * weights.size(1))
        height = max(3.0, 0.3 * weights.size(0))
        _, ax = plt.subplots(figsize=(width + (0.8 if colorbar else 0), height))
    image = ax.imshow(weights.numpy(), cmap=cmap, vmin=0, vmax=float(weights.max()) if vmax is None else vmax)
    if x_labels is not None:  # words stand upright; digits and other short tokens stay level
        upright = max((len(str(label)) for label in x_labels), default=0) > 2
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90 if upright else 0, fontsize=8)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("attention weight", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return ax


def plot_attention_heads(weights, labels=None, ncols=4, size=2.6, suptitle=None, query_labels=None):
    """All heads of one layer, (H, Tq, Tk), side by side, on one colour scale with one colour bar.

    ``labels`` are the key tokens, ``query_labels`` the query tokens (default: ``labels``, as in
    self-attention). Token names go on the bottom row (keys) and the first column (queries) only."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != 3:
        raise ValueError(f"plot_attention_heads draws (H, Tq, Tk) maps, got shape {tuple(weights.shape)}")
    query_labels = labels if query_labels is None else query_labels
    n = weights.size(0)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8, size * nrows), squeeze=False,
                             layout="constrained")
    vmax = float(weights.max())  # one scale: the same colour is the same weight in every head
    for h, ax in enumerate(axes.flat):
        if h >= n:
            ax.axis("off")
            continue
        first_column, bottom_row = h % ncols == 0, h + ncols >= n
        plot_attention(weights[h], labels if bottom_row else None, query_labels if first_column else None, ax=ax,
                       title=f"head {h}", colorbar=False, vmax=vmax, xlabel="key" if bottom_row else None,
                       ylabel="query" if first_column else None)
        if not bottom_row:
            ax.set_xticks([])
        if not first_column:
            ax.set_yticks([])
    bar = fig.colorbar(axes.flat[0].images[0], ax=axes, shrink=0.8)
    bar.set_label("attention weight", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
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
