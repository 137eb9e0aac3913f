"""The shared plots: what a reader needs to read an attention map (tokens, axis names, a scale)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.plotting import plot_attention, plot_attention_heads  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_attention_names_its_axes_and_has_a_colour_bar():
    weights = torch.rand(3, 5).softmax(-1)  # 3 queries, 5 keys
    keys, queries = list("abcde"), ["x", "y", "z"]
    ax = plot_attention(weights, keys, queries, title="t")
    assert [t.get_text() for t in ax.get_xticklabels()] == keys
    assert [t.get_text() for t in ax.get_yticklabels()] == queries
    assert ax.get_xlabel() == "key" and ax.get_ylabel() == "query"
    assert len(ax.figure.axes) == 2  # the map and its colour bar
    assert ax.figure.axes[1].get_ylabel() == "attention weight"
    assert ax.images[0].get_clim() == (0.0, pytest.approx(float(weights.max())))
    assert torch.equal(torch.as_tensor(ax.images[0].get_array()), weights)  # row i: query i, column j: key j


def test_plot_attention_options_and_errors():
    _, ax = plt.subplots()
    plot_attention(torch.eye(4), ax=ax, colorbar=False, vmax=1.0, xlabel="source", ylabel=None)
    assert len(ax.figure.axes) == 1 and ax.get_xlabel() == "source" and ax.get_ylabel() == ""
    assert ax.images[0].get_clim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="one map"):
        plot_attention(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="3 labels for 4 positions"):
        plot_attention(torch.rand(4, 4), list("abc"))


def test_plot_attention_heads_share_one_scale_and_label_the_outer_axes():
    weights = torch.rand(6, 4, 5).softmax(-1)  # 6 heads, 4 queries, 5 keys (cross-attention)
    fig = plot_attention_heads(weights, list("abcde"), ncols=4, query_labels=list("wxyz"), suptitle="s")
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 6 and len(fig.axes) == 8 + 1  # 2 x 4 grid (2 empty) and one colour bar
    assert [ax.images[0].get_clim() for ax in maps] == [(0.0, pytest.approx(float(weights.max())))] * 6
    first_column = [maps[0], maps[4]]
    assert all(ax.get_ylabel() == "query" for ax in first_column)
    assert [t.get_text() for t in maps[4].get_yticklabels()] == list("wxyz")
    assert all(ax.get_ylabel() == "" for ax in maps if ax not in first_column)
    bottom = [maps[2], maps[3], maps[4], maps[5]]  # nothing below heads 2 and 3 in a 6-head, 4-column grid
    assert all(ax.get_xlabel() == "key" for ax in bottom)
    assert [t.get_text() for t in maps[5].get_xticklabels()] == list("abcde")
    assert maps[0].get_xlabel() == "" and not maps[0].get_xticklabels()
