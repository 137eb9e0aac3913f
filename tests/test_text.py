import pytest
import torch

from helpers.text import (
    BPETokenizer,
    CharTokenizer,
    hf_bpe_merges,
    lm_batches,
    lm_eval_batches,
    merge_pair,
    per_char_loss,
    pre_tokenize,
    split_train_val,
)

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
    "All:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn at our own price.\n"
)


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.train(CORPUS)
    assert tok.vocab_size == len(set(CORPUS))
    assert tok.chars == sorted(tok.chars)
    assert tok.decode(tok.encode(CORPUS)) == CORPUS
    with pytest.raises(ValueError, match=r"not in this tokenizer's vocabulary.*BPETokenizer"):
        tok.encode("Zebra")  # no 'Z' or 'b'... in the corpus
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer.train("")


def test_merge_pair_left_to_right_without_overlap():
    assert merge_pair([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]
    assert merge_pair([], (1, 2), 9) == []


def test_bpe_merges_on_a_tiny_corpus():
    # The textbook example: "aa" is most frequent, then "ab" (tied with "aa"+"a", smaller ids win), then "aa"+"ab".
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3)
    a, b = ord("a"), ord("b")
    assert tok.merges == [(a, a), (a, b), (256, 257)]
    assert tok.token_str(258) == "aaab"
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, a, ord("c")]


def test_bpe_matches_hugging_face_trainer():
    ours = BPETokenizer.train(CORPUS * 3, 256 + 60)
    assert ours.merges == hf_bpe_merges(CORPUS * 3, 256 + 60)


def test_bpe_round_trip_including_unseen_characters():
    tok = BPETokenizer.train(CORPUS, 256 + 50)
    for text in [CORPUS, "naïve café, 😀 — ∑x_i² \t\r\n  end  ", ""]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(CORPUS)
    assert len(ids) < 0.8 * len(CORPUS.encode())  # merges compress
    assert max(ids) >= 256


def test_pre_tokenize_covers_every_character():
    text = "Hello, world!  It's 2024_x \n\n  ok"
    chunks = pre_tokenize(text)
    assert "".join(chunks) == text
    assert " world" in chunks and "'s" in chunks


def test_bpe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="256"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="earlier merge"):
        BPETokenizer([(300, 1)])


def test_split_and_batches():
    data = torch.arange(1000)
    train, val = split_train_val(data)
    assert len(train) == 900 and torch.equal(val, torch.arange(900, 1000))
    x, y = lm_batches(train, 16, 8, seed=1)(0)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # y is x one step on
    x2, _ = lm_batches(train, 16, 8, seed=1)(0)
    assert torch.equal(x, x2)  # seeded
    with pytest.raises(ValueError, match="block_size"):
        lm_batches(torch.arange(10), 16, 2)


def test_eval_batches_cover_every_token_once():
    data = torch.arange(105)
    batches = lm_eval_batches(data, 10, 4)
    xs = torch.cat([x for x, _ in batches]).flatten()
    ys = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(xs, torch.arange(100)) and torch.equal(ys, torch.arange(1, 101))


def test_per_char_loss():
    assert per_char_loss(2.0, 50, 100) == pytest.approx(1.0)
