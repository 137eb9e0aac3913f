"""Every notebook's recipe: its hyper-parameters for each profile, in one place.

A notebook reads its recipe once, near the top, and prints it::

    hp = pick(**recipes.ARITHMETIC)     # the dict of the active profile (TFS_PROFILE: ci, cpu or gpu)
    hp

``python -m helpers.train_cli`` and the scripts in ``benchmarks/`` read the same objects, so the
command line, the benchmarks and the notebooks always train the same models. Each recipe is
``dict(ci=..., cpu=..., gpu=...)``: ``ci`` runs in about two minutes on 2 CPU cores (the test suite),
``cpu`` gives the figures quoted in the README, ``gpu`` is the original tutorial's scale.

``keep_best`` and ``patience`` go to :func:`helpers.fit` wherever a notebook trains with validation data: with
``keep_best`` the model ends with the weights of its best validation evaluation, and ``patience`` stops training
after that many evaluations without a new best.
"""

from __future__ import annotations


def _profiles(common: dict, **per_profile: dict) -> dict[str, dict]:
    """``dict(ci=common | ci, cpu=common | cpu, gpu=common | gpu)``: the settings every profile
    shares, then each profile's own."""
    return {profile: {**common, **own} for profile, own in per_profile.items()}


# 01 · einsum: matrix sizes T of the einsum-vs-matmul timing
EINSUM = _profiles({}, ci=dict(sizes=[16, 128]), cpu=dict(sizes=[16, 64, 256, 512]),
                   gpu=dict(sizes=[16, 64, 256, 1024]))

# 02 · attention: random vectors per point of the scaling experiment; the reversal task of section 9 (strings of
# min_len..max_len digits; the encoder-decoder has n_layer blocks on each side, the decoder-only GPT 2 * n_layer;
# both train `steps` of `batch_size`; n_eval validation and n_eval test strings; s2s_floor: its accuracy floor)
ATTENTION = _profiles(
    dict(min_len=3, max_len=8, n_layer=2, n_embd=64, batch_size=64, lr=3e-3, steps=400, n_eval=1000, s2s_floor=0.9,
         keep_best=False, patience=None),
    ci=dict(samples=2_000), cpu=dict(samples=20_000), gpu=dict(samples=20_000),
)

# 03 · language modelling: the character-level GPT on Tiny Shakespeare (also `train_cli shakespeare`
# and benchmarks/lm_shakespeare.py), and the vocabulary of the byte-pair encoding
LANGUAGE_MODEL = _profiles(
    dict(n_head=4, block_size=64, batch_size=12, lr=3e-3, n_layer=2, dropout=0.0, bpe_vocab=512, keep_best=False,
         patience=None),
    ci=dict(n_embd=64, steps=400),
    cpu=dict(n_embd=128, steps=3000),
    # only the gpu model is big enough to overfit Tiny Shakespeare, hence its dropout
    gpu=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, lr=1e-3, steps=5000, dropout=0.2,
             bpe_vocab=1024),
)

# nanoGPT's CPU configuration (4 layers, 4 heads, width 128, learning rate 1e-3), for the benchmarks only
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, dropout=0.0)

# 04 · arithmetic: the same GPT for every writing of addition (also `train_cli arithmetic`), multiplication,
# and the accuracy floors the notebook asserts; n_val problems (never trained on) are watched during training
ARITHMETIC = _profiles(
    dict(n_layer=2, n_head=4, n_embd=128, lr=1e-3, mul_lr=2e-3, n_test=2000, n_val=500, curve_points=12,
         keep_best=False, patience=None,
         autocast_dtype=None),  # float32 (TF32 on CUDA): bfloat16's 8-bit precision in the qkv projection stalls learning
    ci=dict(max_digits=5, batch_size=128, steps=500, mul_steps=150, curve_points=6, add_floor=0.99, mul_floor=0.05),
    cpu=dict(max_digits=5, batch_size=256, steps=1000, mul_steps=1000, add_floor=0.999, mul_floor=0.97),
    gpu=dict(max_digits=7, n_layer=3, n_embd=256, batch_size=512, steps=4000, mul_steps=3000, mul_lr=1e-3,
             add_floor=0.999, mul_floor=0.97),
)

# 05 · image generation: `model` is the shape of every generator, and every generator (regression unconditional,
# prefix and cross; discrete prefix and cross) trains the same `steps` of `batch_size`; eval_images test images
# (mixture_images for the marginal likelihood) are read once, at the end; the floors are what the notebook asserts
IMAGE_GENERATION = _profiles(
    dict(keep_best=False, patience=None),
    ci=dict(model=dict(n_layer=2, n_head=4, n_embd=64), batch_size=64, lr=3e-3, judge_steps=150, steps=300,
            per_digit=10, eval_images=2000, mixture_images=200, agreement_floor=0.2, sample_floor=0.15),
    cpu=dict(model=dict(n_layer=4, n_head=4, n_embd=128), batch_size=64, lr=1.5e-3, judge_steps=600, steps=600,
             per_digit=50, eval_images=5000, mixture_images=500, agreement_floor=0.7, sample_floor=0.3),
    gpu=dict(model=dict(n_layer=8, n_head=8, n_embd=256), batch_size=128, lr=6e-4, judge_steps=2000, steps=8000,
             per_digit=100, eval_images=10_000, mixture_images=10_000, agreement_floor=0.9, sample_floor=0.5),
)

# 06 · image classification: every model trains the same epochs with the same batch (also `train_cli cifar10`);
# `vit` is the transformer of both ViTs (conv_width: the compact one's tokenizer), `resnet` the channels
# of the ResNet's three stages; n_train None means all the training images, of which n_val are held out
# (stratified, seeded: helpers.vision.cifar.stratified_split) to validate on; the test set is used once, at the end
IMAGE_CLASSIFICATION = _profiles(
    dict(weight_decay=0.05, label_smoothing=0.1, n_val=1000, keep_best=False, patience=None),
    ci=dict(n_train=10_000, batch_size=64, epochs=2, lr=2e-3, vit=dict(n_layer=2, n_head=2, n_embd=96, conv_width=32),
            resnet=(16, 32, 64)),
    cpu=dict(n_train=10_000, batch_size=64, epochs=20, lr=2e-3,
             vit=dict(n_layer=2, n_head=2, n_embd=128, conv_width=32), resnet=(16, 32, 64)),
    gpu=dict(n_train=None, n_val=5000, batch_size=256, epochs=60, lr=1e-3,
             vit=dict(n_layer=7, n_head=4, n_embd=256, conv_width=64), resnet=(64, 128, 256)),
)

# 07 · audio classification: `model` is the AudioConfig (features, section 2; model, section 3), the same in
# every profile (also benchmarks/audio_loso.py); augmentation is too slow to pay off in ci's short run
AUDIO_CLASSIFICATION = _profiles(
    dict(model=dict(n_mels=40, pre_emphasis=0.97, floor_db=30, speech_db=30, n_mfcc=20, n_layer=2, n_head=4,
                    n_embd=96, conv_channels=96, dropout=0.1),
         weight_decay=0.05, loso_speakers=("george", "jackson", "lucas", "nicolas", "theo", "yweweler"),
         keep_best=False, patience=None),
    ci=dict(steps=400, batch_size=32, lr=3e-3, augment=False, loso_speakers=("theo",), loso_steps=100),
    cpu=dict(steps=3000, batch_size=64, lr=2e-3, augment=True, loso_steps=1000),
    gpu=dict(steps=3000, batch_size=128, lr=2e-3, augment=True, loso_steps=1500),
)

# 08 · music generation: block_size in tokens (1, 2 or 8 bars of 16 sixteenths); MAESTRO also needs the network
MUSIC_GENERATION = _profiles(
    dict(n_head=4, lr=2e-3, dropout=0.1, transpose=3,  # transpose: random key changes of up to 3 semitones
         keep_best=False, patience=None),
    ci=dict(block_size=64, n_layer=2, n_embd=64, steps=150, batch_size=16, use_maestro=False),
    cpu=dict(block_size=128, n_layer=3, n_embd=96, steps=800, batch_size=16, use_maestro=False),
    gpu=dict(block_size=512, n_layer=6, n_embd=256, steps=4000, batch_size=64, use_maestro=True),
)

# 09 · a modern LLM (SmolLM2-135M-Instruct): `reference` is transformers' model the logits are checked against
# ("gguf": its own GGUF loader, 15-20 s; "helpers": LlamaForCausalLM given our dequantized weights, 1 s);
# validation loss over the first `val_chars` characters of Tiny Shakespeare's validation split, in windows of
# `eval_block` tokens; LoRA (r, alpha) on the top `lora_layers` blocks, `steps` of `batch_size` x `block_size`
# tokens, stopped early after `time_limit` seconds on a slow machine. lr chosen among 1e-3, 3e-3, 1e-2 (16 cpu-recipe
# steps) on the validation split's last 11,540 characters, which the reported loss never reads: 1.183, 1.168, 1.175
MODERN_LLM = _profiles(
    dict(eval_block=256, r=8, alpha=16, lr=3e-3),
    ci=dict(reference="helpers", greedy_tokens=8, sample_tokens=12, chat_tokens=24, val_chars=2_000, lora_layers=2,
            block_size=32, batch_size=2, steps=2, time_limit=60),
    cpu=dict(reference="gguf", greedy_tokens=64, sample_tokens=40, chat_tokens=120, val_chars=20_000,
             lora_layers=4, block_size=128, batch_size=8, steps=140, time_limit=420),
    gpu=dict(reference="gguf", greedy_tokens=64, sample_tokens=60, chat_tokens=200, val_chars=100_000,
             lora_layers=30, block_size=256, batch_size=16, steps=600, lr=1e-3, time_limit=900),  # (not yet run)
)

# 10 · chat with a PDF: chunking, retrieval, and what the notebook compares and times
CHAT_WITH_PDF = _profiles(
    # chunks of `max_words`, `k` retrieved; the local model reads their `n_sentences` closest sentences
    dict(max_words=80, overlap_words=20, k=3, n_sentences=3),
    # sweep: other (max_words, overlap_words) settings to compare: none in ci. local_steps: the steps of
    # section 11, on the first `dev_questions` development questions (None: all 23); `test_questions` held out
    ci=dict(sweep=[], latency_questions=3, local_steps=["context"], dev_questions=3, test_questions=4,
            floors=dict(local=0.25)),
    cpu=dict(sweep=[(60, 15), (100, 25), (80, 0)], latency_questions=10,
             local_steps=["alone", "prompt", "decoding", "context", "example"], dev_questions=None,
             test_questions=None, floors=dict(local=0.4)),
    gpu=dict(sweep=[(60, 15), (100, 25), (80, 0)], latency_questions=10,
             local_steps=["alone", "prompt", "decoding", "context", "example"], dev_questions=None,
             test_questions=None, floors=dict(local=0.4)),
)

ALL = {
    "01_einsum": EINSUM, "02_attention_and_transformer": ATTENTION, "03_language_modelling": LANGUAGE_MODEL,
    "04_arithmetic": ARITHMETIC, "05_image_generation": IMAGE_GENERATION,
    "06_image_classification": IMAGE_CLASSIFICATION, "07_audio_classification": AUDIO_CLASSIFICATION,
    "08_music_generation": MUSIC_GENERATION, "09_modern_llm": MODERN_LLM, "10_chat_with_pdf": CHAT_WITH_PDF,
}
