import json
from pathlib import Path

import pytest
import torch

from helpers import GPT, Encoder, TransformerConfig, load_checkpoint, save_checkpoint
from helpers.checkpoint import CheckpointError, checkpoint_path


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
    assert torch.equal(load_checkpoint(path).classify(x), model.eval().classify(x))


def test_missing_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run the notebook"):
        load_checkpoint("99_nothing")


@pytest.mark.parametrize("model_class, config_class, refused", [
    ("os:system", "helpers.model:TransformerConfig", "not a class of the helpers package"),
    ("helpers_x:Thing", "helpers.model:TransformerConfig", "not a class of the helpers package"),
    ("helpers.data:fetch_file", "helpers.model:TransformerConfig", "not a class defined in helpers"),
    ("helpers.checkpoint:torch", "helpers.model:TransformerConfig", "not a class defined in helpers"),
    ("helpers.data:RemoteFile", "helpers.model:TransformerConfig", "not a torch.nn.Module"),
    ("helpers.model:GPT", "helpers.data:register", "not a class defined in helpers"),
    ("helpers.model:GPT", "helpers.model:GPT", "not a dataclass config"),
    ("helpers.model:GPT", "helpers.model:NoSuchConfig", "does not exist"),
    ("helpers.model:GPT", "builtins:dict", "not a class of the helpers package"),
])
def test_a_crafted_checkpoint_naming_anything_else_is_refused(tmp_path, model_class, config_class, refused):
    path = tmp_path / "crafted.pt"
    torch.save({"class": model_class, "config_class": config_class, "config": {}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint written by helpers.save_checkpoint"):
        load_checkpoint(path)


OLD = json.loads((Path(__file__).parent / "data" / "checkpoints_903250f.json").read_text())


@pytest.mark.parametrize("name", sorted(OLD))
def test_checkpoints_written_before_the_helpers_were_reorganised_still_load(tmp_path, name):
    # tests/data/checkpoints_903250f.json describes checkpoints that main at 903250f wrote (one of each model
    # class a notebook saves): the class paths it named (helpers.vision:PatchGPT, before vision became a
    # package), the config, every state-dict entry's shape, and which entries are one tied tensor. Rebuild such
    # a file and load it.
    old = OLD[name]
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 3, shape, generator=generator) if k.endswith("num_batches_tracked")
                 else torch.randn(shape, generator=generator)) for k, shape in old["state_dict"].items()}
    state.update({k: state[other] for k, other in old["tied"].items()})  # tied weights: one tensor, two names
    path = tmp_path / f"{name}.pt"
    torch.save({"class": old["class"], "config_class": old["config_class"], "config": old["config"],
                "state_dict": state, "extra": {}}, path)
    model = load_checkpoint(path)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == old["state_dict"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key].to(tensor.dtype)), key


def test_checkpoint_path_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    assert checkpoint_path("x") == tmp_path / "checkpoints" / "x.pt"
    assert checkpoint_path("some/dir/x.pt").as_posix() == "some/dir/x.pt"
