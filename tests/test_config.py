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


def test_precision_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("TFS_AUTOCAST", raising=False)
    assert config.autocast_dtype("cpu") is None  # float32 on CPUs
    assert config.autocast_dtype("mps") is None
    for capability, expected in (((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert config.autocast_dtype("cuda") == expected  # H200/A100: bf16; T4 (7.5): fp16
    monkeypatch.setenv("TFS_AUTOCAST", "none")
    assert config.autocast_dtype("cuda") is None
    monkeypatch.setenv("TFS_AUTOCAST", "half")
    with pytest.raises(ValueError, match="bfloat16, float16 or none"):
        config.autocast_dtype("cpu")


def test_the_loss_scaler_is_on_only_for_float16_on_cuda():
    assert not config.grad_scaler("cpu", torch.float16).is_enabled()
    assert not config.grad_scaler("cpu", None).is_enabled()


def test_mixed_precision_autocasts_and_restores_tf32(monkeypatch):
    a = torch.randn(4, 4)
    with config.mixed_precision("cpu", torch.bfloat16) as dtype:
        assert dtype == torch.bfloat16 and (a @ a).dtype == torch.bfloat16
    with config.mixed_precision("cpu", "auto") as dtype:
        assert dtype is None and (a @ a).dtype == torch.float32
    assert (a @ a).dtype == torch.float32


def test_generators_live_on_the_device_they_draw_for():
    g = config.make_generator(3, "cpu")
    assert g.device.type == "cpu" and torch.equal(torch.rand(2, generator=g),
                                                  torch.rand(2, generator=torch.Generator().manual_seed(3)))


def test_draw_uses_the_generator_s_own_device_then_moves():
    a = config.draw(torch.randn, (2, 3), generator=torch.Generator().manual_seed(5), device="cpu")
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(5)))  # the generator's numbers
    b = config.draw(torch.rand, (4,), generator=torch.Generator().manual_seed(5), device="meta")
    assert b.device.type == "meta" and b.shape == (4,)  # drawn on the CPU, moved where it is used
    assert config.draw(torch.randint, 0, 10, (3,), device="cpu").dtype == torch.long  # no generator: the device's own


def test_float32_is_no_autocast_at_all():
    # torch.autocast knows no "meta" device (nor "mps" before torch 2.5): float32 must not need it
    with config.mixed_precision("meta", None) as dtype:
        assert dtype is None and torch.is_autocast_enabled("cpu") is False
    assert not config.grad_scaler("mps", None).is_enabled()
