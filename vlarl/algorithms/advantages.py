"""Advantage estimators as small pure functions (shapes in each docstring).

Time is measured in *decisions* (one action chunk of k control steps each): ``gamma`` is
the discount per decision (``AlgoConfig.gamma``), and a chunk's reward is the plain sum of
its per-step rewards (see ``vlarl.rollout``). Episode ends come in two kinds and both stop
the GAE recursion (nothing propagates from the next episode back into this one):

* ``terminated``: the task ended the episode; the value after it is 0 (no bootstrap);
* ``truncated``: the time limit cut the episode; the value after it is the critic's value
  of the true final observation (``bootstrap_values``), not of the reset observation that
  the env returned in its place (Pardo et al. 2018, "Time Limits in RL").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor,
        truncated: torch.Tensor, bootstrap_values: torch.Tensor, last_values: torch.Tensor,
        gamma: float, lam: float, valid: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) with partial resets.

    Args:
        rewards: float ``[T, N]`` reward of decision t of env n.
        values: float ``[T, N]`` V(s_t) recorded at decision time.
        terminated: bool ``[T, N]`` the episode ended by the task during decision t.
        truncated: bool ``[T, N]`` the episode hit its time limit during decision t.
        bootstrap_values: float ``[T, N]`` V(final observation); read only where truncated.
        last_values: float ``[N]`` V(s_T) of the observation after the last decision.
        gamma: discount per decision; lam: GAE lambda.
        valid: optional bool ``[T, N]``; advantages/returns of invalid entries are set to 0.

    Returns:
        ``(advantages, returns)``, both float ``[T, N]``; ``returns = advantages + values``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [T, N], got shape {tuple(rewards.shape)}")
    for name, t in (("values", values), ("terminated", terminated), ("truncated", truncated),
                    ("bootstrap_values", bootstrap_values)):
        if t.shape != rewards.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(rewards.shape)}")
    num_steps = rewards.shape[0]
    terminated, truncated = terminated.bool(), truncated.bool()
    # Value of the state after decision t: V(s_{t+1}) inside an episode, the final
    # observation's value at a truncation, 0 at a termination.
    next_values = torch.cat([values[1:], last_values.unsqueeze(0)], dim=0)
    next_values = torch.where(truncated, bootstrap_values, next_values)
    next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)
    deltas = rewards + gamma * next_values - values
    carry_on = (~(terminated | truncated)).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values, dtype=rewards.dtype)
    for t in reversed(range(num_steps)):
        running = deltas[t] + gamma * lam * carry_on[t] * running
        advantages[t] = running
    returns = advantages + values
    if valid is not None:
        advantages = advantages * valid
        returns = returns * valid
    return advantages, returns


def group_advantages(outcomes: torch.Tensor, group_size: int,
                     mode: Literal["grpo", "rloo"] = "grpo", eps: float = 1e-4,
                     scale: Literal["group", "batch", "none"] = "group") -> torch.Tensor:
    """Critic-free advantages of G rollouts that started from the same initial state.

    Args:
        outcomes: float ``[B]`` episode outcome per rollout, groups of ``group_size``
            consecutive entries (B divisible by G).
        mode: ``grpo``: ``(r - mean) / (std + eps)`` with the unbiased group std, as TRL's
            GRPOTrainer (Shao et al. 2024); ``rloo``: ``r_i - mean_{j != i} r_j``, the
            leave-one-out baseline (Ahmadian et al. 2024), unscaled.
        scale: ``grpo``'s divisor, TRL's ``scale_rewards``: the group's std (``group``), the
            std of all ``outcomes`` (``batch``), or none (``none``: ``r - mean``, Dr. GRPO).

    Returns:
        float ``[B]``.
    """
    if group_size < 2:
        raise ValueError(f"group_size={group_size} must be >= 2")
    if outcomes.dim() != 1 or outcomes.numel() % group_size:
        raise ValueError(f"outcomes must be 1-D with a length divisible by group_size="
                         f"{group_size}; got shape {tuple(outcomes.shape)}")
    grouped = outcomes.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if mode == "grpo":
        if scale == "group":
            adv = (grouped - mean) / (grouped.std(dim=1, keepdim=True) + eps)
        elif scale == "batch":
            adv = (grouped - mean) / (outcomes.float().std() + eps)
        elif scale == "none":
            adv = grouped - mean
        else:
            raise ValueError(f"scale={scale!r} is not allowed; choose one of "
                             "['batch', 'group', 'none']")
    elif mode == "rloo":
        # mean of the others = (G * mean - r_i) / (G - 1), so r_i - that = G/(G-1) (r_i - mean).
        adv = (grouped - mean) * group_size / (group_size - 1)
    else:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of ['grpo', 'rloo']")
    return adv.reshape(-1)


def dynamic_sampling_mask(outcomes: torch.Tensor, group_size: int,
                          atol: float = 1e-6) -> torch.Tensor:
    """bool ``[B]``: False for every member of a group whose outcomes are all equal.

    Such groups (all succeed or all fail) have zero advantage and only dilute the batch;
    DAPO (Yu et al. 2025) and SimpleVLA-RL drop them.
    """
    grouped = outcomes.float().view(-1, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return (spread > atol).repeat_interleave(group_size)


def local_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over processes in one process: the tensor itself."""
    return t


def normalize_advantages(adv: torch.Tensor,
                         reduce_sum: Callable[[torch.Tensor], torch.Tensor] = local_sum,
                         eps: float = 1e-8) -> torch.Tensor:
    """``(adv - mean) / (std + eps)`` with mean and (unbiased) std over the *global* batch.

    ``reduce_sum`` sums a tensor over the processes (identity in one process); with it every
    rank normalises its share of a minibatch by the statistics of the whole minibatch, so N
    processes compute what one process would on their union. (Per-rank statistics do not: a
    rank whose share holds no success gets pure critic noise scaled up to unit variance.)
    Two passes, in float64, so the variance does not suffer cancellation. A global batch of
    fewer than two elements is returned unchanged (no spread to normalise by).
    """
    a = adv.double()
    n = float(reduce_sum(torch.tensor([a.numel()], dtype=torch.float64, device=a.device)))
    if n < 2:
        return adv
    mean = reduce_sum(a.sum().reshape(1)) / n
    centred = a - mean
    var = reduce_sum((centred * centred).sum().reshape(1)) / (n - 1.0)
    return (centred / (var.sqrt() + eps)).to(adv.dtype)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """``1 - Var[targets - predictions] / Var[targets]`` (1 is perfect, <= 0 is useless)."""
    var = targets.var()
    if targets.numel() < 2 or var == 0:
        return float("nan")
    return float(1.0 - (targets - predictions).var() / var)


def loss_weights(train_mask: torch.Tensor, loss_type: Literal["dapo", "grpo", "dr_grpo"]
                 ) -> torch.Tensor:
    """Per-decision weights ``[T, N]`` whose plain mean over the training decisions gives TRL's
    GRPO loss aggregations, an episode (column) being the completion and a decision its token.

    With ``E`` episodes (columns with a training decision), ``N_d`` training decisions,
    ``L_e`` decisions in episode e and ``T`` rows (``train.rollout_steps``, the longest possible
    episode): ``dapo`` 1 (the mean over decisions); ``grpo`` ``N_d / (E L_e)`` (so the mean is
    the mean over episodes of each episode's mean); ``dr_grpo`` ``N_d / (E T)`` (the sum over
    decisions divided by ``E T``). The weights average to 1 for ``dapo`` and ``grpo``.
    """
    mask = train_mask.float()
    if loss_type == "dapo":
        return mask
    lengths = mask.sum(dim=0)  # [N] decisions per episode
    episodes = float((lengths > 0).sum())
    n_dec = float(mask.sum())
    if episodes == 0:
        return mask
    if loss_type == "grpo":
        return mask * (n_dec / (episodes * lengths.clamp(min=1.0))).unsqueeze(0)
    if loss_type == "dr_grpo":
        return mask * (n_dec / (episodes * mask.shape[0]))
    raise ValueError(f"loss_type={loss_type!r} is not allowed; choose one of "
                     "['dapo', 'dr_grpo', 'grpo']")
