"""Rollout collection on a tiny fake VecEnv (a 1-D point) and a Gaussian MLP policy.

The fake env and policy are allowed here: these tests check the buffer bookkeeping
(seeds, auto-resets, truncation bootstrap, masks), not ManiSkill or a VLA. They are also
imported by tests/test_algorithms.py.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from vlarl.envs.base import VecEnv
from vlarl.policies.base import Policy
from vlarl.rollout import RolloutBuffer, collect, episode_seed, iter_minibatches
from vlarl.types import ActOutput, ChunkStep, Obs

STEP = 0.25  # how far one control step with action 1 moves the point


def initial_x(seed: int) -> float:
    return float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) * 2 - 1


class PointEnv(VecEnv):
    """x' = x + 0.25 clip(a); reward -|x| per step, or +1 (success, terminated) at x >= goal."""

    def __init__(self, num_envs: int, max_episode_steps: int, goal: float = 10.0):
        self.num_envs, self.action_dim, self.state_dim = num_envs, 1, 2
        self.max_episode_steps, self.goal = max_episode_steps, goal
        self.task, self.split = "point", "train"
        self.x = torch.zeros(num_envs)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.seeds_used: list[list[int]] = []

    def _obs(self, idx=None) -> Obs:
        x, t = self.x, self.t.float()
        n = self.num_envs
        images = (x.clamp(-1, 1) * 100 + 128).to(torch.uint8).view(n, 1, 1, 1, 1).expand(n, 1, 2, 2, 3)
        return Obs(images.clone(), torch.stack([x, t / 100], dim=1), [f"reach {self.goal}"] * n)

    def reset(self, seeds: list[int]) -> Obs:
        self.seeds_used.append(list(seeds))
        self.x = torch.tensor([initial_x(s) for s in seeds])
        self.t.zero_()
        return self._obs()

    def step_chunk(self, actions: torch.Tensor, reset_seeds=None) -> ChunkStep:
        n, k, _ = actions.shape
        rewards = torch.zeros(n, k)
        term = torch.zeros(n, dtype=torch.bool)
        trunc = torch.zeros(n, dtype=torch.bool)
        steps = torch.zeros(n, dtype=torch.long)
        for j in range(k):
            live = ~(term | trunc)
            self.x = torch.where(live, self.x + STEP * actions[:, j, 0].clamp(-1, 1), self.x)
            self.t += live.long()
            steps += live.long()
            hit = live & (self.x >= self.goal)
            rewards[:, j] = torch.where(hit, torch.ones(n), -self.x.abs()) * live
            term |= hit
            trunc |= live & ~hit & (self.t >= self.max_episode_steps)
        final = self._obs()
        done = term | trunc
        for i in done.nonzero(as_tuple=True)[0].tolist():
            self.x[i] = initial_x(reset_seeds[i])
            self.t[i] = 0
        return ChunkStep(self._obs(), rewards, term, trunc, term.clone(), term.clone(), steps,
                         final_obs=final)

    def close(self) -> None:
        pass


class GaussianPolicy(Policy):
    """Diagonal Gaussian over a chunk of k scalar actions, with a value head."""

    def __init__(self, chunk_size: int = 2, hidden: int = 16, bias: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.chunk_size, self.action_dim = chunk_size, 1
        self.actor = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, chunk_size))
        with torch.no_grad():
            self.actor[2].weight.mul_(0.1)
            self.actor[2].bias.fill_(bias)
        self.log_std = nn.Parameter(torch.full((chunk_size,), -0.5))
        self.value_head = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.ref_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.use_ref = False
        self.poison = False  # tests: make evaluate return NaN log-probs

    def _dist(self, obs: Obs) -> torch.distributions.Normal:
        mean = (self.ref_actor if self.use_ref else self.actor)(obs.state)
        return torch.distributions.Normal(mean, self.log_std.exp())

    def act(self, obs, deterministic=False, generator=None) -> ActOutput:
        d = self._dist(obs)
        a = d.mean if deterministic else d.mean + d.stddev * torch.randn(
            d.mean.shape, generator=generator)
        return ActOutput(a.view(len(obs), self.chunk_size, 1), d.log_prob(a).sum(-1),
                         self.value(obs), {"actions": a})

    def evaluate(self, obs, stored):
        d = self._dist(obs)
        lp = d.log_prob(stored["actions"]).sum(-1)
        if self.poison:
            lp = lp * float("nan")
        return lp, d.entropy().sum(-1), self.value(obs)

    def value(self, obs):
        return self.value_head(obs.state).squeeze(-1)

    @contextlib.contextmanager
    def reference(self):
        self.use_ref = True
        try:
            yield
        finally:
            self.use_ref = False


def test_episode_seed_is_stable_and_distinct():
    s = episode_seed(1, 2, 3, 4)
    assert s == episode_seed(1, 2, 3, 4) and 0 <= s < 2**31
    others = {episode_seed(1, 2, 3, 5), episode_seed(1, 2, 4, 4), episode_seed(1, 3, 3, 4),
              episode_seed(2, 2, 3, 4)}
    assert s not in others and len(others) == 4
    assert s == 1980876458  # a pure function of the tuple: fixed across processes/machines


def test_continuous_rollout_truncation_bootstrap_and_auto_reset():
    env, policy = PointEnv(2, max_episode_steps=3), GaussianPolicy(chunk_size=2)
    buf = RolloutBuffer(4, 2, 2)
    stats = collect(env, policy, buf, base_seed=7, update=5, deterministic=True)
    # 3-step episodes in chunks of 2: decisions of 2, 1 (truncated), 2, 1 (truncated) steps
    assert buf.steps.tolist() == [[2, 2], [1, 1], [2, 2], [1, 1]]
    assert buf.truncated[:, 0].tolist() == [False, True, False, True]
    assert not buf.terminated.any() and buf.valid.all()
    assert env.seeds_used == [[episode_seed(7, 5, i, 0) for i in range(2)]]
    # episode 2 of env 0 starts from the seed of episode index 1 (passed as reset seed)
    x1 = initial_x(episode_seed(7, 5, 0, 1))
    assert float(buf.state[2, 0, 0]) == pytest.approx(x1, abs=1e-6)
    assert buf.state.shape == (4, 2, 2) and buf.images.shape == (4, 2, 1, 2, 2, 3)
    assert buf.stored["actions"].shape == (4, 2, 2) and buf.instructions[3][1] == "reach 10.0"
    # chunk reward = sum of per-step rewards; the second chunk ran one step only
    assert buf.step_rewards[1, :, 1].abs().sum() == 0
    torch.testing.assert_close(buf.rewards, buf.step_rewards.sum(-1))
    # bootstrap = V(final observation), not V(reset observation)
    x_final = buf.state[1, :, 0] + STEP * buf.stored["actions"][1, :, 0].clamp(-1, 1)
    final_state = torch.stack([x_final, torch.full((2,), 0.03)], dim=1)
    with torch.no_grad():
        expected = policy.value_head(final_state).squeeze(-1)
    torch.testing.assert_close(buf.bootstrap_values[1], expected)
    assert buf.bootstrap_values[0].abs().sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(buf.last_values, policy.value(env._obs()))
    assert stats["num_episodes"] == 4 and stats["episode_length"] == 3
    assert stats["env_steps"] == 12 and stats["decisions"] == 8 and stats["success_rate"] == 0
    assert policy.training  # collect restores the mode


def test_rollout_is_reproducible_from_seeds():
    bufs = []
    for _ in range(2):
        env, policy = PointEnv(3, max_episode_steps=5), GaussianPolicy(chunk_size=2)
        bufs.append(RolloutBuffer(4, 3, 2))
        collect(env, policy, bufs[-1], base_seed=3, update=1,
                generator=torch.Generator().manual_seed(0))
    for name in ("state", "log_probs", "rewards", "values", "bootstrap_values"):
        assert torch.equal(getattr(bufs[0], name), getattr(bufs[1], name)), name


def test_episodic_grouped_rollout_masks_after_the_end():
    # Action +1 always: the point reaches the goal 0.5 after ceil((0.5 - x0) / 0.25) steps.
    env = PointEnv(4, max_episode_steps=20, goal=0.5)
    policy = GaussianPolicy(chunk_size=2, bias=5.0)
    buf = RolloutBuffer(8, 4, 2)
    stats = collect(env, policy, buf, base_seed=0, update=0, mode="episodic",
                    group_size=2, deterministic=True)
    seeds = env.seeds_used[0]
    assert seeds[0] == seeds[1] != seeds[2] == seeds[3]
    lengths = [max(1, math.ceil((0.5 - initial_x(s)) / STEP - 1e-9)) for s in seeds]
    assert [e.length for e in sorted(buf.episodes, key=lambda e: e.env_idx)] == lengths
    decisions = [math.ceil(n / 2) for n in lengths]
    assert buf.valid.sum(0).tolist() == decisions
    for n, d in enumerate(decisions):
        assert buf.valid[:d, n].all() and not buf.valid[d:, n].any()
        assert buf.terminated[d - 1, n] and buf.success_once[d - 1, n]
    assert buf.num_filled == max(decisions)  # stopped early once every env was done
    assert stats["success_rate"] == 1.0 and stats["num_episodes"] == 4
    assert buf.last_values.abs().sum() == 0  # nothing left to bootstrap


def test_iter_minibatches_covers_valid_entries_once():
    env, policy = PointEnv(4, max_episode_steps=20, goal=0.5), GaussianPolicy(bias=5.0)
    buf = RolloutBuffer(8, 4)  # chunk_size taken from the env
    collect(env, policy, buf, base_seed=0, update=0, mode="episodic", group_size=2,
            deterministic=True)
    assert buf.chunk_size == 2 and buf.step_rewards.shape == (8, 4, 2)
    batches = list(iter_minibatches(buf, 3, torch.Generator().manual_seed(0)))
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == buf.valid.flatten().nonzero().flatten().tolist()
    assert max(len(b) for b in batches) - min(len(b) for b in batches) <= 1
    b = batches[0]
    t, n = divmod(int(b.index[0]), 4)
    assert torch.equal(b.obs.state[0], buf.state[t, n]) and b.log_probs[0] == buf.log_probs[t, n]
    assert b.stored["actions"].shape == (len(b), 2) and len(b.obs.instructions) == len(b)
    assert [len(m) for m in b.split(2)] == [len(b) - len(b) // 2, len(b) // 2]


def test_collect_rejects_bad_arguments():
    env, policy = PointEnv(4, 5), GaussianPolicy()
    with pytest.raises(ValueError, match="mode='bogus'"):
        collect(env, policy, RolloutBuffer(2, 4, 2), base_seed=0, update=0, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size=3"):
        collect(env, policy, RolloutBuffer(2, 4, 2), base_seed=0, update=0,
                mode="episodic", group_size=3)
    with pytest.raises(ValueError, match="buffer holds 2"):
        collect(env, policy, RolloutBuffer(2, 2, 2), base_seed=0, update=0)


def test_episode_seeds_follow_the_global_env_index():
    """1 process x 8 envs and 2 processes x 4 envs draw the same episodes (paired layouts)."""
    from vlarl.rollout import episode_seed, seed_slots

    def seeds(n, group, first):
        return [episode_seed(7, 3, s, 0) for s in seed_slots(n, group, first)]

    for group in (1, 4):
        assert seeds(8, group, 0) == seeds(4, group, 0) + seeds(4, group, 4)
    assert seed_slots(4, 2, 4) == [2, 2, 3, 3]
    assert len(set(seeds(8, 1, 0))) == 8
