import pytest
import torch

from helpers import GPT, Encoder, TransformerConfig, load_checkpoint, save_checkpoint
from helpers.checkpoint import checkpoint_path


def test_round_trip_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    model = GPT(TransformerConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    path = save_checkpoint(model, "00_test", vocab=list("abc"), val_loss=1.5)
    assert path == tmp_path / "checkpoints" / "00_test.pt"
    assert [p.name for p in path.parent.iterdir()] == ["00_test.pt"]  # no temporary file left
    again = load_checkpoint("00_test")
    assert type(again) is GPT and again.config == model.config and not again.training
    assert again.checkpoint_extra == {"vocab": ["a", "b", "c"], "val_loss": 1.5}
    ids = torch.randint(0, 11, (2, 8))
    assert torch.equal(again(ids), model.eval()(ids))
    assert again.head.weight is again.wte.weight  # tying survives the round trip


def test_encoder_round_trip_and_plain_torch_load(tmp_path):
    model = Encoder(TransformerConfig(vocab_size=None, block_size=5, n_layer=1, n_head=1, n_embd=4, n_out=2))
    path = save_checkpoint(model, tmp_path / "enc.pt")
    payload = torch.load(path, weights_only=True)  # plain data: safe to load
    assert payload["class"] == "helpers.model:Encoder"
    x = torch.randn(3, 5, 4)
    assert torch.equal(load_checkpoint(path)(x), model.eval()(x))


def test_missing_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run the notebook"):
        load_checkpoint("99_nothing")


def test_foreign_class_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"class": "os:system", "config_class": "os:system", "config": {}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="not part of helpers"):
        load_checkpoint(path)


def test_checkpoint_path_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    assert checkpoint_path("x") == tmp_path / "checkpoints" / "x.pt"
    assert checkpoint_path("some/dir/x.pt").as_posix() == "some/dir/x.pt"
