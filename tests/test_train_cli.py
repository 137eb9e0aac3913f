"""`python -m helpers.train_cli`: a notebook's training outside Jupyter, alone and under torchrun."""

import os
import subprocess
import sys

import pytest
import torch

import helpers
from helpers import arithmetic as ar
from helpers import train_cli


def test_arithmetic_task_trains_and_saves_a_checkpoint_ready_for_solve(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    result = train_cli.main(["arithmetic", "--profile", "ci", "--steps", "40"])
    assert result["steps"] == 40
    model = helpers.load_checkpoint("04_arithmetic")
    assert model.checkpoint_extra["accuracy"] == result["accuracy"]
    assert ar.solve(model, "12+34").isdigit()  # the reloaded model answers through the public API


def test_time_limit_stops_training_early(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    result = train_cli.main(["arithmetic", "--profile", "ci", "--steps", "100000", "--seconds", "2"])
    assert result["steps"] < 100000


def test_bad_arguments_say_what_is_accepted(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["poetry"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["arithmetic", "--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_shakespeare_under_torchrun_two_processes(tmp_path):
    pytest.importorskip("torch.distributed")
    env = dict(os.environ, TFS_DATA_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    if helpers.is_offline() and not os.environ.get("TFS_DATA_MIRROR"):
        pytest.skip("offline without TFS_DATA_MIRROR: the fresh data folder cannot get Tiny Shakespeare")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "helpers.train_cli", "shakespeare", "--profile", "ci", "--steps", "30"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("val_loss_per_char=") == 1  # only rank 0 reports
    assert "world_size=2" in result.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["03_language_modelling.pt"]
    model = helpers.load_checkpoint(tmp_path / "checkpoints" / "03_language_modelling.pt")
    assert model.checkpoint_extra["val_loss_per_char"] < torch.log(torch.tensor(65.0)).item()  # it learned something


def test_shakespeare_recipes_match_notebook_03(notebook_code):
    # The command line, the benchmarks and the notebook train the same model; they must not drift apart.
    import ast

    from helpers.text import LM_RECIPES

    # The cell `hp = pick(ci=dict(...), cpu=dict(...), gpu=dict(...))`: each profile's dict.
    call = ast.parse(notebook_code("03_language_modelling.ipynb", "hp = pick(")).body[0].value
    notebook = {kw.arg: {k.arg: ast.literal_eval(k.value) for k in kw.value.keywords} for kw in call.keywords}
    model_keys = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "lr"]
    for profile, recipe in train_cli.SHAKESPEARE_RECIPES.items():
        assert {k: recipe[k] for k in model_keys + ["steps"]} == {k: notebook[profile][k] for k in model_keys + ["steps"]}
    assert {k: LM_RECIPES["cpu"][k] for k in model_keys} == {k: notebook["cpu"][k] for k in model_keys}
