"""helpers.post_training: each loss against its reference (F.cross_entropy, trl's DPO and GRPO trainers), pass@k
against brute-force enumeration, sampling with the cache, and the errors on bad input."""

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import GPT, TransformerConfig
from helpers import post_training as pt

trl = pytest.importorskip("trl")


class _Accelerator:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather_for_metrics(self, x):
        return x

    gather = gather_for_metrics

    def reduce(self, x, reduction="sum"):
        return x


def _logits_targets(B=3, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = pt.IGNORE
    targets[2, 5:] = pt.IGNORE
    return logits, targets


def test_masked_sft_loss_is_cross_entropy_with_ignore_index():
    logits, targets = _logits_targets()
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(pt.masked_sft_loss(logits, targets), expected)


def test_sequence_logprobs_sum_the_unmasked_tokens():
    logits, targets = _logits_targets()
    per_token = -F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(pt.sequence_logprobs(logits, targets), per_token.sum(-1))
    assert (pt.token_logprobs(logits, targets)[targets == pt.IGNORE] == 0).all()


def test_empty_answer_and_bad_shapes_are_errors():
    logits, targets = _logits_targets()
    with pytest.raises(ValueError, match="empty answer"):
        pt.masked_sft_loss(logits, torch.full_like(targets, pt.IGNORE))
    with pytest.raises(ValueError, match="expected"):
        pt.masked_sft_loss(logits, targets[:, :-1])
    with pytest.raises(ValueError, match="no completion"):
        pt.completion_targets(torch.zeros(2, 5, dtype=torch.long), prompt_len=5)


def test_completion_targets_mask_prompt_and_after_stop():
    seq = torch.tensor([[1, 2, 3, 4, 9, 5, 6], [1, 2, 3, 9, 7, 7, 7]])
    x, y = pt.completion_targets(seq, prompt_len=3, stop_id=9)
    assert torch.equal(x, seq[:, :-1])
    assert y.tolist() == [[-100, -100, 4, 9, -100, -100], [-100, -100, 9, -100, -100, -100]]


def _trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """trl's DPOTrainer._compute_loss on a stand-in model that returns the given per-token log-probabilities."""
    from trl import DPOTrainer

    per_token = torch.cat([policy_chosen, policy_rejected])  # (2P, T): the batch is [chosen, rejected]
    B, T = per_token.shape

    def model(**kwargs):
        return SimpleNamespace(log_probs=per_token, entropy=torch.zeros(B, T), mean_logits=torch.zeros(B, T),
                               is_top1=torch.zeros(B, T, dtype=torch.bool))

    model.training = True
    trainer = SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(B, T + 1, dtype=torch.long), "attention_mask": torch.ones(B, T + 1),
              "completion_mask": torch.ones(B, T + 1), "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl(beta):
    g = torch.Generator().manual_seed(1)
    chosen_tokens, rejected_tokens = -torch.rand(4, 6, generator=g) * 3, -torch.rand(4, 6, generator=g) * 3
    ref_c, ref_r = -torch.rand(4, generator=g) * 15, -torch.rand(4, generator=g) * 15
    ours, rc, rr = pt.dpo_loss(chosen_tokens.sum(-1), rejected_tokens.sum(-1), ref_c, ref_r, beta=beta)
    theirs = _trl_dpo(chosen_tokens, rejected_tokens, ref_c, ref_r, beta)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(rc, beta * (chosen_tokens.sum(-1) - ref_c))


def test_dpo_loss_worked_example_and_errors():
    # policy = reference: margin 0, loss log 2; preferring the chosen by 10 nats at beta 0.1: -log sigmoid(1)
    z = torch.zeros(2)
    assert pt.dpo_loss(z, z, z, z)[0].item() == pytest.approx(math.log(2))
    assert pt.dpo_loss(z + 5, z - 5, z, z, beta=0.1)[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    with pytest.raises(ValueError, match="one shape"):
        pt.dpo_loss(z, z[:1], z, z)
    with pytest.raises(ValueError, match="beta"):
        pt.dpo_loss(z, z, z, z, beta=0)


def test_group_advantages_match_trl_and_paper():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    mean = rewards.mean(1, keepdim=True)
    expected = (rewards - mean) / (nanstd(rewards, dim=1).unsqueeze(1) + 1e-4)  # trl's scale_rewards="group"
    torch.testing.assert_close(pt.group_advantages(rewards), expected)
    assert (pt.group_advantages(rewards)[1] == 0).all()  # all wrong: nothing to learn
    torch.testing.assert_close(pt.group_advantages(rewards, normalise=False), rewards - mean)
    with pytest.raises(ValueError, match="at least 2"):
        pt.group_advantages(torch.ones(5, 1))
    with pytest.raises(ValueError, match="expected"):
        pt.group_advantages(torch.ones(5))


def _trl_grpo(logprobs, old, ref, advantages, mask, beta, clip):
    from trl import GRPOTrainer

    args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=args, loss_type="grpo", epsilon_low=clip, epsilon_high=clip, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, accelerator=_Accelerator(), _metrics={"train": defaultdict(list)})
    B, T = logprobs.shape
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl(beta):
    g = torch.Generator().manual_seed(2)
    B, T = 6, 5
    old = -torch.rand(B, T, generator=g) * 2
    logprobs = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()  # ratios inside and outside the clip
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    advantages = pt.group_advantages(torch.tensor([[1.0, 0, 1], [0, 0, 1]])).flatten()
    ours, stats = pt.grpo_loss(logprobs, old, advantages, mask, clip=0.2, ref_logprobs=ref, beta=beta)
    theirs = _trl_grpo(logprobs, old, ref, advantages, mask, beta, 0.2)
    torch.testing.assert_close(ours, theirs)
    grad_ours, = torch.autograd.grad(ours, logprobs)
    grad_theirs, = torch.autograd.grad(_trl_grpo(logprobs, old, ref, advantages, mask, beta, 0.2), logprobs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert 0 < stats["clipped"] < 1 and stats["kl"] > 0


def test_reinforce_is_grpo_on_fresh_samples():
    g = torch.Generator().manual_seed(3)
    logprobs = (-torch.rand(4, 3, generator=g)).requires_grad_()
    adv, mask = torch.tensor([1.0, -1, 0.5, 0]), torch.ones(4, 3)
    grad_reinforce, = torch.autograd.grad(pt.reinforce_loss(logprobs, adv, mask), logprobs)
    grad_grpo, = torch.autograd.grad(pt.grpo_loss(logprobs, logprobs.detach(), adv, mask)[0], logprobs)
    torch.testing.assert_close(grad_reinforce, grad_grpo)
    with pytest.raises(ValueError, match="ref_logprobs"):
        pt.grpo_loss(logprobs, logprobs.detach(), adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="one per completion"):
        pt.grpo_loss(logprobs, logprobs.detach(), adv[:2], mask)


def _brute_pass_at_k(n, c, k):
    draws = list(itertools.combinations(range(n), k))  # completions 0..c-1 are the correct ones
    return sum(any(i < c for i in d) for d in draws) / len(draws)


def test_pass_at_k_equals_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pt.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))
    assert pt.pass_at_k([4, 4], [0, 4], 1) == pytest.approx(0.5)  # a mean over problems
    assert pt.pass_at_k(200, 10, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="k <= n"):
        pt.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="between 0 and n"):
        pt.pass_at_k(4, 5, 1)


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)).eval()


def test_sample_groups_batches_groups_with_the_cache():
    model = _tiny_gpt()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = pt.sample_groups(model, prompts, 4, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 8)
    assert torch.equal(out[:, :3], prompts.repeat_interleave(4, 0))
    again = pt.generate(model, prompts.repeat_interleave(4, 0), 5, use_cache=False,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the cache changes the speed, not the samples
    greedy = pt.sample_groups(model, prompts, 3, 5, temperature=0)
    assert (greedy.view(2, 3, -1) == greedy.view(2, 3, -1)[:, :1]).all()  # greedy: a group of identical answers


def test_sample_groups_errors():
    model = _tiny_gpt()
    with pytest.raises(ValueError, match="longer than the model's context"):
        pt.sample_groups(model, torch.ones(1, 10, dtype=torch.long), 2, 5)
    with pytest.raises(ValueError, match="at least one"):
        pt.sample_groups(model, torch.ones(1, 3, dtype=torch.long), 0, 5)


def test_sft_loss_falls_on_a_tiny_model():
    model = _tiny_gpt().train()
    seq = torch.tensor([[1, 2, 3, 7, 8, 9, 12]] * 4)
    x, y = pt.completion_targets(seq, prompt_len=3, stop_id=12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = pt.masked_sft_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_compute_counts_training_three_times():
    c = pt.Compute()
    c.add(sampled=100)
    c.add(trained=10, scored=5)
    assert (c.sampled, c.scored, c.trained, c.total) == (100, 5, 10, 135)
