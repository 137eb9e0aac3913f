"""`python -m helpers.train_cli`: a notebook's training outside Jupyter, alone and under torchrun."""

import os
import subprocess
import sys

import pytest
import torch

import helpers
from helpers import arithmetic as ar
from helpers import recipes, train_cli


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


NOTEBOOK_OF_TASK = {"shakespeare": "03_language_modelling", "arithmetic": "04_arithmetic",
                    "cifar10": "06_image_classification"}


@pytest.mark.parametrize("task", sorted(train_cli.TASKS))
@pytest.mark.parametrize("profile", ["ci", "gpu"])
def test_each_task_trains_with_its_notebooks_recipe_object(task, profile, monkeypatch):
    # The notebook reads `hp = pick(**recipes.X)`; the command line must train with that very dict, not a copy.
    seen = []
    recipe, _ = train_cli.TASKS[task]
    monkeypatch.setitem(train_cli.TASKS, task, (recipe, lambda hp, *args: seen.append(hp) or {"steps": 0}))
    train_cli.main([task, "--profile", profile])
    assert seen[0] is recipes.ALL[NOTEBOOK_OF_TASK[task]][profile]


def test_every_notebook_reads_its_recipe_from_helpers_recipes():
    import json
    from pathlib import Path

    for name, recipe in recipes.ALL.items():
        assert set(recipe) == {"ci", "cpu", "gpu"}, name
        cells = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        attribute = next(k for k, v in vars(recipes).items() if v is recipe and k != "ALL")
        assert f"hp = pick(**recipes.{attribute})" in code, name


def test_profile_is_read_as_get_profile_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    result = train_cli.main(["arithmetic", "--profile", "CPU", "--steps", "5"])
    assert result["steps"] == 5
    monkeypatch.setenv("TFS_PROFILE", " Ci ")
    assert train_cli.main(["arithmetic", "--steps", "3"])["steps"] == 3


def test_an_unknown_profile_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["arithmetic", "--profile", "laptop"])
    assert "is not a profile; use one of ci, cpu, gpu" in capsys.readouterr().err
