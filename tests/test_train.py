import math

import pytest
import torch

from helpers import GPT, TransformerConfig, evaluate, fit
from helpers.train import lr_at


def copy_task(step, batch=16, T=12, vocab=8):
    """Predict the token 4 positions back: learnable only by attending to the past."""
    g = torch.Generator().manual_seed(step)
    seq = torch.randint(0, vocab, (batch, T + 1), generator=g)
    seq[:, 4:] = seq[:, :-4]
    return seq[:, :-1], seq[:, 1:]


def test_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(0.1)


def test_fit_learns_and_records_history():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=2, n_head=2, n_embd=32))
    val = [copy_task(10_000 + i) for i in range(4)]
    before = evaluate(model, val)
    history = fit(model, copy_task, steps=300, lr=1e-2, warmup=10, val_data=val, eval_every=100, progress=False,
                  metrics={"one": lambda m: 1.0})
    assert history.step == [100, 200, 300] and len(history.val_loss) == 3
    assert history.metrics["one"] == [1.0, 1.0, 1.0]
    assert before > 0.9 * math.log(8)  # untrained: close to guessing among 8 tokens
    assert history.val_loss[-1] < 0.7 * before
    assert history.train_loss[-1] < history.train_loss[0]
    assert not model.training


def test_time_limit_stops_early():
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    history = fit(model, copy_task, steps=100_000, time_limit=0.5, progress=False)
    assert 0 < history.steps_done < 100_000


def test_bf16_autocast_runs():
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    history = fit(model, copy_task, steps=5, autocast_dtype=torch.bfloat16, progress=False)
    assert math.isfinite(history.train_loss[-1])


def test_progress_bar_redraws_are_bounded(monkeypatch):
    # In a notebook each redraw is a kernel message; an unbounded bar floods a long training cell's
    # output channel. With no minimum interval, only the step bound limits the redraws.
    import tqdm.auto

    from helpers import train as train_module

    redraws = []

    class CountingBar(tqdm.std.tqdm):
        def display(self, *args, **kwargs):
            redraws.append(self.n)
            return super().display(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", CountingBar)
    monkeypatch.setattr(train_module, "PROGRESS_MININTERVAL", 0.0)
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    history = fit(model, copy_task, steps=1000, lr=1e-3, eval_every=100)
    assert history.steps_done == 1000
    assert redraws[-1] == 1000  # the bar ends full
    assert len(redraws) <= train_module.PROGRESS_REDRAWS + 5  # start, close and rounding


def test_fit_ends_with_a_one_line_summary(capsys):
    # A notebook read on GitHub shows a progress bar's first state; the summary line shows how training ended.
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    val = [copy_task(10_000)]
    history = fit(model, copy_task, steps=20, lr=1e-3, val_data=val, eval_every=10, metrics={"one": lambda m: 1.0})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training:")]
    assert lines == [history.summary(20)]
    assert lines[0].startswith("training: 20/20 steps in ")
    assert f"| val {history.val_loss[-1]:.4g}" in lines[0] and "| one 1" in lines[0]
    fit(model, copy_task, steps=5, progress=False)
    assert "training:" not in capsys.readouterr().out  # progress=False: silent


def test_keep_best_restores_the_best_validation_weights():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    val = [copy_task(10_000)]
    # A learning rate that ends in divergence: the last evaluation is worse than the best one.
    history = fit(model, copy_task, steps=60, lr=3.0, warmup=0, min_lr=3.0, val_data=val, eval_every=5,
                  keep_best=True, progress=False)
    best = min(history.val_loss)
    assert history.best_score == best and history.step[history.val_loss.index(best)] == history.best_step
    assert evaluate(model, val) == pytest.approx(best, rel=1e-5)  # the model ends with the best weights


def test_keep_best_by_a_metric_and_patience_stops_early():
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])
    history = fit(model, copy_task, steps=60, eval_every=10, metrics={"accuracy": lambda m: next(scores)},
                  keep_best="accuracy", patience=3, progress=False)
    assert history.metrics["accuracy"] == [0.1, 0.5, 0.4, 0.3, 0.2]  # three evaluations without a new best
    assert history.stopped_early and history.steps_done == 50
    assert history.best_step == 20 and history.best_score == 0.5
    assert "(stopped early)" in history.summary(60) and "kept step 20: 0.5" in history.summary(60)


def test_model_selection_needs_what_it_selects_on():
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="pass val_data"):
        fit(model, copy_task, steps=2, keep_best=True, progress=False)
    with pytest.raises(ValueError, match="pass keep_best"):
        fit(model, copy_task, steps=2, patience=2, progress=False)
    with pytest.raises(ValueError, match="not one of the metrics"):
        fit(model, copy_task, steps=2, keep_best="accuracy", progress=False)


def test_a_diverged_evaluation_is_never_kept_as_the_best():
    model = GPT(TransformerConfig(vocab_size=8, block_size=12, n_layer=1, n_head=2, n_embd=16))
    scores = iter([float("nan"), 0.3, float("nan"), 0.2])
    history = fit(model, copy_task, steps=40, eval_every=10, metrics={"accuracy": lambda m: next(scores)},
                  keep_best="accuracy", progress=False)
    assert history.best_step == 20 and history.best_score == 0.3  # the NaNs at steps 10 and 30 never win


def test_batches_are_moved_without_waiting_only_towards_an_accelerator(monkeypatch):
    from helpers.train import to_device

    seen = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: seen.append(kw.get("non_blocking")) or self)
    batch = {"x": torch.zeros(2), "pair": (torch.zeros(1), torch.ones(1))}
    to_device(batch, "cpu")
    to_device(batch, "meta")
    assert seen == [False] * 3 + [True] * 3  # a copy back to the CPU must be complete before the CPU reads it
