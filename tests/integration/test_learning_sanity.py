"""Can the RL trainer learn at all? A one-decision bandit through the real trainer, the real
tiny token VLA, peft LoRA and accelerate: success iff the chunk's first action value is > 0
(about half of the random policy's samples). The env is fake on purpose - this checks the
algorithm path end to end, where a mistake in sign, credit or capacity shows in seconds;
learning on ManiSkill is measured by scripts and the eval code (docs/ppo.md, docs/grpo.md).

It also pins down the finding behind ``policy.lora_lm_head``: with peft's ``all-linear`` the
output layer (tied to the input embeddings) stays frozen and the success rate stalls near
0.8 whatever the learning rate; with the output layer adapted it reaches ~1.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlarl.config import load_config
from vlarl.envs.base import VecEnv
from vlarl.types import ChunkStep, Obs

pytestmark = pytest.mark.slow


class BanditEnv(VecEnv):
    """Every episode is one decision: reward 1 (success, terminated) iff actions[:, 0, 0] > 0,
    else truncated. Images are random per seed, so equal seeds give equal observations."""

    def __init__(self, cfg):
        self.num_envs, self.action_dim, self.state_dim = cfg.num_envs, 7, 9
        self.max_episode_steps, self.task, self.split = 1, "bandit", "train"
        self.size, self.seeds = cfg.image_size, [0] * cfg.num_envs

    def _obs(self, seeds) -> Obs:
        images = torch.stack([torch.randint(0, 256, (1, self.size, self.size, 3), dtype=torch.uint8,
                                            generator=torch.Generator().manual_seed(s))
                              for s in seeds])
        return Obs(images, torch.zeros(len(seeds), self.state_dim),
                   ["push the red cube to the goal"] * len(seeds))

    def reset(self, seeds):
        self.seeds = list(seeds)
        return self._obs(self.seeds)

    def step_chunk(self, actions, reset_seeds=None):
        n, k, _ = actions.shape
        hit = actions[:, 0, 0] > 0
        rewards = torch.zeros(n, k)
        rewards[:, 0] = hit.float()
        final = self._obs(self.seeds)
        self.seeds = list(reset_seeds or self.seeds)
        return ChunkStep(self._obs(self.seeds), rewards, hit.clone(), ~hit, hit.clone(),
                         hit.clone(), torch.ones(n, dtype=torch.long), final_obs=final)

    def close(self):
        pass


def _late_success(tmp_path, *args: str, updates: int = 60) -> float:
    from vlarl.trainer import train

    out = tmp_path / "run"
    cfg = load_config(None, [
        "--env.num_envs", "16", "--env.image_size", "32", "--env.max_episode_steps", "1",
        "--policy.chunk_size", "1", "--policy.action_bins", "16", "--policy.temperature", "1.0",
        "--train.rollout_steps", "1", "--train.num_updates", str(updates), "--train.learning_rate", "1e-3",
        "--algo.num_mini_batches", "1", "--train.eval_every", "0", "--train.save_every", str(updates),
        "--train.output_dir", str(out), *args])
    train(cfg, make_env_fn=BanditEnv)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == updates
    first = sum(r["rollout/success_rate"] for r in rows[:5]) / 5
    assert 0.3 < first < 0.75  # the start: about half the samples succeed
    return sum(r["rollout/success_rate"] for r in rows[-10:]) / 10  # 160 episodes


@pytest.mark.parametrize(("algo", "updates"), [
    (["--algo.name", "grpo", "--algo.num_generations", "4", "--policy.value_head", "false"], 60),
    (["--algo.name", "ppo"], 120)], ids=["grpo", "ppo"])  # PPO's critic learns the baseline first
def test_trainer_learns_a_one_decision_bandit(tmp_path, algo, updates):
    assert _late_success(tmp_path, "--policy.lora_lm_head", "true", *algo, updates=updates) >= 0.9


def test_frozen_output_layer_stalls_the_bandit(tmp_path):
    late = _late_success(tmp_path, "--algo.name", "grpo", "--algo.num_generations", "4",
                         "--policy.value_head", "false")
    assert late < 0.9
