"""RL algorithms: ``ALGORITHMS.get(cfg.name)(cfg)`` gives an object with

    algo.process(buffer, policy) -> metrics      # advantages / returns into the buffer
    algo.update(policy, optimizer, buffer, ctx, update_idx, generator) -> metrics

``Algorithm.update`` is the one optimisation loop all algorithms share (epochs x
minibatches x micro-batches, gradient clipping, the non-finite guard); subclasses give the
per-micro-batch loss. Nothing here imports accelerate: the trainer passes the distributed
pieces in an :class:`UpdateContext`.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vlarl.algorithms.advantages import local_sum
from vlarl.config import AlgoConfig, Config, ConfigError
from vlarl.policies.base import Policy
from vlarl.registry import Registry
from vlarl.rollout import Batch, RolloutBuffer, iter_minibatches
from vlarl.types import Obs

ALGORITHMS: Registry = Registry("algorithm")


class NonFiniteError(RuntimeError):
    """Raised after ``AlgoConfig.max_nan_strikes`` optimizer steps were skipped for NaN/Inf."""


def _clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    return float(torch.nn.utils.clip_grad_norm_(list(params), max_norm))


def _evaluate(policy: Policy, obs: Obs, stored: dict[str, torch.Tensor], **kw):
    return policy.evaluate(obs, stored, **kw)


@dataclass
class UpdateContext:
    """What the trainer provides to the update; defaults are single-process plain torch.

    With accelerate: ``backward=accelerator.backward``,
    ``clip_grad_norm=accelerator.clip_grad_norm_``,
    ``no_sync=lambda: accelerator.no_sync(model)``, ``all_ranks_any`` = an all-reduce of a
    flag, and ``evaluate`` routed through the DDP wrapper so gradients are synchronised.
    """

    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    """Backward of a scalar loss (mixed-precision scaling lives here)."""
    clip_grad_norm: Callable[[Iterable[nn.Parameter], float], float] = _clip_grad_norm
    """Clip in place; return the total norm before clipping (may be NaN/Inf)."""
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """Context for micro-batches before the last one (skip the gradient all-reduce)."""
    all_ranks_any: Callable[[bool], bool] = bool
    """True on every rank when the flag is True on any rank (collective decisions)."""
    evaluate: Callable[..., tuple] = _evaluate
    """``evaluate(policy, obs, stored, **kw) -> (log_probs, entropy, values | None)`` with grad."""
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = local_sum
    """Sum of a tensor over the processes (the tensor itself in one process): global batch
    statistics (advantage normalisation, the minibatch size that weights each rank's loss)."""


def _float(v: Any) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


class Algorithm:
    """Shared optimisation loop; subclasses implement ``process`` and ``loss``, and declare
    how they want their data collected."""

    rollout_mode: ClassVar[Literal["continuous", "episodic"]] = "continuous"
    """How ``rollout.collect`` fills the buffer for this algorithm: ``continuous`` (envs reset
    when their episode ends, bootstrapped with a critic) or ``episodic`` (one episode per env
    per update from seeded group resets, for group baselines)."""
    needs_critic: ClassVar[bool] = False
    """Whether ``policy.evaluate`` must return values (``policy.value_head``)."""
    needs_teacher: ClassVar[bool] = False
    """Whether it trains against a teacher's actions (run through ``vlarl distill``)."""

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Refuse values legal one by one that this algorithm cannot run with (pure: raise
        :class:`ConfigError` naming the keys; called by :func:`check_config` at start-up)."""

    def __init__(self, cfg: AlgoConfig):
        self.cfg = cfg
        self.nan_strikes = 0

    # --------------------------------------------------------------- subclass hooks
    def process(self, buffer: RolloutBuffer, policy: Policy) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, policy: Policy, batch: Batch, ctx: UpdateContext, update_idx: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch and its named parts (checked for NaN/Inf in that order)."""
        raise NotImplementedError

    def prepare(self, batch: Batch, ctx: UpdateContext) -> Batch:
        """Per-minibatch transform before the micro-batch split (e.g. advantage norm over the
        minibatch of all ranks, through ``ctx.all_reduce_sum``)."""
        return batch

    def frozen_parameters(self, policy: Policy, update_idx: int) -> list[nn.Parameter]:
        """Parameters whose gradients are dropped before the step (left bit-identical)."""
        return []

    def state_dict(self) -> dict[str, int]:
        return {"nan_strikes": self.nan_strikes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.nan_strikes = int(state.get("nan_strikes", 0))

    # --------------------------------------------------------------- the loop
    def update(self, policy: Policy, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer,
               ctx: UpdateContext, update_idx: int,
               generator: torch.Generator | None = None) -> dict[str, Any]:
        """``num_ppo_epochs`` x ``num_mini_batches`` optimizer steps, each accumulating
        ``gradient_accumulation_steps`` micro-batches. Returns means over the steps taken."""
        cfg = self.cfg
        mask = buffer.train_mask if buffer.train_mask is not None else buffer.valid
        num = int(mask.sum())
        needed = cfg.num_mini_batches * cfg.gradient_accumulation_steps
        # Every rank must run the same number of backward passes (DDP collectives).
        if ctx.all_ranks_any(num < needed):
            return {"skipped_update": 1.0, "train_samples": float(num)}
        # Actor and critic are clipped separately, so the critic's gradient never sets the
        # scale of the actor's (with one joint norm, each step's actor gradient was divided by
        # a factor that depended on the value loss). ``grad_norm`` / ``value_grad_norm``.
        critic = list(policy.value_parameters())
        critic_ids = {id(p) for p in critic}
        actor = [p for p in policy.parameters() if p.requires_grad and id(p) not in critic_ids]
        frozen = self.frozen_parameters(policy, update_idx)
        sums: dict[str, float] = defaultdict(float)
        steps = skipped = epochs = 0
        nonfinite: str | None = None
        # Each rank's loss is weighted by its share of the global minibatch (DDP then averages
        # over ranks), so ranks with unequal sample counts (masked episodes, dynamic sampling)
        # give the gradient of the mean over the union, as one process would.
        world = float(ctx.all_reduce_sum(torch.ones(1, dtype=torch.float64)))
        device = next(policy.parameters()).device
        policy.train()
        for _ in range(cfg.num_ppo_epochs):
            epochs += 1
            epoch_kl: list[float] = []
            for mb in iter_minibatches(buffer, cfg.num_mini_batches, generator, mask):
                mb = self.prepare(mb.to(device), ctx)
                global_n = float(ctx.all_reduce_sum(torch.tensor([len(mb)], dtype=torch.float64)))
                optimizer.zero_grad(set_to_none=True)
                micro = mb.split(cfg.gradient_accumulation_steps)
                bad: str | None = None
                step_metrics: dict[str, float] = defaultdict(float)
                for i, m in enumerate(micro):
                    sync = ctx.no_sync() if i < len(micro) - 1 else contextlib.nullcontext()
                    with sync:
                        loss, parts = self.loss(policy, m, ctx, update_idx)
                        bad = bad or _first_nonfinite({**parts, "loss": loss})
                        # Backward even when non-finite: every rank keeps the same collectives.
                        ctx.backward(loss * (len(m) * world / global_n))
                    for k, v in {**parts, "loss": loss}.items():
                        step_metrics[k] += _float(v) * len(m) / len(mb)
                for p in frozen:
                    p.grad = None
                grad_norm = _float(ctx.clip_grad_norm(actor, cfg.max_grad_norm))
                # After the actor's clip the grads are unscaled (accelerate unscales the whole
                # optimizer under fp16) and all-reduced (DDP): a plain local clip is exact.
                value_grad_norm = (_clip_grad_norm(critic, cfg.max_grad_norm) if critic else 0.0)
                if bad is None and not math.isfinite(grad_norm + value_grad_norm):
                    bad = "grad_norm"
                if ctx.all_ranks_any(bad is not None):
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self.nan_strikes += 1
                    nonfinite = bad or "other_rank"
                    if self.nan_strikes >= cfg.max_nan_strikes:
                        raise NonFiniteError(
                            f"non-finite {nonfinite} on {self.nan_strikes} optimizer steps "
                            f"(algo.max_nan_strikes={cfg.max_nan_strikes}); lower the learning "
                            f"rate or check the policy's log-probs")
                    continue
                optimizer.step()
                steps += 1
                step_metrics["grad_norm"] = grad_norm
                if critic:
                    step_metrics["value_grad_norm"] = value_grad_norm
                for k, v in step_metrics.items():
                    sums[k] += v
                epoch_kl.append(step_metrics.get("approx_kl", 0.0))
            mean_kl = sum(epoch_kl) / max(len(epoch_kl), 1)
            if cfg.target_kl is not None and ctx.all_ranks_any(mean_kl > cfg.target_kl):
                break
        metrics: dict[str, Any] = {k: v / steps for k, v in sums.items()} if steps else {}
        metrics.update(optimizer_steps=float(steps), skipped_steps=float(skipped),
                       epochs=float(epochs), train_samples=float(num),
                       nan_strikes=float(self.nan_strikes))
        if nonfinite is not None:
            metrics["nonfinite"] = nonfinite
        return metrics

    def score(self, policy: Policy, batch: Batch, ctx: UpdateContext) -> tuple:
        """``(new, old, chunk_log_probs, entropy, values)`` of a micro-batch: ``new`` / ``old``
        are the log-probs the ratio compares, per chunk ``[B]`` or, with
        ``importance_sampling_level: token``, per action token ``[B, k*A]`` (the old ones
        stored by ``act``); ``chunk_log_probs`` ``[B]`` (with grad) for KL terms."""
        if self.cfg.importance_sampling_level == "token":
            tok, entropy, values = ctx.evaluate(policy, batch.obs, batch.stored, per_token=True)
            return tok, batch.stored["token_log_probs"], tok.sum(-1), entropy, values
        log_probs, entropy, values = ctx.evaluate(policy, batch.obs, batch.stored)
        return log_probs, batch.log_probs, log_probs, entropy, values

    def reference_log_probs(self, policy: Policy, batch: Batch) -> torch.Tensor:
        """log-probs of the batch under the reference policy (adapters disabled), no grad."""
        with torch.no_grad(), policy.reference():
            return policy.evaluate(batch.obs, batch.stored)[0]


def _first_nonfinite(parts: dict[str, torch.Tensor]) -> str | None:
    for name, value in parts.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            return name
    return None


def check_config(cfg: Config) -> None:
    """``algo.name`` is registered and the algorithm accepts the run's config (its
    :meth:`Algorithm.check_config`); before any env or model starts."""
    if cfg.algo.name not in ALGORITHMS:
        raise ConfigError(f"algo.name={cfg.algo.name!r} is not allowed; choose one of "
                          f"{ALGORITHMS.names()}")
    ALGORITHMS.get(cfg.algo.name).check_config(cfg)
    if cfg.algo.importance_sampling_level == "token" and cfg.policy.name != "token_vla":
        raise ConfigError(f"algo.importance_sampling_level='token' needs a policy of action "
                          f"tokens (policy.name='token_vla'); policy.name={cfg.policy.name!r} "
                          "scores whole chunks: use 'chunk'")


from vlarl.algorithms import grpo, ppo, rpd  # noqa: F401  (register the algorithms)

__all__ = ["ALGORITHMS", "Algorithm", "NonFiniteError", "UpdateContext", "check_config"]
