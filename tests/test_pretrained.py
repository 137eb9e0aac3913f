import os

import pytest
import torch
from torch.testing import assert_close

from helpers.data import OfflineError
from helpers.pretrained import load_gpt2, load_minilm, minilm_dir

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
