"""The rollout buffer ``[T, N, ...]`` of one update's decisions and the flat batches an
algorithm trains on.

Rewards: a chunk's reward is the plain sum of its per-step rewards (no discount inside a
chunk) and ``AlgoConfig.gamma`` discounts per decision. The per-step rewards ``[T, N, k]``
and executed ``steps`` are kept, so a per-step discount could be applied later.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from vlarl.types import ChunkStep, Obs


@dataclass
class Episode:
    """Stats of one finished episode, for logging."""

    env_idx: int
    ret: float
    length: int
    success: bool


class RolloutBuffer:
    """Preallocated ``[T, N, ...]`` storage of one update's decisions.

    Observation tensors and the policy's ``stored`` tensors are allocated on the first
    ``add`` (their shapes come from the env and the policy). ``advantages`` / ``returns``
    are filled in place by the algorithm's ``process``.
    """

    def __init__(self, num_steps: int, num_envs: int, chunk_size: int | None = None,
                 device: torch.device | str = "cpu"):
        if num_steps < 1 or num_envs < 1 or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"num_steps={num_steps}, num_envs={num_envs}, chunk_size="
                             f"{chunk_size} must all be >= 1")
        T, N = num_steps, num_envs
        self.num_steps, self.num_envs = T, N
        self.chunk_size = chunk_size
        """k; None takes it from the first chunk the env returns."""
        self.device = torch.device(device)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=self.device)

        self.images: torch.Tensor | None = None  # uint8 [T, N, cams, H, W, 3]
        self.state: torch.Tensor | None = None  # float32 [T, N, D]
        self.privileged: torch.Tensor | None = None  # float32 [T, N, P] when the env gives it
        self.instructions: list[list[str]] = [[""] * N for _ in range(T)]
        self.stored: dict[str, torch.Tensor] = {}  # each [T, N, ...]
        self.log_probs = zeros(T, N)
        self.values = zeros(T, N)
        self.rewards = zeros(T, N)
        """Chunk reward: sum of the per-step rewards of the chunk."""
        self.step_rewards: torch.Tensor | None = None  # float32 [T, N, k]
        self.steps = zeros(T, N, dtype=torch.long)
        self.terminated = zeros(T, N, dtype=torch.bool)
        self.truncated = zeros(T, N, dtype=torch.bool)
        self.success = zeros(T, N, dtype=torch.bool)
        self.success_once = zeros(T, N, dtype=torch.bool)
        self.valid = zeros(T, N, dtype=torch.bool)
        self.bootstrap_values = zeros(T, N)
        """V(final observation) where the episode was truncated during decision t."""
        self.last_values = zeros(N)
        self.advantages = zeros(T, N)
        self.returns = zeros(T, N)
        self.train_mask: torch.Tensor | None = None
        """bool [T, N] of the entries to train on, set by ``process`` (None: ``valid``)."""
        self.extra: dict[str, torch.Tensor] = {}
        """Per-entry ``[T, N]`` tensors an algorithm's ``process`` adds for its loss (GRPO's
        ``loss_weight``); minibatches carry them in ``Batch.extra``."""
        self.episodes: list[Episode] = []
        self.num_filled = 0
        """Decisions written by the last ``collect`` (< T when an episodic rollout stopped early)."""

    def add(self, t: int, obs: Obs, act_values: torch.Tensor | None, log_probs: torch.Tensor,
            stored: dict[str, torch.Tensor], step: ChunkStep, valid: torch.Tensor) -> None:
        """Write decision ``t`` of all N envs (``obs`` is the observation acted on)."""
        if not 0 <= t < self.num_steps:
            raise IndexError(f"decision t={t} outside [0, {self.num_steps})")
        if self.images is None:
            self.images = torch.zeros((self.num_steps, *obs.images.shape), dtype=torch.uint8,
                                      device=self.device)
            self.state = torch.zeros((self.num_steps, *obs.state.shape),
                                     dtype=obs.state.dtype, device=self.device)
            if obs.privileged is not None:
                self.privileged = torch.zeros((self.num_steps, *obs.privileged.shape),
                                              dtype=torch.float32, device=self.device)
        for key, val in stored.items():
            if key not in self.stored:
                self.stored[key] = torch.zeros((self.num_steps, *val.shape), dtype=val.dtype,
                                               device=self.device)
            self.stored[key][t] = val
        assert self.state is not None
        self.images[t] = obs.images
        self.state[t] = obs.state
        if self.privileged is not None:
            if obs.privileged is None:
                raise ValueError("the env stopped returning Obs.privileged mid-rollout")
            self.privileged[t] = obs.privileged
        self.instructions[t] = list(obs.instructions)
        self.log_probs[t] = log_probs
        if act_values is not None:
            self.values[t] = act_values
        k = step.rewards.shape[1]
        if self.chunk_size is None:
            self.chunk_size = k
        if k != self.chunk_size:
            raise ValueError(f"env returned chunks of {k} rewards; buffer chunk_size={self.chunk_size}")
        if self.step_rewards is None:
            self.step_rewards = torch.zeros(self.num_steps, self.num_envs, k, device=self.device)
        self.step_rewards[t] = step.rewards
        self.rewards[t] = step.rewards.sum(dim=1)
        self.steps[t] = step.steps
        self.terminated[t] = step.terminated
        self.truncated[t] = step.truncated
        self.success[t] = step.success
        self.success_once[t] = step.success_once
        self.valid[t] = valid

    @classmethod
    def cat(cls, buffers: list[RolloutBuffer]) -> RolloutBuffer:
        """One ``[T, sum N]`` buffer of collected buffers side by side (env axis): the columns
        of buffer k follow those of buffer k-1, its episodes' ``env_idx`` shifted to match.
        A single buffer is returned as it is. Holds what ``collect`` writes; ``process``
        fills advantages / returns / train_mask of the result."""
        if len(buffers) == 1:
            return buffers[0]
        first = buffers[0]
        if any(b.num_steps != first.num_steps or b.images is None for b in buffers):
            raise ValueError("RolloutBuffer.cat needs filled buffers of one num_steps")
        out = cls(first.num_steps, sum(b.num_envs for b in buffers), first.chunk_size,
                  first.device)
        side = lambda name: torch.cat([getattr(b, name) for b in buffers], dim=1)
        for name in ("images", "state", "log_probs", "values", "rewards", "step_rewards",
                     "steps", "terminated", "truncated", "success", "success_once", "valid",
                     "bootstrap_values"):
            setattr(out, name, side(name))
        if first.privileged is not None:
            out.privileged = side("privileged")
        out.stored = {k: torch.cat([b.stored[k] for b in buffers], dim=1) for k in first.stored}
        out.last_values = torch.cat([b.last_values for b in buffers])
        out.instructions = [[w for b in buffers for w in b.instructions[t]]
                            for t in range(first.num_steps)]
        offset = 0
        for b in buffers:
            out.episodes += [replace(e, env_idx=e.env_idx + offset) for e in b.episodes]
            offset += b.num_envs
        out.num_filled = max(b.num_filled for b in buffers)
        return out

    def flat_obs(self, idx: torch.Tensor) -> Obs:
        """Observations of flat indices ``idx`` (``t * N + n``) as one ``Obs`` batch."""
        assert self.images is not None and self.state is not None, "buffer is empty"
        N = self.num_envs
        ids = idx.tolist()
        priv = None if self.privileged is None else self.privileged.flatten(0, 1)[idx]
        return Obs(self.images.flatten(0, 1)[idx], self.state.flatten(0, 1)[idx],
                   [self.instructions[i // N][i % N] for i in ids], priv)


@dataclass
class Batch:
    """A flat batch of B decisions for the update (all tensors ``[B, ...]``)."""

    obs: Obs
    stored: dict[str, torch.Tensor]
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    index: torch.Tensor
    """Flat buffer indices ``t * N + n`` of the rows."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.numel())

    def split(self, parts: int) -> list[Batch]:
        """``parts`` near-equal micro-batches (gradient accumulation)."""
        return [self.select(ids) for ids in torch.arange(len(self)).tensor_split(parts)]

    def to(self, device: torch.device | str) -> Batch:
        """The tensors the loss reads (log-probs, values, advantages, returns, stored action
        tokens / noise, extras) on ``device``; images stay where they are (the policy's
        processor reads them on the CPU). The rollout buffer lives on the CPU while a GPU
        policy's ``evaluate`` returns CUDA tensors: the loss needs both on one device."""
        move = lambda t: t.to(device, non_blocking=True)
        return Batch(self.obs, {k: move(v) for k, v in self.stored.items()},
                     move(self.log_probs), move(self.values), move(self.advantages),
                     move(self.returns), self.index, {k: move(v) for k, v in self.extra.items()})

    def select(self, rows: torch.Tensor) -> Batch:
        return Batch(self.obs.index(rows), {k: v[rows] for k, v in self.stored.items()},
                     self.log_probs[rows], self.values[rows], self.advantages[rows],
                     self.returns[rows], self.index[rows], {k: v[rows] for k, v in self.extra.items()})


def iter_minibatches(buffer: RolloutBuffer, num_mini_batches: int,
                     generator: torch.Generator | None = None,
                     mask: torch.Tensor | None = None) -> Iterator[Batch]:
    """Yield ``num_mini_batches`` shuffled flat batches over the entries where ``mask``
    (default ``buffer.valid``) is True; sizes differ by at most one."""
    mask = buffer.valid if mask is None else mask
    idx = mask.flatten().nonzero(as_tuple=True)[0]
    perm = idx[torch.randperm(idx.numel(), generator=generator).to(idx.device)]
    flat = {k: v.flatten(0, 1) for k, v in buffer.stored.items()}
    extra = {k: v.flatten() for k, v in buffer.extra.items()}
    for ids in perm.tensor_split(num_mini_batches):
        yield Batch(buffer.flat_obs(ids), {k: v[ids] for k, v in flat.items()},
                    buffer.log_probs.flatten()[ids], buffer.values.flatten()[ids],
                    buffer.advantages.flatten()[ids], buffer.returns.flatten()[ids], ids,
                    {k: v[ids] for k, v in extra.items()})
