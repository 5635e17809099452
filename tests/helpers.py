"""Helpers shared by the test modules (tests/ is on sys.path: pyproject's pytest ``pythonpath``).

* ``ROOT``: the repository.
* Tiny configs: ``tiny_env_config`` (one inline PushCube env, 32 px, 8-step episodes),
  ``demo_config`` (the 3-episode PickCube demos that the data and SFT tests
  share through the run's cache, ``session_cache``: one definition, so both hit the same
  dataset key, built once for all parallel test processes) and
  ``TINY_TRAIN`` / ``train_config`` (the 1-env inline PPO run of the trainer and reliability
  tests: 32 px, 8-step episodes, chunks of 4, 2 decisions per update).
* ``run_cpu_timed``: a command's result and CPU seconds (what "fails fast" tests bound).
* Token VLA: ``make_obs`` (random images, states, instructions), ``make_policy`` (the tiny
  PaliGemma token VLA, chunk ``K`` x ``A``), ``trained_step`` (Adam steps on a fixed chunk).
* A fake env and policy for the rollout and algorithm bookkeeping tests only (never the only
  test of a feature): ``PointEnv`` (a 1-D point, ``STEP`` per unit action) and
  ``GaussianPolicy`` (a Gaussian MLP).
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import subprocess
from pathlib import Path

import torch
from torch import nn

from vlarl.config import Config, EnvConfig, load_config
from vlarl.envs.base import VecEnv
from vlarl.policies import TokenVLAConfig, build_policy
from vlarl.policies.base import Policy
from vlarl.types import ActOutput, ChunkStep, Obs

ROOT = Path(__file__).resolve().parents[1]

DEMO_EPISODES = 3


def run_cpu_timed(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, float]:
    """``subprocess.run(cmd, **kw)`` and the CPU seconds (user + system) the command used.
    "Fails fast" tests bound CPU time, not wall time: the suite runs in parallel processes
    (scripts/test.sh), and a wall-clock bound of a few seconds fails when they share the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return res, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def session_cache(tmp_path_factory) -> Path:
    """A ``VLARL_CACHE`` shared by every test process of one run: under pytest-xdist each
    worker has its own base temp directory, so the cache goes one level up, to the run's
    (``vlarl.runtime.runlock.building`` makes a second builder of an entry wait for the first)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "vlarl_cache"


def tiny_env_config(**kw) -> EnvConfig:
    """One inline PushCube-v1 env at 32 px with 8-step episodes; ``kw`` overrides fields."""
    base = {"task": "PushCube-v1", "num_envs": 1, "backend": "inline", "image_size": 32,
            "max_episode_steps": 8}
    return EnvConfig(**{**base, **kw})


def demo_config() -> Config:
    """Tiny PickCube collection (3 scripted episodes, 32 px, 2 workers)."""
    cfg = Config()
    cfg.env.task, cfg.env.image_size, cfg.env.max_episode_steps = "PickCube-v1", 32, 50
    cfg.data.num_episodes, cfg.data.num_workers = DEMO_EPISODES, 2
    return cfg


TINY_TRAIN = ["--env.backend", "inline", "--env.num_envs", "1", "--env.image_size", "32",
              "--env.max_episode_steps", "8", "--env.reward_mode", "normalized_dense",
              "--policy.chunk_size", "4", "--train.rollout_steps", "2",
              "--algo.num_mini_batches", "1", "--algo.num_ppo_epochs", "1",
              "--train.save_every", "1", "--train.learning_rate", "1e-3"]


def train_config(out: Path, *extra: str) -> Config:
    """``TINY_TRAIN`` writing to ``out``; ``extra`` overrides (``--section.field value``)."""
    return load_config(None, TINY_TRAIN + ["--train.output_dir", str(out), *extra])


K, A = 2, 7


def make_obs(n: int = 3, seed: int = 0) -> Obs:
    g = torch.Generator().manual_seed(seed)
    words = ["pick the red cube", "push the blue sphere to the goal", "stack the green cube",
             "place the cube in the bin"]
    return Obs(images=torch.randint(0, 256, (n, 1, 64, 64, 3), dtype=torch.uint8, generator=g),
               state=torch.randn(n, 9, generator=g),
               instructions=[words[i % len(words)] for i in range(n)])


def make_policy(**kw) -> torch.nn.Module:
    return build_policy(TokenVLAConfig(chunk_size=K, action_dim=A, **kw))


def trained_step(policy, obs, stored=None, steps: int = 1, lr: float = 1e-2):
    """``steps`` Adam steps on -log_prob + value MSE of a fixed chunk (sampled if not given)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    if stored is None:
        stored = policy.act(obs, generator=torch.Generator().manual_seed(3)).stored
    for _ in range(steps):
        lp, _, v = policy.evaluate(obs, stored)
        loss = -lp.mean() + (v - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


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
