import torch
from torch.testing import assert_close

from helpers import GPT, TransformerConfig, generate
from helpers.generate import filter_logits, sample_next


def tiny_gpt(block_size=32):
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=23, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()


def test_top_k_never_picks_outside_the_k_best():
    logits = torch.randn(4, 50)
    best = logits.topk(5, dim=-1).indices  # (4, 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        picked = sample_next(logits, temperature=1.5, top_k=5, generator=g)  # (4, 1)
        assert (picked == best).any(dim=-1).all()
    filtered = filter_logits(logits, top_k=5)
    assert (filtered > float("-inf")).sum(-1).tolist() == [5, 5, 5, 5]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_p=0.7) > float("-inf")
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.5 + 0.3
    kept = filter_logits(logits, top_p=0.1) > float("-inf")
    assert kept.tolist() == [[True, False, False, False]]  # the best token always survives
    g = torch.Generator().manual_seed(1)
    picks = {sample_next(logits, top_p=0.7, generator=g).item() for _ in range(200)}
    assert picks == {0, 1}


def test_temperature_zero_is_greedy():
    model = tiny_gpt()
    prompt = torch.randint(0, 23, (3, 5))
    out = generate(model, prompt, 10, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(10):  # the arg-max, one token at a time, re-reading the whole prefix
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_cache_path_equals_no_cache_path():
    model = tiny_gpt()
    prompt = torch.randint(0, 23, (2, 4))
    assert torch.equal(generate(model, prompt, 20, temperature=0),
                       generate(model, prompt, 20, temperature=0, use_cache=False))
    sampled = [generate(model, prompt, 20, top_p=0.9, temperature=0.8, use_cache=c,
                        generator=torch.Generator().manual_seed(7)) for c in (True, False)]
    assert torch.equal(*sampled)
    # The logits themselves: one position at a time with the cache equals the full forward pass.
    ids = torch.randint(0, 23, (2, 12))
    cache = model.new_cache(2)
    with torch.no_grad():
        steps = torch.cat([model(ids[:, t : t + 1], cache=cache) for t in range(12)], dim=1)
        assert_close(steps, model(ids), atol=1e-5, rtol=1e-5)


def test_generation_past_block_size_slides_the_window():
    model = tiny_gpt(block_size=8)
    prompt = torch.randint(0, 23, (1, 3))
    out = generate(model, prompt, 20, temperature=0)
    assert out.shape == (1, 23)
    assert torch.equal(out, generate(model, prompt, 20, temperature=0, use_cache=False))
