"""RPD: PPO on a student with an MSE pull of its action mean toward a VLA teacher's action.

Refined Policy Distillation (Jülg et al. 2025, arXiv:2503.05833): a small student is
trained with PPO in simulation while ``teacher_coef * MSE(mu_student(s), a_teacher(s))``
on the visited observations keeps it near the teacher, so RL refines the teacher's
behaviour instead of rediscovering it from a sparse reward.

The loss is PPO's (``vlarl.algorithms.ppo``) plus that one term; nothing else changes.
Where the labels come from: the rollout stores ``stored["teacher_actions"]`` ``[k, A]`` per
decision; ``vlarl.methods.distill_rpd.TeacherLabelled`` (the policy the trainer collects with) puts
the teacher's deterministic chunk there. The algorithm sees only tensors and the policy
protocol plus ``policy.predict(obs) -> [B, k, A]`` (the Gaussian mean, with grad).

Implementation details (on top of PPO's):

1. The regression target is the student's *unclipped* Gaussian mean, as in BC/DAgger
   (``MLPStudentPolicy.sft_loss``), so the three distillation methods optimise one loss.
2. ``teacher_coef`` falls linearly to 0 over ``teacher_coef_decay_updates`` updates
   (0: constant), letting RL take over once the student is near the teacher.
3. During critic warm-up the term is multiplied by 0 like the actor loss (the actor's
   gradients are dropped then anyway).

Logged metrics besides PPO's: ``teacher_mse`` (the unweighted term, mean over optimizer
steps), ``teacher_coef`` (this update's weight), and from ``process``
``teacher_mse_rollout``: MSE of the student's deterministic (clipped) chunk to the labels
on this rollout's observations *before* the update, the same quantity as distill's
``mse_before``.
"""

from __future__ import annotations

import torch

from vlarl.algorithms import ALGORITHMS, UpdateContext
from vlarl.algorithms.losses import linear_decay, teacher_action_loss
from vlarl.algorithms.ppo import PPO
from vlarl.policies.base import Policy
from vlarl.rollout import Batch, RolloutBuffer

TEACHER_KEY = "teacher_actions"
"""``stored`` key of the teacher's chunk ``[k, A]`` per decision."""


@ALGORITHMS.register("rpd")
class RPD(PPO):
    """PPO + ``teacher_coef * MSE(student mean, teacher chunk)``."""

    needs_teacher = True

    def coef(self, update_idx: int) -> float:
        return linear_decay(self.cfg.teacher_coef, update_idx, self.cfg.teacher_coef_decay_updates)

    def process(self, buffer: RolloutBuffer, policy: Policy) -> dict[str, float]:
        metrics = super().process(buffer, policy)
        labels = _labels(buffer.stored)
        idx = buffer.valid.flatten().nonzero(as_tuple=True)[0]
        with torch.no_grad():  # in slices: the buffer can hold thousands of images
            pred = torch.cat([_predict(policy, buffer.flat_obs(ids))
                              for ids in idx.split(256)]).clamp(-1.0, 1.0)
        target = labels.flatten(0, 1)[idx].to(pred.device)
        metrics["teacher_mse_rollout"] = float(teacher_action_loss(pred, target))
        return metrics

    def loss(self, policy: Policy, batch: Batch, ctx: UpdateContext, update_idx: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, out = super().loss(policy, batch, ctx, update_idx)
        mse = teacher_action_loss(_predict(policy, batch.obs), _labels(batch.stored))
        coef = 0.0 if update_idx < self.cfg.critic_warmup_updates else self.coef(update_idx)
        out.update(teacher_mse=mse.detach(), teacher_coef=torch.tensor(self.coef(update_idx)))
        return loss + coef * mse, out


def _labels(stored: dict[str, torch.Tensor]) -> torch.Tensor:
    if TEACHER_KEY not in stored:
        raise KeyError(f"algo rpd needs stored[{TEACHER_KEY!r}] (the teacher's chunk per decision) "
                       f"but the rollout stored only {sorted(stored)}; run it with "
                       "`vlarl distill --distill.method rpd --distill.teacher DIR`, which labels every "
                       "decision with the teacher")
    return stored[TEACHER_KEY]


def _predict(policy: Policy, obs) -> torch.Tensor:
    predict = getattr(policy, "predict", None)
    if predict is None:
        raise TypeError(f"algo rpd needs policy.predict(obs) -> mean chunk [B, k, A] with grad; "
                        f"{type(policy).__name__} has none (mlp_student has it)")
    return predict(obs)
