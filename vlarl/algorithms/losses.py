"""Policy-gradient losses as pure functions of tensors (no model, no optimizer).

Every sample is one action chunk: its log-probability is the sum over the chunk's tokens
or denoising steps (``ActOutput.log_probs``), so ratios and KLs here are per chunk.
Each function returns ``(loss, metrics)`` with metrics as detached 0-d tensors, so a caller
can average them over minibatches without a device sync per call.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is True (all entries without a mask)."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                epsilon: float, epsilon_high: float | None = None,
                mask: torch.Tensor | None = None, weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, ``mean(max(-A r, -A clip(r, 1 - eps, 1 + eps_high)))``.

    Args:
        log_probs: float ``[B]`` log pi(a|s) under the current policy (with grad), or
            ``[B, L]``: one per action token, each ratio clipped on its own and the
            surrogate averaged over the L tokens (TRL's token-level importance sampling).
        old_log_probs: float log-probs recorded at rollout time, the shape of ``log_probs``.
        advantages: float ``[B]``.
        epsilon: lower clip; epsilon_high: upper clip ("clip-higher", DAPO), None = epsilon.
        mask: optional bool ``[B]`` of entries to average over.
        weights: optional float ``[B]`` per-sample loss weights (GRPO's ``loss_type``,
            :func:`vlarl.algorithms.advantages.loss_weights`), applied inside the mean.

    Metrics: ``clipfrac`` (share of samples whose gradient the clip removed), ``ratio_mean``,
    ``approx_kl`` (k3 estimate of KL(old || new), Schulman 2020, "Approximating KL"); with
    per-token log-probs the share of tokens clipped, and the per-chunk KL (tokens summed).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if old_log_probs.shape != log_probs.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and old_log_probs "
                         f"{tuple(old_log_probs.shape)} differ in shape")
    per_token = log_probs.dim() == 2
    adv = advantages[:, None] if per_token else advantages
    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)
    per_sample = torch.maximum(unclipped, clipped)
    chunk = (lambda t: t.mean(-1)) if per_token else (lambda t: t)
    per_sample = chunk(per_sample)
    if weights is not None:
        per_sample = per_sample * weights
    loss = masked_mean(per_sample, mask)
    with torch.no_grad():
        clipfrac = masked_mean(chunk((clipped > unclipped).float()), mask)
        k3 = (ratio - 1.0) - log_ratio
        approx_kl = masked_mean(k3.sum(-1) if per_token else k3, mask)
        ratio_mean = masked_mean(chunk(ratio), mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl, "ratio_mean": ratio_mean}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               cliprange_value: float | None, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old) - R)^2))``.

    The clip keeps the critic near the values the advantages were computed with (as TRL's
    PPOTrainer and CleanRL's ``clip_vloss``). Shapes: all float ``[B]``.
    Metrics: ``value_clipfrac`` (share of samples where the clipped term was larger).
    ``cliprange_value=None``: the plain ``0.5 * mean((v - R)^2)`` (``value_clipfrac`` 0).
    """
    if cliprange_value is None:
        return 0.5 * masked_mean((values - returns) ** 2, mask), {
            "value_clipfrac": torch.zeros((), device=values.device)}
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value,
                                              cliprange_value)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((err_clipped > err).float(), mask)
    return loss, {"value_clipfrac": frac}


def kl_to_reference(log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref), ``exp(ref - lp) - (ref - lp) - 1`` (>= 0), as TRL.

    Shapes: float ``[B]`` each; returns a 0-d tensor with grad through ``log_probs``.
    """
    diff = ref_log_probs - log_probs
    return masked_mean(torch.exp(diff) - diff - 1.0, mask)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy ``[B] -> 0-d``; the total loss subtracts ``ent_coef *`` this."""
    return masked_mean(entropy, mask)


def teacher_action_loss(action_mean: torch.Tensor, teacher_actions: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """RPD's teacher regularizer: ``mean((mu - a_teacher)^2)`` over the chunk's k*A entries
    and the batch (Jülg et al. 2025, "Refined Policy Distillation").

    Args:
        action_mean: float ``[B, k, A]`` the student's (unclipped) Gaussian mean, with grad.
        teacher_actions: float ``[B, k, A]`` the teacher's deterministic chunk on the same obs.
        mask: optional bool ``[B]`` of chunks to average over.

    Returns a 0-d tensor; the per-chunk error is the mean over its k*A entries, so the value
    equals ``F.mse_loss`` (and ``MLPStudentPolicy.sft_loss``) when there is no mask.
    """
    if action_mean.shape != teacher_actions.shape:
        raise ValueError(f"action_mean {tuple(action_mean.shape)} and teacher_actions "
                         f"{tuple(teacher_actions.shape)} must have the same [B, k, A] shape")
    err = (action_mean - teacher_actions.to(action_mean.dtype)) ** 2
    return masked_mean(err.flatten(1).mean(1), mask)


def linear_decay(coef: float, update: int, decay_updates: int) -> float:
    """``coef`` at update 0 falling linearly to 0 at ``decay_updates`` (0 = constant ``coef``)."""
    if decay_updates <= 0:
        return coef
    return coef * max(0.0, 1.0 - update / decay_updates)
