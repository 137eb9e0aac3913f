import os

import pytest
import torch
from torch.testing import assert_close

from helpers import GPT, TransformerConfig
from helpers.data import OfflineError
from helpers.pretrained import gpt2_config, gpt2_to_gpt, load_gpt2, load_minilm, minilm_dir

SENTENCES = [
    "The cat sat on the mat.",
    "Attention is all you need.",
    "Transformers process whole sequences in parallel, unlike recurrent networks, which read one token at a time.",
    "a",
    "Ünïcödé, punctuation... and numbers: 3.14159!",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm(device="cpu")


def test_minilm_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=2)
    got = minilm.encode(SENTENCES, batch_size=3)
    assert got.shape == (5, 384)
    assert (got - expected.cpu()).abs().max().item() <= 1e-5


def test_minilm_equals_transformers_bert_hidden_states(minilm):
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(minilm_dir())).eval()
    ids, mask = minilm.tokenize(SENTENCES[:3])
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = minilm.model(ids, padding_mask=mask)
    assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-4)


def test_minilm_similarity_is_meaningful(minilm):
    a, b, c = minilm.encode(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
    assert torch.dot(a, b) > torch.dot(a, c) + 0.2
    assert_close(a.norm(), torch.tensor(1.0))


def test_gpt2_needs_the_network(monkeypatch):
    monkeypatch.setenv("TFS_OFFLINE", "1")
    with pytest.raises(OfflineError, match="TFS_OFFLINE"):
        load_gpt2()


@pytest.mark.online
@pytest.mark.skipif(os.environ.get("TFS_OFFLINE") == "1", reason="GPT-2 is downloaded from the hub: online only")
def test_gpt2_logits_equal_hugging_face():
    from transformers import GPT2LMHeadModel

    ours = load_gpt2(device="cpu")
    reference = GPT2LMHeadModel.from_pretrained("openai-community/gpt2").eval()
    ids = torch.tensor([[464, 5044, 318, 257, 1332, 286, 262]])
    with torch.no_grad():
        assert_close(ours(ids), reference(ids).logits, atol=1e-4, rtol=1e-4)


def _tiny_gpt2(seed=0):
    """A GPT-2 with random weights from a small transformers.GPT2Config: nothing is downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=24, vocab_size=50, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's initial 0.02, random biases and LayerNorms, so that each shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def _our_config(hf) -> TransformerConfig:
    c = hf.config
    return TransformerConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                             n_embd=c.n_embd, activation="gelu_tanh", layer_norm_eps=c.layer_norm_epsilon)


def test_tiny_random_gpt2_in_our_gpt_gives_the_same_logits():
    hf = _tiny_gpt2()
    ours = GPT(_our_config(hf)).eval()
    ours.load_state_dict(gpt2_to_gpt(hf.state_dict(), hf.config.n_layer))
    ids = torch.randint(0, 50, (3, 24))
    with torch.no_grad():
        expected = hf(ids).logits
        assert_close(ours(ids), expected, atol=1e-5, rtol=1e-4)
        assert_close(ours(ids[:, :7]), hf(ids[:, :7]).logits, atol=1e-5, rtol=1e-4)  # shorter prompts too
        # GPT-2's Conv1D stores (in, out): loading without the transposes gives other logits
        wrong = {k: (v.t() if v.dim() == 2 and v.size(0) == v.size(1) and "blocks" in k else v)
                 for k, v in gpt2_to_gpt(hf.state_dict(), hf.config.n_layer).items()}
        ours.load_state_dict(wrong)
        assert not torch.allclose(ours(ids), expected, atol=1e-3)


def test_tiny_gpt2_needs_its_tanh_gelu():
    hf = _tiny_gpt2()
    exact = GPT(TransformerConfig(**{**vars(_our_config(hf)), "activation": "gelu"})).eval()
    exact.load_state_dict(gpt2_to_gpt(hf.state_dict(), hf.config.n_layer))
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        gap = (exact(ids) - hf(ids).logits).abs().max().item()
    assert 1e-4 < gap < 1e-2  # small, but a hundred times a correct port's rounding


def test_gpt2_config_names():
    assert gpt2_config("gpt2").n_layer == 12 and gpt2_config("gpt2-medium").n_embd == 1024
    assert gpt2_config().activation == "gelu_tanh"
