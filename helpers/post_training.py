"""Post-training: the losses and measurements that turn a pretrained model into an assistant or a reasoner.

Every method here works on the same three tensors of a batch of sequences ``prompt + completion``:

* ``x`` (B, T): the ids the model reads;
* ``y`` (B, T): the ids it should predict, ``x`` shifted by one, with ``-100`` (:data:`IGNORE`) wherever no loss
  is taken: on the prompt (the user's turn), and after the completion's end;
* the model's logits (B, T, V) on ``x``.

Supervised fine-tuning (SFT) is the cross-entropy on the completion only (:func:`masked_sft_loss`, "the loss on the
assistant's turn"). The other methods score whole completions by their log-probability (:func:`sequence_logprobs`):

* DPO (Rafailov et al. 2023): :func:`dpo_loss` on pairs (a preferred and a rejected completion) against a frozen
  reference model;
* GRPO (Shao et al. 2024): :func:`group_advantages` (rewards normalised within the group of completions sampled for
  one prompt) and :func:`grpo_loss` (PPO's clipped ratio, an optional KL penalty to the reference);
* REINFORCE with a mean baseline: :func:`group_advantages` with ``normalise=False`` and :func:`reinforce_loss`.

:func:`pass_at_k` is the unbiased estimator of Chen et al. (2021); :func:`sample_groups` samples G completions per
prompt in one batch with the key-value cache; :class:`Compute` counts the tokens a method sampled and trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .generate import generate

IGNORE = -100  # the target id that F.cross_entropy(ignore_index=-100) skips: no loss at that position


# --------------------------------------------------------------------------- targets and log-probabilities


def completion_targets(seq: torch.Tensor, prompt_len: int, stop_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``prompt + completion`` (B, L), all with prompts of ``prompt_len`` tokens -> ``(x, y)``, each
    (B, L - 1): ``y`` is ``x`` shifted by one, :data:`IGNORE` on the prompt and after the first ``stop_id`` of the
    completion (the stop token itself is learned: the model must learn to stop)."""
    if not 0 < prompt_len < seq.size(1):
        raise ValueError(f"prompt_len={prompt_len} leaves no completion in sequences of {seq.size(1)} tokens")
    x, y = seq[:, :-1], seq[:, 1:].clone()
    position = torch.arange(y.size(1), device=seq.device)
    y[:, : prompt_len - 1] = IGNORE
    if stop_id is not None:
        is_stop = (y == stop_id) & (position >= prompt_len - 1)
        after = (is_stop.cumsum(1) - is_stop.long()) > 0  # strictly after the first stop
        y[after] = IGNORE
    return x, y


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected (B, T, V) and (B, T)")


def masked_sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not :data:`IGNORE` (the completion's tokens).
    The same as ``F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)``; written with
    log-softmax and a mask so that every step is visible. A batch without one target is an error (an empty
    answer has nothing to learn from)."""
    _check_targets(logits, targets)
    mask = targets != IGNORE
    if not mask.any():
        raise ValueError("no target token in the batch (every target is -100): an empty answer has nothing to learn")
    logp = token_logprobs(logits, targets)  # (B, T), 0 where masked
    return -(logp * mask).sum() / mask.sum()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) targets -> (B, T): log p(target) under the logits, 0 where the target is
    :data:`IGNORE`. Computed in float32 whatever the logits' precision."""
    _check_targets(logits, targets)
    mask = targets != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B,): log p(completion | prompt), the sum of its tokens' log-probabilities."""
    return token_logprobs(logits, targets).sum(-1)


# --------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation on (P,) sequence log-probabilities of the chosen and the rejected completion
    under the policy and under the frozen reference::

        loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))])

    averaged over the pairs. Returns ``(loss, chosen_rewards, rejected_rewards)``, the implicit rewards
    ``beta * (log pi - log ref)`` (P,) each, detached. ``trl``'s ``DPOTrainer`` (loss_type ``"sigmoid"``) computes
    the same loss."""
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected four (P,) tensors of one shape, got {sorted(shapes)}")
    if beta <= 0:
        raise ValueError(f"beta={beta}: the strength of the pull to the reference must be positive")
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# --------------------------------------------------------------------------- GRPO and REINFORCE


def group_advantages(rewards: torch.Tensor, normalise: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Rewards (N, G) of G completions for each of N prompts -> advantages (N, G): each reward minus its group's mean
    (a baseline that needs no value network), divided by the group's standard deviation (unbiased, plus ``eps``)
    when ``normalise`` (GRPO; ``False``: REINFORCE with a mean baseline). A group whose rewards are all equal has
    advantages 0: it teaches nothing. As ``trl``'s GRPOTrainer (``scale_rewards="group"``)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}: expected (N prompts, G completions each)")
    if rewards.size(1) < 2:
        raise ValueError(f"groups of {rewards.size(1)} completion: a group needs at least 2 to compare them")
    rewards = rewards.float()
    advantages = rewards - rewards.mean(1, keepdim=True)
    if normalise:
        advantages = advantages / (rewards.std(1, keepdim=True) + eps)
    return advantages


def _masked_mean_per_sequence(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (): the mean over each sequence's masked tokens, then over the sequences."""
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip: float = 0.2, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The GRPO loss on per-token log-probabilities (B, T) of the sampled completions under the policy being trained
    (``logprobs``, with gradients), under the policy that sampled them (``old_logprobs``) and, for the KL penalty,
    under the reference (``ref_logprobs``, needed when ``beta > 0``); ``advantages`` (B,) one per completion;
    ``mask`` (B, T) 1 on the completion's tokens. Per token::

        ratio = exp(logprobs - old_logprobs)
        loss  = -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A) + beta * KL
        KL    = exp(ref - logprobs) - (ref - logprobs) - 1          (Schulman's k3 estimator, >= 0)

    averaged over each completion's tokens, then over completions (trl's ``loss_type="grpo"``). Returns the loss and
    statistics: the mean KL and the fraction of tokens whose ratio was clipped."""
    if not logprobs.shape == old_logprobs.shape == mask.shape or logprobs.dim() != 2:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old {tuple(old_logprobs.shape)}, mask "
                         f"{tuple(mask.shape)}: expected three (B, T) tensors")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)}: expected one per completion, ({logprobs.size(0)},)")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 penalises the KL to the reference: give ref_logprobs")
    mask = mask.float()
    A = advantages[:, None]
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = -torch.min(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
    stats = {"clipped": _masked_mean_per_sequence(((ratio - 1).abs() > clip).float(), mask).item()}
    if ref_logprobs is not None:
        diff = ref_logprobs - logprobs
        kl = torch.exp(diff) - diff - 1
        stats["kl"] = _masked_mean_per_sequence(kl.detach(), mask).item()
        if beta > 0:
            per_token = per_token + beta * kl
    return _masked_mean_per_sequence(per_token, mask), stats


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The policy gradient: ``-A * log pi(token)`` per token (B, T), averaged over each completion's tokens then over
    completions; ``advantages`` (B,) the reward minus the group's mean (a baseline), as nanochat's ``chat_rl.py``.
    Its gradient is GRPO's at the first step on fresh samples (ratio 1, nothing clipped)."""
    if advantages.shape != logprobs.shape[:1] or logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, advantages {tuple(advantages.shape)}, mask "
                         f"{tuple(mask.shape)}: expected (B, T), (B,), (B, T)")
    return _masked_mean_per_sequence(-advantages[:, None] * logprobs, mask.float())


# --------------------------------------------------------------------------- measuring


def pass_at_k(n, c, k: int):
    """The unbiased estimator of pass@k (Chen et al. 2021): the chance that at least one of k completions, drawn
    without replacement from n sampled of which c are correct, is correct: ``1 - C(n - c, k) / C(n, k)``, computed
    as a product so that it never overflows. ``n`` and ``c`` may be arrays (one entry per problem): the result is
    the mean over problems."""
    n, c = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if k < 1 or (n < k).any():
        raise ValueError(f"pass@{k} needs 1 <= k <= n completions per problem (n = {n.min() if n.size else n})")
    if (c < 0).any() or (c > n).any():
        raise ValueError("c, the correct completions, must be between 0 and n")
    values = []
    for ni, ci in zip(n.ravel(), c.ravel(), strict=True):
        if ni - ci < k:  # every draw of k holds a correct one
            values.append(1.0)
        else:  # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
            values.append(1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))))
    return float(np.mean(values))


@torch.no_grad()
def sample_groups(model, prompts: torch.Tensor, group_size: int, max_new_tokens: int, *, temperature: float = 1.0,
                  generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
    """``group_size`` completions of ``max_new_tokens`` for each of the prompts (N, T) (all of one length), sampled in
    one batch with the key-value cache: (N * group_size, T + max_new_tokens), the completions of prompt i in rows
    ``i * group_size ... (i + 1) * group_size - 1``. Raises ``ValueError`` when prompt and completion do not fit the
    model's context."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: sample at least one completion per prompt")
    if prompts.dim() != 2 or prompts.size(1) == 0:
        raise ValueError(f"prompts {tuple(prompts.shape)}: expected (N, T) ids with T >= 1")
    block = model.config.block_size
    if prompts.size(1) + max_new_tokens > block:
        raise ValueError(f"a prompt of {prompts.size(1)} tokens plus {max_new_tokens} new ones is longer than the "
                         f"model's context of {block}")
    rows = prompts.repeat_interleave(group_size, dim=0)
    return generate(model, rows, max_new_tokens, temperature=temperature, generator=generator, use_cache=True, **sampling)


@dataclass
class Compute:
    """Tokens a method has cost, in forward-pass token equivalents: a sampled token (or a prompt token read while
    sampling, or a reference model's forward pass) costs 1; a trained token costs 3 (forward and backward, the usual
    6N versus 2N FLOPs a token)."""

    sampled: int = 0
    scored: int = 0  # forward passes without gradients: reference and old-policy log-probabilities
    trained: int = 0
    log: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.sampled + self.scored + 3 * self.trained

    def add(self, sampled: int = 0, scored: int = 0, trained: int = 0) -> int:
        self.sampled, self.scored, self.trained = self.sampled + sampled, self.scored + scored, self.trained + trained
        return self.total
