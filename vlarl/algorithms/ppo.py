"""PPO with GAE, a clipped value loss and an optional KL to the reference policy.

Implementation details (CleanRL / TRL PPOTrainer conventions):

1. GAE over decisions with terminated (no bootstrap) vs truncated (bootstrap from the
   final observation's value) episode ends (``advantages.gae``).
2. Advantages normalised per minibatch (``norm_adv``), before the micro-batch split so
   gradient accumulation does not change the result, with the mean and std of the minibatch
   of all ranks (``normalize_advantages``): N processes normalise as one would.
3. Clipped surrogate with asymmetric clip ``[1 - epsilon, 1 + epsilon_high]``.
4. Value loss, clipped only when ``cliprange_value`` is set (default None), weighted by ``vf_coef``.
5. Entropy bonus ``ent_coef``; KL to the reference (adapters disabled) ``beta``, k3 estimator.
6. Critic warm-up: for the first ``critic_warmup_updates`` updates only the value loss
   counts and the actor's parameters are left bit-identical (their gradients are dropped).
7. ``target_kl`` stops the epochs early once the mean approximate KL exceeds it.

Logged metrics (means over the optimizer steps taken): ``policy_loss``, ``value_loss``,
``entropy``, ``clipfrac`` (share of chunks whose gradient the ratio clip removed),
``approx_kl`` (k3 KL old -> new), ``ratio_mean``, ``value_clipfrac``, ``kl_ref`` (beta > 0),
``grad_norm`` (before clipping), ``optimizer_steps``, ``skipped_steps`` / ``nonfinite`` /
``nan_strikes`` (the NaN guard), ``epochs``; from ``process``: ``explained_variance``.
"""

from __future__ import annotations

import torch
from torch import nn

from vlarl.algorithms import ALGORITHMS, Algorithm, UpdateContext
from vlarl.algorithms.advantages import explained_variance, gae, normalize_advantages
from vlarl.algorithms.losses import (
    entropy_bonus,
    kl_to_reference,
    linear_decay,
    policy_loss,
    value_loss,
)
from vlarl.config import Config, ConfigError
from vlarl.policies.base import Policy
from vlarl.rollout import Batch, RolloutBuffer


@ALGORITHMS.register("ppo")
class PPO(Algorithm):
    """Actor-critic PPO (Schulman et al. 2017) over action chunks."""

    needs_critic = True  # GAE bootstraps from the value head

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        a = cfg.algo
        batch = cfg.env.num_envs * cfg.train.rollout_steps
        if batch % a.num_mini_batches:
            raise ConfigError(f"env.num_envs*train.rollout_steps={batch} must be divisible by "
                              f"algo.num_mini_batches={a.num_mini_batches}")
        mb = batch // a.num_mini_batches
        if mb % a.gradient_accumulation_steps:
            raise ConfigError(f"minibatch size {mb} must be divisible by "
                              f"algo.gradient_accumulation_steps={a.gradient_accumulation_steps}")

    def process(self, buffer: RolloutBuffer, policy: Policy) -> dict[str, float]:
        """GAE advantages and returns into ``buffer`` (in place)."""
        valid = buffer.valid
        adv, ret = gae(buffer.rewards, buffer.values, buffer.terminated, buffer.truncated,
                       buffer.bootstrap_values, buffer.last_values, self.cfg.gamma,
                       self.cfg.gae_lambda, valid=valid)
        buffer.advantages.copy_(adv)
        buffer.returns.copy_(ret)
        buffer.train_mask = valid.clone()
        a, r, v = adv[valid], ret[valid], buffer.values[valid]
        return {"advantage_mean": float(a.mean()), "advantage_std": float(a.std()),
                "return_mean": float(r.mean()), "value_mean": float(v.mean()),
                "explained_variance": explained_variance(v, r)}

    def prepare(self, batch: Batch, ctx: UpdateContext) -> Batch:
        if self.cfg.norm_adv:
            batch.advantages = normalize_advantages(batch.advantages, ctx.all_reduce_sum)
        return batch

    def frozen_parameters(self, policy: Policy, update_idx: int) -> list[nn.Parameter]:
        if update_idx < self.cfg.critic_warmup_updates:
            return list(policy.policy_parameters())
        return []

    def loss(self, policy: Policy, batch: Batch, ctx: UpdateContext, update_idx: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        new, old, log_probs, entropy, values = self.score(policy, batch, ctx)
        if values is None:
            raise ValueError("ppo needs a critic but the policy's evaluate returned values=None; "
                             "set policy.value_head=true or use algo.name grpo/rloo")
        pg, parts = policy_loss(new, old, batch.advantages, cfg.epsilon, cfg.epsilon_high)
        vl, vparts = value_loss(values, batch.values, batch.returns, cfg.cliprange_value)
        ent = entropy_bonus(entropy)
        actor = pg - cfg.ent_coef * ent
        warmup = update_idx < cfg.critic_warmup_updates
        out = {"policy_loss": pg.detach(), "value_loss": vl.detach(), "entropy": ent.detach(),
               **parts, **vparts}
        beta = linear_decay(cfg.beta, update_idx, cfg.beta_decay_updates)
        if beta > 0 and not warmup:
            kl = kl_to_reference(log_probs, self.reference_log_probs(policy, batch))
            actor = actor + beta * kl
            out.update(kl_ref=kl.detach(), beta=torch.tensor(beta))
        # In warm-up the actor term is multiplied by 0 rather than dropped, so every
        # parameter stays in the graph (DDP expects gradients for all of them).
        loss = cfg.vf_coef * vl + (0.0 * actor if warmup else actor)
        return loss, out
