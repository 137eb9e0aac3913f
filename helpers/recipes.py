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
after that many evaluations without a new best. Every ``gpu`` recipe selects on validation this way (``patience``
only where a notebook does not compare models at an equal budget).

Each ``gpu`` recipe is sized for about 30 minutes of its whole notebook on a free Colab T4 (16 GB; float16 with
loss scaling). The estimates beside them count 6 x parameters x tokens (or images) for training, plus attention,
at 8 TFLOP/s, a realistic rate for a T4 on models this small; none has been measured on a GPU yet.
"""

from __future__ import annotations


def _profiles(common: dict, **per_profile: dict) -> dict[str, dict]:
    """``dict(ci=common | ci, cpu=common | cpu, gpu=common | gpu)``: the settings every profile
    shares, then each profile's own."""
    return {profile: {**common, **own} for profile, own in per_profile.items()}


# 01 · einsum: matrix sizes T of the einsum-vs-matmul timing
# (nothing trains: no model to select; gpu: under a minute on a T4)
EINSUM = _profiles({}, ci=dict(sizes=[16, 128]), cpu=dict(sizes=[16, 64, 256, 512]),
                   gpu=dict(sizes=[16, 64, 256, 1024]))

# 02 · attention: random vectors per point of the scaling experiment; the reversal task of section 9 (strings of
# min_len..max_len digits; the encoder-decoder has n_layer blocks on each side, the decoder-only GPT 2 * n_layer;
# both train `steps` of `batch_size`; n_eval validation and n_eval test strings; s2s_floor: its accuracy floor)
ATTENTION = _profiles(
    dict(min_len=3, max_len=8, n_layer=2, n_embd=64, batch_size=64, lr=3e-3, steps=400, n_eval=1000, s2s_floor=0.9,
         keep_best=False, patience=None),
    # gpu: the cpu recipe's two 0.1M-parameter models (400 steps of 64 strings, ~1e12 FLOP): a few minutes on a
    # T4, bound by the time to launch each step; the weights of the lowest validation loss are kept
    ci=dict(samples=2_000), cpu=dict(samples=20_000), gpu=dict(samples=20_000, keep_best=True),
)

# 03 · language modelling: the character-level GPT on Tiny Shakespeare (also `train_cli shakespeare`
# and benchmarks/lm_shakespeare.py), and the vocabulary of the byte-pair encoding
LANGUAGE_MODEL = _profiles(
    dict(n_head=4, block_size=64, batch_size=12, lr=3e-3, n_layer=2, dropout=0.0, bpe_vocab=512, keep_best=False,
         patience=None),
    ci=dict(n_embd=64, steps=400, eval_every=40),
    cpu=dict(n_embd=128, steps=3000, eval_every=300),
    # nanoGPT's shakespeare-char model (6 layers, width 384, block 256, batch 64, dropout 0.2, lr 1e-3 to 1e-4):
    # only it is big enough to overfit Tiny Shakespeare. nanoGPT decays over 5,000 steps and is at its best near
    # step 1,750 (1.467 nats/char), still at a high learning rate; here the cosine decay ends at step 3,000 and the
    # validation loss is read every 250 steps (as nanoGPT), the best weights kept, training stopped after 4
    # evaluations without a new best. T4: 10.8M parameters x 49M tokens x 6 (+ attention) = 3.5e15 FLOP per model,
    # the character and the BPE model: ~15 minutes of training, ~20 for the notebook
    gpu=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, lr=1e-3, steps=3000, dropout=0.2,
             bpe_vocab=1024, eval_every=250, keep_best=True, patience=4),
)

# nanoGPT's CPU configuration (4 layers, 4 heads, width 128, learning rate 1e-3), for the benchmarks only
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, dropout=0.0)

# 04 · arithmetic: the same GPT for every writing of addition (also `train_cli arithmetic`), multiplication,
# and the accuracy floors the notebook asserts; n_val problems (never trained on) are watched during training
ARITHMETIC = _profiles(
    # autocast_dtype None: float32 everywhere (TF32 on CUDA), because bfloat16's 8-bit mantissa in the attention's
    # qkv projection stalls learning (the abacus model: 11.6% after the ci recipe's 500 steps on an H200)
    dict(n_layer=2, n_head=4, n_embd=128, lr=1e-3, mul_lr=2e-3, n_test=2000, n_val=500, curve_points=12,
         keep_best=False, patience=None, autocast_dtype=None),
    ci=dict(max_digits=5, batch_size=128, steps=500, mul_steps=150, curve_points=6, add_floor=0.99, mul_floor=0.05),
    cpu=dict(max_digits=5, batch_size=256, steps=1000, mul_steps=1000, add_floor=0.999, mul_floor=0.97),
    # gpu: the weights of the best validation accuracy kept (no early stop: the writings compare at equal steps).
    # T4: 2.4M parameters x 12k tokens x 6 = 1.7e11 FLOP a step, 4,000 steps x 3 writings + multiplication
    # ~3e15 FLOP, but a step this small is bound by launching its kernels: ~10 minutes for the notebook
    gpu=dict(max_digits=7, n_layer=3, n_embd=256, batch_size=512, steps=4000, mul_steps=3000, mul_lr=1e-3,
             add_floor=0.999, mul_floor=0.97, keep_best="accuracy"),
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
    # gpu: the lowest validation loss kept (no early stop: the generators compare at equal steps). T4: 6.3M
    # parameters x 6,272 patches a step x 6 = 2.4e11 FLOP, x 8,000 steps x 5 generators = 9.5e15 FLOP, ~20 minutes,
    # plus sampling and scoring 10,000 images: ~25-30 minutes for the notebook
    gpu=dict(model=dict(n_layer=8, n_head=8, n_embd=256), batch_size=128, lr=6e-4, judge_steps=2000, steps=8000,
             per_digit=100, eval_images=10_000, mixture_images=10_000, agreement_floor=0.9, sample_floor=0.5,
             keep_best=True),
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
    # gpu: the weights of the best validation accuracy (read once an epoch) kept; the three models compare at
    # equal epochs, so no early stop. T4: 45,000 images x 40 epochs x 3 x (5.8e8 FLOP for a forward pass of each
    # ViT, 3.9e8 for the ResNet) = 8.3e15 FLOP, ~17 minutes, plus the augmentation on Colab's 2 CPU cores:
    # ~25 minutes for the notebook (60 epochs would be ~35)
    gpu=dict(n_train=None, n_val=5000, batch_size=256, epochs=40, lr=1e-3,
             vit=dict(n_layer=7, n_head=4, n_embd=256, conv_width=64), resnet=(64, 128, 256),
             keep_best="validation accuracy"),
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
    # gpu: the weights of the best validation accuracy kept (encoder and causal compare at equal steps). The model
    # is tiny (0.3M parameters, ~20 frames a clip): ~15,000 steps bound by launching kernels and by augmenting clips
    # on the CPU, ~10 minutes on a T4
    gpu=dict(steps=3000, batch_size=128, lr=2e-3, augment=True, loso_steps=1500, keep_best="validation accuracy"),
)

# 08 · music generation: block_size in tokens (1, 2 or 8 bars of 16 sixteenths); MAESTRO also needs the network
MUSIC_GENERATION = _profiles(
    dict(n_head=4, lr=2e-3, dropout=0.1, transpose=3,  # transpose: random key changes of up to 3 semitones
         keep_best=False, patience=None),
    ci=dict(block_size=64, n_layer=2, n_embd=64, steps=150, batch_size=16, use_maestro=False),
    cpu=dict(block_size=128, n_layer=3, n_embd=96, steps=800, batch_size=16, use_maestro=False),
    # gpu: 229 chorales are soon overfitted by a 4.7M-parameter model: the lowest validation loss is kept and
    # training stops after 4 evaluations without a new best. T4: 4.7M parameters x 32,768 tokens a step x 6
    # (+ attention over 512) = 1.2e12 FLOP, x 4,000 steps = 5e15 FLOP, ~10 minutes; with MAESTRO (online) its
    # piano model about as much again: ~20-25 minutes
    gpu=dict(block_size=512, n_layer=6, n_embd=256, steps=4000, batch_size=64, use_maestro=True, keep_best=True,
             patience=4),
)

# 09 · a modern LLM (SmolLM2-135M-Instruct): `reference` is transformers' model the logits are checked against
# ("gguf": its own GGUF loader, 15-20 s; "helpers": LlamaForCausalLM given our dequantized weights, 1 s);
# validation loss over the first `val_chars` characters of Tiny Shakespeare's validation split, in windows of
# `eval_block` tokens; LoRA (r, alpha) on the top `lora_layers` blocks, `steps` of `batch_size` x `block_size`
# tokens, stopped early after `time_limit` seconds on a slow machine. lr chosen among 1e-3, 3e-3, 1e-2 (16 cpu-recipe
# steps) on the validation split's last 11,540 characters, which the reported loss never reads: 1.183, 1.168, 1.175
MODERN_LLM = _profiles(
    dict(eval_block=256, r=8, alpha=16, lr=3e-3),
    ci=dict(reference="helpers", bits_chars=2_000, greedy_tokens=8, sample_tokens=12, chat_tokens=24, val_chars=2_000, lora_layers=2,
            block_size=32, batch_size=2, steps=2, time_limit=60),
    cpu=dict(reference="gguf", bits_chars=2_000, greedy_tokens=64, sample_tokens=30, chat_tokens=60, val_chars=20_000,
             lora_layers=4, block_size=128, batch_size=8, steps=140, time_limit=420),
    gpu=dict(reference="gguf", bits_chars=20_000, greedy_tokens=64, sample_tokens=60, chat_tokens=200, val_chars=100_000,
             lora_layers=30, block_size=256, batch_size=16, steps=600, lr=1e-3, time_limit=900),  # (not yet run)
)

# 10 · chat with a PDF: chunking, retrieval, and what the notebook compares and times
CHAT_WITH_PDF = _profiles(
    # chunks of `max_words`, `k` retrieved; the local model reads their `n_sentences` closest sentences. Gemma 3
    # 270M (a base model, with rag.EXAMPLE as a worked example) reads `gemma_sentences` (None: the whole chunks),
    # chosen on the 46 development questions: ok 0.52 with the whole chunks and 0.48 with 3 sentences (its own
    # drafts state the fact 19 and 14 times); 0.52 with 3 sentences and no example (14 drafts)
    dict(max_words=80, overlap_words=20, k=3, n_sentences=3, gemma_sentences=None),
    # sweep: other (max_words, overlap_words) settings to compare: none in ci. local_steps: the steps of
    # section 11, on the first `dev_questions` development questions (None: all 46); `test_questions` held out
    # (None: all 30)
    ci=dict(sweep=[], latency_questions=3, local_steps=["context"], dev_questions=3, test_questions=4,
            floors=dict(local=0.25, extractive=0.25)),
    cpu=dict(sweep=[(60, 15), (100, 25), (80, 0)], latency_questions=10,
             local_steps=["alone", "prompt", "decoding", "context", "example"], dev_questions=None,
             test_questions=None, floors=dict(local=0.4, extractive=0.5)),
    gpu=dict(sweep=[(60, 15), (100, 25), (80, 0)], latency_questions=10,
             local_steps=["alone", "prompt", "decoding", "context", "example"], dev_questions=None,
             test_questions=None, floors=dict(local=0.4, extractive=0.5)),
)

# 11 · post-training: 3-digit addition written plainly (zero-padded operands), the course's GPT at `model`, started
# with `sft_steps` of SFT at start_lr; then every method gets `budget_steps` SFT steps' worth of compute (tokens sampled
# and scored count 1, trained 3). RL methods sample `group` answers for each of `prompts` problems; GRPO takes
# `grpo_epochs` clipped steps per batch with a KL penalty kl_beta. Learning rates chosen on the 300 validation problems
# (16 samples each) after the cpu recipe's start (pass@1 21%, pass@16 78%), 150-step budgets: more SFT 1e-4 / 3e-4 /
# 1e-3 -> pass@1 38 / 41 / 46%; rejection sampling 37 / 40%, DPO 35 / 37 / 28%, GRPO 33 / 35 / 3% (collapsed),
# REINFORCE 35 / 37% at 1e-4 / 3e-4 (/ 1e-3). SmolLM2: LoRA (r, alpha) on the top `lora_layers` blocks, `llm_steps`
# of chat SFT (batches of llm_batch) and of DPO on `dpo_pairs` pairs; `held_out` questions answered greedily in at
# most `chat_tokens` tokens. DPO's learning rate and NLL weight (llm_rpo_alpha, trl's rpo_alpha) chosen on 8 validation
# questions (neither trained on nor held out), 6 pairs: plain DPO at 1e-4 / 3e-4 (20 steps) gave 0 / 0 one-sentence
# answers of 8, at 6e-4 (30) / 1e-3 (20) 2 / 3 of 8 in degenerate text (repeated words); with the NLL term (alpha 1)
# 8 of 8 at both, fluent
POST_TRAINING = _profiles(
    dict(digits=3, model=dict(n_layer=2, n_head=4, n_embd=64), batch_size=64, start_lr=3e-3, sft_lr=1e-3, rl_lr=3e-4,
         prompts=16, group=8, grpo_epochs=2, clip=0.2, kl_beta=0.02, dpo_beta=0.1, n_samples=16, curve_samples=4,
         r=8, alpha=16, llm_lr=2e-3, llm_dpo_beta=0.1, llm_dpo_lr=1e-3, llm_rpo_alpha=1.0),
    ci=dict(sft_steps=500, budget_steps=40, n_test=200, n_val=100, pool=50_000, curve_points=2, curve_problems=100,
            lora_layers=2, llm_steps=2, llm_batch=2, dpo_pairs=2, held_out=2, chat_tokens=12),
    cpu=dict(sft_steps=800, budget_steps=300, n_test=500, n_val=300, pool=120_000, curve_points=6,
             curve_problems=200, lora_layers=4, llm_steps=20, llm_batch=4, dpo_pairs=6, held_out=10, chat_tokens=48),
    # gpu (not yet run): the cpu recipe with twice the budget and test problems; every step is tiny, bound by
    # launching kernels, and the samples are decoded on the CPU: a few minutes on a T4
    gpu=dict(sft_steps=800, budget_steps=600, n_test=1000, n_val=300, pool=200_000, curve_points=8,
             curve_problems=300, lora_layers=8, llm_steps=40, llm_batch=6, dpo_pairs=8, held_out=10, chat_tokens=64),
)

# 12 · diffusion transformer: `model` is the DiT (patches of 4x4 on 28x28 digits, 49 tokens), trained `steps` of
# `batch_size` with an EMA of its weights (`ema_decay`), one label in ten dropped (`class_dropout`) for guidance;
# `gpt` is notebook 05's best class-conditional generator (the discrete prefix model, its profile's model and
# learning rate), trained here on as many images (steps x batch) as the DiT; `per_digit` samples per digit are
# judged and measured against `eval_images` test images; `guidance_scales` are compared on validation images,
# `sample_steps` are the DDIM step counts measured (cpu: 250 left out, too slow on 2 cores); the floors are what the
# notebook asserts
DIFFUSION = _profiles(
    dict(schedule="cosine", class_dropout=0.1, min_snr=5.0, ema_decay=0.999, warmup=50, judge_steps=600, n_val=5000,
         guidance_scales=[0.0, 1.0, 2.0, 3.0, 4.0], keep_best=False, patience=None),
    # ci: 300 steps teach the DiT the texture of digits, not yet their shapes: only its loss is asserted
    ci=dict(model=dict(n_layer=2, n_head=4, n_embd=64), batch_size=64, lr=2e-3, steps=300, per_digit=10,
            eval_images=2000, sample_steps=[10, 25], gpt=dict(IMAGE_GENERATION["ci"], batch_size=64),
            judge_steps=150, guidance_scales=[0.0, 1.0, 3.0], loss_floor=0.5, agreement_floor=0.0),
    # cpu: chosen by the judge's agreement (100 samples, 25 DDIM steps, guidance scale 1 / 3; no test image read):
    # 1,000 steps of 128 at lr 1e-3 drew textures, not digits (11% / 11%); with min-SNR weights at lr 2e-3, 15% / 27%;
    # batches of 64 (twice the updates for the same compute): 48% / 81% after 1,250 / 1,875 of 2,500 steps, 58% / 89%
    # at the end (digits clearly drawn)
    cpu=dict(model=dict(n_layer=4, n_head=4, n_embd=128), batch_size=64, lr=2e-3, steps=2500, per_digit=20,
             eval_images=5000, sample_steps=[10, 25, 50, 100], gpt=dict(IMAGE_GENERATION["cpu"], batch_size=64),
             loss_floor=0.1, agreement_floor=0.4),
    # gpu: 7M parameters on all 55,000 training images (MNIST's 60,000 less the validation split), 47 epochs. T4:
    # 7M x 49 tokens x 256 images x 6 = 5.3e11 FLOP a step, x 10,000 steps = 5.3e15 FLOP (~11 min); 05's GPT on
    # as many images (20,000 steps of 128) 4.7e15 (~10 min); sampling and scoring: ~25-30 minutes in all (not yet run)
    gpu=dict(model=dict(n_layer=6, n_head=4, n_embd=256), batch_size=256, lr=5e-4, steps=10_000, per_digit=100,
             eval_images=10_000, sample_steps=[10, 25, 50, 250], gpt=dict(IMAGE_GENERATION["gpu"], batch_size=128),
             judge_steps=2000, loss_floor=0.1, agreement_floor=0.9),
)

ALL = {
    "01_einsum": EINSUM, "02_attention_and_transformer": ATTENTION, "03_language_modelling": LANGUAGE_MODEL,
    "04_arithmetic": ARITHMETIC, "05_image_generation": IMAGE_GENERATION,
    "06_image_classification": IMAGE_CLASSIFICATION, "07_audio_classification": AUDIO_CLASSIFICATION,
    "08_music_generation": MUSIC_GENERATION, "09_modern_llm": MODERN_LLM, "10_chat_with_pdf": CHAT_WITH_PDF,
    "11_post_training": POST_TRAINING,
    "12_diffusion_transformer": DIFFUSION,
}
