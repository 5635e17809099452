"""Pipelined rollouts (``train.pipeline_groups``): the policy acts for one env group while the
others step in their worker processes. Real ManiSkill CPU workers and the tiny token VLA."""

from __future__ import annotations

import pytest
import torch

from vlarl.config import ConfigError, EnvConfig, load_config
from vlarl.rollout import RolloutBuffer, collect

pytestmark = pytest.mark.slow

FIELDS = ("images", "state", "log_probs", "rewards", "steps", "terminated", "truncated",
          "success_once", "valid")


@pytest.fixture(scope="module")
def env_and_policy():
    from vlarl.envs import make_env
    from vlarl.policies import build_policy

    cfg = load_config(None, ["--policy.chunk_size", "4"])
    env = make_env(EnvConfig(task="PushCube-v1", num_envs=4, backend="cpu", image_size=32,
                             max_episode_steps=12))
    torch.manual_seed(0)
    yield env, build_policy(cfg.policy).eval()
    env.close()


def _rollout(env, policy, groups: int, seed: int = 0) -> RolloutBuffer:
    buf = RolloutBuffer(3, env.num_envs)
    gen = torch.Generator().manual_seed(seed)
    collect(env, policy, buf, base_seed=5, update=2, generator=gen, pipeline_groups=groups)
    return buf


def _assert_same(a: RolloutBuffer, b: RolloutBuffer) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.stored["tokens"], b.stored["tokens"])
    assert [(e.env_idx, e.ret, e.length, e.success) for e in a.episodes] == \
        [(e.env_idx, e.ret, e.length, e.success) for e in b.episodes]


def test_overlap_changes_timing_not_results(env_and_policy, monkeypatch):
    """Groups of 2 with the overlap give the buffer, bit for bit, of the same groups stepped
    one after another (each group's step finished before the next group acts)."""
    env, policy = env_and_policy
    overlapped = _rollout(env, policy, groups=2)
    started = []
    start, finish = env.step_chunk_start, env.step_chunk_finish
    done = {}

    def start_and_wait(actions, seeds, envs):
        started.append(envs)
        start(actions, seeds, envs)
        done[envs] = finish(envs)

    monkeypatch.setattr(env, "step_chunk_start", start_and_wait)
    monkeypatch.setattr(env, "step_chunk_finish", lambda envs: done.pop(envs))
    sequential = _rollout(env, policy, groups=2)
    assert started[:2] == [range(2), range(2, 4)] and len(started) == 2 * 3
    _assert_same(overlapped, sequential)
    assert overlapped.valid.all() and overlapped.steps.sum() == 3 * 4 * 4


def test_groups_see_the_same_episodes_as_one_batch(env_and_policy):
    """Seeds are per env, so grouping changes no initial state; greedy actions of the tiny
    VLA match those of the whole batch here, and log-probs agree to float precision."""
    env, policy = env_and_policy
    one = RolloutBuffer(3, env.num_envs)
    two = RolloutBuffer(3, env.num_envs)
    collect(env, policy, one, base_seed=5, update=2, deterministic=True)
    collect(env, policy, two, base_seed=5, update=2, deterministic=True, pipeline_groups=2)
    assert torch.equal(one.images[0], two.images[0])  # the same initial states
    assert torch.equal(one.stored["tokens"], two.stored["tokens"])
    assert torch.allclose(one.log_probs, two.log_probs, atol=1e-4)


def test_bad_group_counts_are_refused(env_and_policy):
    from types import SimpleNamespace

    from vlarl.envs.base import VecEnv
    from vlarl.rollout import check_pipeline_groups

    env, policy = env_and_policy
    assert env.supports_overlap and not VecEnv.supports_overlap
    with pytest.raises(ValueError, match="train.pipeline_groups=3 must be >= 1 and divide "
                                         "env.num_envs=4"):
        collect(env, policy, RolloutBuffer(1, 4), base_seed=0, update=0, pipeline_groups=3)
    one_sim = SimpleNamespace(num_envs=2, supports_overlap=False)  # inline / GPU backends
    with pytest.raises(ValueError, match="needs envs that step in worker processes"):
        check_pipeline_groups(one_sim, 2)
    assert check_pipeline_groups(env, 2) == [range(2), range(2, 4)]
    with pytest.raises(ConfigError, match="train.pipeline_groups=2 needs env.backend=cpu"):
        load_config(None, ["--env.backend", "inline", "--env.num_envs", "2",
                           "--train.pipeline_groups", "2"])
    with pytest.raises(ConfigError, match="train.pipeline_groups=3 must divide env.num_envs=8"):
        load_config(None, ["--env.num_envs", "8", "--train.pipeline_groups", "3"])
