"""Rollout buffer ``[T, N, ...]`` and ``collect(env, policy)``: the env -> algorithm hand-off.

Episode-aligned rollouts make resume exact: every update starts with ``env.reset(seeds)``
whose seeds are a pure function of ``(base_seed, update, env index, episode index)``, and
auto-resets inside the update take the next episode index. The env state at an update
boundary is thus fully determined by the seeds; a resumed run re-creates it exactly.

Two modes:

* ``continuous`` (PPO): every env runs T decisions, auto-resetting into new episodes; the
  value of the observation after the last decision bootstraps the unfinished episodes.
* ``episodic`` (GRPO/RLOO): each env runs exactly one episode; ``group_size`` consecutive
  envs share a seed (equal seeds give equal initial states), decisions after the episode
  ended are masked invalid, and collection stops early when every env is done.

Rewards: a chunk's reward is the plain sum of its per-step rewards (no discount inside a
chunk) and ``AlgoConfig.gamma`` discounts per decision. The per-step rewards ``[T, N, k]``
and executed ``steps`` are kept, so a per-step discount could be applied later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from vlarl.envs.base import VecEnv
from vlarl.policies.base import Policy
from vlarl.types import ActOutput, ChunkStep, Obs


def episode_seed(base_seed: int, update: int, env_idx: int, episode_idx: int) -> int:
    """Stable seed in ``[0, 2**31)`` of one episode; the same on every machine and Python.

    (Python's ``hash`` is salted per process, so a cryptographic digest is used instead.)
    """
    key = f"{base_seed}/{update}/{env_idx}/{episode_idx}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31)


def seed_slots(num_envs: int, group_size: int = 1, first_env: int = 0) -> list[int]:
    """The seed slot (``env_idx`` of :func:`episode_seed`) of each local env: its *global*
    index ``first_env + i`` (``first_env`` = rank x num_envs), or its global group's index in
    grouped resets. So 1 process x 8 envs and 2 processes x 4 envs draw the same episodes,
    and runs with different layouts can be compared paired."""
    return [(first_env + i) // group_size for i in range(num_envs)]


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

    def flat_obs(self, idx: torch.Tensor) -> Obs:
        """Observations of flat indices ``idx`` (``t * N + n``) as one ``Obs`` batch."""
        assert self.images is not None and self.state is not None, "buffer is empty"
        N = self.num_envs
        ids = idx.tolist()
        priv = None if self.privileged is None else self.privileged.flatten(0, 1)[idx]
        return Obs(self.images.flatten(0, 1)[idx], self.state.flatten(0, 1)[idx],
                   [self.instructions[i // N][i % N] for i in ids], priv)


@torch.no_grad()
def collect(env: VecEnv, policy: Policy, buffer: RolloutBuffer, *, base_seed: int,
            update: int, mode: Literal["continuous", "episodic"] = "continuous",
            group_size: int = 1, deterministic: bool = False,
            generator: torch.Generator | None = None, first_env: int = 0,
            pipeline_groups: int = 1) -> dict[str, float]:
    """Run one update's rollout of ``buffer.num_steps`` decisions into ``buffer``.

    ``pipeline_groups`` > 1 splits the envs into that many contiguous groups; at every
    decision the policy acts for one group while the groups before it step
    (:func:`act_and_step`).

    Resets every env first (seeds from :func:`episode_seed` of the env's global index
    ``first_env + i``, :func:`seed_slots`; in ``episodic`` mode of its global group). Returns logging stats: ``episode_return``,
    ``episode_length``, ``success_rate`` (means over finished episodes), ``num_episodes``,
    ``env_steps`` and ``decisions``.
    """
    if mode not in ("continuous", "episodic"):
        raise ValueError(f"mode={mode!r} is not allowed; choose one of ['continuous', 'episodic']")
    N = env.num_envs
    if N != buffer.num_envs:
        raise ValueError(f"env has {N} envs but the buffer holds {buffer.num_envs}")
    if group_size < 1 or N % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide num_envs={N}")
    if mode == "continuous" and group_size != 1:
        raise ValueError("group_size > 1 needs mode='episodic' (grouped resets)")
    was_training = policy.training
    policy.eval()
    try:
        if first_env % group_size:
            raise ValueError(f"first_env={first_env} must be a multiple of group_size={group_size}")
        return _collect(env, policy, buffer, base_seed, update, mode, group_size,
                        deterministic, generator, first_env, pipeline_groups)
    finally:
        policy.train(was_training)


def _collect(env: VecEnv, policy: Policy, buffer: RolloutBuffer, base_seed: int,
             update: int, mode: str, group_size: int, deterministic: bool,
             generator: torch.Generator | None, first_env: int,
             pipeline_groups: int) -> dict[str, float]:
    N, dev = env.num_envs, buffer.device
    groups = check_pipeline_groups(env, pipeline_groups)
    seed_slot = seed_slots(N, group_size, first_env)
    episode_idx = [0] * N
    obs = env.reset([episode_seed(base_seed, update, seed_slot[i], 0) for i in range(N)])
    buffer.valid.zero_()
    buffer.bootstrap_values.zero_()
    buffer.values.zero_()
    buffer.last_values.zero_()
    buffer.episodes = []
    buffer.train_mask = None
    buffer.extra = {}
    ep_return = torch.zeros(N)
    ep_length = torch.zeros(N, dtype=torch.long)
    ep_success = torch.zeros(N, dtype=torch.bool)
    active = torch.ones(N, dtype=torch.bool)  # episodic: env has not finished its episode
    t = 0
    for t in range(buffer.num_steps):
        reset_seeds = [episode_seed(base_seed, update, seed_slot[i], episode_idx[i] + 1)
                       for i in range(N)]
        out, step = act_and_step(env, policy, obs, reset_seeds, groups,
                                 deterministic=deterministic, generator=generator)
        valid = active.clone()
        buffer.add(t, obs.to(dev), None if out.values is None else out.values.to(dev),
                   out.log_probs.to(dev), {k: v.to(dev) for k, v in out.stored.items()},
                   _to(step, dev), valid.to(dev))
        done = step.done.cpu()
        if out.values is not None and bool(step.truncated.any()):
            if step.final_obs is None:
                raise ValueError("env truncated an episode but returned no final_obs to bootstrap")
            trunc = step.truncated.cpu()
            boot = policy.value(step.final_obs.index(trunc))
            if boot is not None:
                buffer.bootstrap_values[t, trunc.to(dev)] = boot.to(dev, torch.float32)
        ep_return += step.rewards.sum(dim=1).cpu().float() * valid
        ep_length += step.steps.cpu() * valid
        ep_success |= step.success_once.cpu() & valid
        for i in (done & valid).nonzero(as_tuple=True)[0].tolist():
            buffer.episodes.append(Episode(i, float(ep_return[i]), int(ep_length[i]),
                                           bool(ep_success[i])))
            episode_idx[i] += 1
            ep_return[i], ep_length[i], ep_success[i] = 0.0, 0, False
        if mode == "episodic":
            active &= ~done
        obs = step.obs
        if mode == "episodic" and not bool(active.any()):
            break
    buffer.num_filled = t + 1
    if bool(active.any()):
        last = policy.value(obs)
        if last is not None:
            buffer.last_values.copy_(last.to(dev, torch.float32) * active.to(dev))
    eps = buffer.episodes
    nan = float("nan")
    return {
        "episode_return": sum(e.ret for e in eps) / len(eps) if eps else nan,
        "episode_length": sum(e.length for e in eps) / len(eps) if eps else nan,
        "success_rate": sum(e.success for e in eps) / len(eps) if eps else nan,
        "num_episodes": float(len(eps)),
        "env_steps": float((buffer.steps * buffer.valid).sum()),
        "decisions": float(buffer.valid.sum()),
    }


def check_pipeline_groups(env: VecEnv, pipeline_groups: int) -> list[range]:
    """The env ranges of ``train.pipeline_groups`` groups; ValueError naming the key when the
    count does not divide the envs or the backend steps all envs at once."""
    N = env.num_envs
    if pipeline_groups < 1 or N % pipeline_groups:
        raise ValueError(f"train.pipeline_groups={pipeline_groups} must be >= 1 and divide "
                         f"env.num_envs={N}")
    if pipeline_groups > 1 and not env.supports_overlap:
        raise ValueError(f"train.pipeline_groups={pipeline_groups} needs envs that step in "
                         f"worker processes (env.backend=cpu); {type(env).__name__} steps all "
                         "envs at once (set train.pipeline_groups=1)")
    size = N // pipeline_groups
    return [range(g * size, (g + 1) * size) for g in range(pipeline_groups)]


def act_and_step(env: VecEnv, policy: Policy, obs: Obs, reset_seeds: list[int],
                 groups: list[range], **act_kw) -> tuple[ActOutput, ChunkStep]:
    """One decision of every env: the policy acts, the envs execute the chunks.

    With several env groups (RLinf's pipelining of generation and simulation), the policy
    acts for group g while groups ``< g`` step in their worker processes, and the steps are
    collected after the last group has been sent. The policy's inputs and its order of
    random draws do not depend on the overlap, only on the groups (a policy batch per group),
    so a run is the same with or without it."""
    outs = []
    for ids in groups:
        sl = slice(ids.start, ids.stop)
        out = policy.act(obs if len(groups) == 1 else obs.index(sl), **act_kw)
        env.step_chunk_start(out.actions, reset_seeds[sl], ids)
        outs.append(out)
    return ActOutput.cat(outs), ChunkStep.cat([env.step_chunk_finish(ids) for ids in groups])


def _to(step: ChunkStep, device: torch.device) -> ChunkStep:
    return ChunkStep(obs=step.obs, rewards=step.rewards.to(device), terminated=step.terminated.to(device),
                     truncated=step.truncated.to(device), success=step.success.to(device),
                     success_once=step.success_once.to(device), steps=step.steps.to(device))


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


def reduce_rollout_stats(acc, stats: dict[str, float]) -> dict[str, float]:
    """Rollout stats over every rank's envs: counts summed, episode means weighted by each
    rank's finished episodes (NaN when none finished anywhere). One all-reduce."""
    n = stats["num_episodes"]
    means = ("episode_return", "episode_length", "success_rate")
    vals = [n, stats["env_steps"], stats["decisions"]] + [stats[k] * n if n else 0.0 for k in means]
    total = acc.reduce(torch.tensor(vals, dtype=torch.float64, device=acc.device),
                       reduction="sum").tolist()
    out = dict(stats, num_episodes=total[0], env_steps=total[1], decisions=total[2])
    out.update({k: v / total[0] if total[0] else float("nan") for k, v in zip(means, total[3:])})
    return out
