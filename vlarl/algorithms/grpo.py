"""GRPO and RLOO: critic-free, group-relative advantages on episode outcomes.

Needs an ``episodic`` rollout with grouped resets (``vlarl.rollout.collect(mode="episodic",
group_size=num_generations)``): envs ``g*G .. g*G+G-1`` start from the same state and each
runs one episode, so column n of the buffer *is* episode n.

Implementation details (TRL GRPOTrainer / DAPO / SimpleVLA-RL):

1. Outcome per episode = ``success_once`` (0/1) + ``shaping_coef`` * its dense rewards, summed
   or their per-step maximum (``shaping``).
2. Group advantages: ``grpo`` (mean/std normalised) or ``rloo`` (leave-one-out baseline);
   each episode's advantage is broadcast to all its valid decisions.
3. Dynamic sampling: groups whose outcomes are all equal are left out of the update.
4. Clip-higher (``epsilon_high`` > ``epsilon``), optional ``beta`` KL to the reference
   (k3), entropy bonus; no value loss.
5. TRL's ``loss_type`` (dapo / grpo / dr_grpo) as per-decision weights
   (``advantages.loss_weights``) and ``scale_rewards`` (group / batch / none).
"""

from __future__ import annotations

import torch

from vlarl.algorithms import ALGORITHMS, Algorithm, UpdateContext
from vlarl.algorithms.advantages import dynamic_sampling_mask, group_advantages, loss_weights
from vlarl.algorithms.losses import entropy_bonus, kl_to_reference, linear_decay, policy_loss
from vlarl.config import Config, ConfigError
from vlarl.policies.base import Policy
from vlarl.rollout import Batch, RolloutBuffer


def episode_outcomes(buffer: RolloutBuffer, shaping_coef: float = 0.0,
                     shaping: str = "return") -> torch.Tensor:
    """float ``[N]``: success at any valid decision of env n's episode + ``shaping_coef`` x
    its dense rewards, summed (``return``) or their per-step maximum (``max``)."""
    valid = buffer.valid
    success = (buffer.success_once & valid).any(dim=0).float()
    if shaping_coef == 0.0:
        return success
    if shaping == "return":
        return success + shaping_coef * (buffer.rewards * valid).sum(dim=0)
    if shaping != "max":
        raise ValueError(f"shaping={shaping!r}: expected 'return' or 'max'")
    if buffer.step_rewards is None:
        raise ValueError("shaping='max' needs the per-step rewards of the buffer")
    # Steps after an episode ended inside a chunk are padded with reward 0; dense rewards
    # are >= 0 (ManiSkill's normalized_dense), so the pad never wins the max.
    per_decision = buffer.step_rewards.amax(dim=2)
    best = torch.where(valid, per_decision, torch.zeros_like(per_decision)).amax(dim=0)
    return success + shaping_coef * best


@ALGORITHMS.register("grpo")
class GRPO(Algorithm):
    """Group Relative Policy Optimisation (Shao et al. 2024) over whole episodes."""

    rollout_mode = "episodic"  # a group = G episodes from one seeded initial state

    mode = "grpo"

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        G = cfg.algo.num_generations
        if G < 2:
            raise ConfigError(f"algo.num_generations={G} must be >= 2 for {cfg.algo.name}: a "
                              "group baseline needs two episodes from one initial state")
        if cfg.env.num_envs % G:
            raise ConfigError(f"env.num_envs={cfg.env.num_envs} must be divisible by "
                              f"algo.num_generations={G}")
        if cfg.algo.shaping_coef and cfg.env.reward_mode == "sparse":
            raise ConfigError(f"algo.shaping_coef={cfg.algo.shaping_coef} shapes with the env's "
                              "dense rewards, but env.reward_mode='sparse' has none: set "
                              "env.reward_mode normalized_dense (or dense), or shaping_coef 0")

    def process(self, buffer: RolloutBuffer, policy: Policy) -> dict[str, float]:
        """Group advantages into ``buffer.advantages`` and the training mask (in place)."""
        cfg, G = self.cfg, self.cfg.num_generations
        if buffer.num_envs % G:
            raise ValueError(f"num_envs={buffer.num_envs} must be divisible by "
                             f"algo.num_generations={G}")
        outcomes = episode_outcomes(buffer, cfg.shaping_coef, cfg.shaping)
        adv = group_advantages(outcomes, G, self.mode, scale=cfg.scale_rewards)
        keep = dynamic_sampling_mask(outcomes, G) if cfg.dynamic_sampling \
            else torch.ones_like(outcomes, dtype=torch.bool)
        valid = buffer.valid
        buffer.advantages.copy_(adv.unsqueeze(0) * valid)
        buffer.returns.copy_(outcomes.unsqueeze(0) * valid)
        buffer.train_mask = valid & keep.unsqueeze(0)
        if cfg.loss_type != "dapo":
            buffer.extra["loss_weight"] = loss_weights(buffer.train_mask, cfg.loss_type)
        else:
            buffer.extra.pop("loss_weight", None)
        return {"outcome_mean": float(outcomes.mean()),
                "groups_kept": float(keep.view(-1, G)[:, 0].float().mean()),
                "advantage_abs_mean": float(adv.abs().mean())}

    def loss(self, policy: Policy, batch: Batch, ctx: UpdateContext, update_idx: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        new, old, log_probs, entropy, values = self.score(policy, batch, ctx)
        pg, parts = policy_loss(new, old, batch.advantages, cfg.epsilon, cfg.epsilon_high,
                                weights=batch.extra.get("loss_weight"))
        ent = entropy_bonus(entropy)
        loss = pg - cfg.ent_coef * ent
        out = {"policy_loss": pg.detach(), "entropy": ent.detach(), **parts}
        beta = linear_decay(cfg.beta, update_idx, cfg.beta_decay_updates)
        if beta > 0:
            kl = kl_to_reference(log_probs, self.reference_log_probs(policy, batch))
            loss = loss + beta * kl
            out.update(kl_ref=kl.detach(), beta=torch.tensor(beta))
        if values is not None:
            # A value head unused by GRPO still joins the graph (DDP wants every gradient).
            loss = loss + 0.0 * values.sum()
        return loss, out


@ALGORITHMS.register("rloo")
class RLOO(GRPO):
    """REINFORCE leave-one-out baseline (Ahmadian et al. 2024) with PPO-style clipping."""

    mode = "rloo"
