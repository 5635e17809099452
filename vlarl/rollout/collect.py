"""``collect(env, policy, buffer)``: one update's rollout, on seeds that make resume exact.

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
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

from vlarl.envs.base import VecEnv
from vlarl.policies.base import Policy
from vlarl.rollout.buffer import Episode, RolloutBuffer
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


ROLLOUT_COUNTS = ("num_episodes", "env_steps", "decisions")
ROLLOUT_MEANS = ("episode_return", "episode_length", "success_rate")  # over finished episodes


def _totals(stats: dict[str, float]) -> list[float]:
    n = stats["num_episodes"]
    return [stats[k] for k in ROLLOUT_COUNTS] + [stats[k] * n if n else 0.0 for k in ROLLOUT_MEANS]


def _from_totals(total: list[float]) -> dict[str, float]:
    n = total[0]
    return {**dict(zip(ROLLOUT_COUNTS, total)),
            **{k: v / n if n else float("nan") for k, v in zip(ROLLOUT_MEANS, total[3:])}}


def sum_rollout_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """Stats of several ``collect`` calls as one: counts summed, episode means weighted by
    each part's finished episodes (NaN when none finished)."""
    return parts[0] if len(parts) == 1 else _from_totals([sum(c) for c in zip(*map(_totals, parts))])


def reduce_rollout_stats(acc, stats: dict[str, float]) -> dict[str, float]:
    """:func:`sum_rollout_stats` over every rank's envs, in one all-reduce."""
    total = acc.reduce(torch.tensor(_totals(stats), dtype=torch.float64, device=acc.device),
                       reduction="sum").tolist()
    return dict(stats, **_from_totals(total))
