import pytest
import torch

from helpers import config


def test_profile_from_environment(monkeypatch):
    for name in ("ci", "cpu", "gpu"):
        monkeypatch.setenv("TFS_PROFILE", name.upper())
        assert config.get_profile() == name


def test_profile_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("TFS_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_profile() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_profile() == "cpu"


def test_bad_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TFS_PROFILE", "laptop")
    with pytest.raises(ValueError, match="ci, cpu, gpu"):
        config.get_profile()


def test_an_explicit_profile_is_read_like_the_environment(monkeypatch):
    monkeypatch.setenv("TFS_PROFILE", "gpu")
    assert config.get_profile(" CPU ") == "cpu"  # what --profile CPU passes
    with pytest.raises(ValueError, match="the profile='laptop' is not a profile"):
        config.get_profile("laptop")


def test_pick(monkeypatch):
    monkeypatch.setenv("TFS_PROFILE", "ci")
    assert config.pick(ci=1, cpu=2, gpu=3) == 1
    assert config.pick(ci=1, cpu=2, gpu=3, profile="gpu") == 3
    assert config.pick(ci=1, cpu=2, gpu=3, profile="GPU") == 3


def test_device_override_and_seeding(monkeypatch):
    monkeypatch.setenv("TFS_DEVICE", "cpu")
    assert config.get_device().type == "cpu"
    config.seed_everything(7)
    a = torch.rand(3)
    config.seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_summary_names_profile_device_and_versions(monkeypatch):
    monkeypatch.setenv("TFS_PROFILE", "ci")
    line = config.summary()
    assert "profile=ci" in line and "device=" in line and f"torch {torch.__version__}" in line
    assert "\n" not in line
