"""Rollout collection on a tiny fake VecEnv (a 1-D point) and a Gaussian MLP policy.

The fake env and policy are allowed here: these tests check the buffer bookkeeping
(seeds, auto-resets, truncation bootstrap, masks), not ManiSkill or a VLA. They live in
tests/helpers.py (tests/unit/algorithms/test_algorithms.py uses them too).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import STEP, GaussianPolicy, PointEnv, initial_x

from vlarl.rollout import RolloutBuffer, collect, episode_seed, iter_minibatches


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


@pytest.mark.parametrize("mode,group", [("continuous", 1), ("episodic", 2)])
def test_two_rollouts_side_by_side_are_one_rollout_of_twice_the_envs(mode, group):
    """train.rollouts_per_update: 4 envs x 2 rollouts (rollout k's envs at global indices
    4k..4k+3), concatenated, hold what 8 envs x 1 rollout hold, field for field."""
    from vlarl.rollout import sum_rollout_stats

    policy = GaussianPolicy(chunk_size=2, bias=1.0)
    kw = {"base_seed": 5, "update": 2, "mode": mode, "group_size": group, "deterministic": True}
    one = RolloutBuffer(6, 8, 2)
    stats_one = collect(PointEnv(8, max_episode_steps=5, goal=0.5), policy, one, **kw)
    parts, stats = [], []
    for k in range(2):
        parts.append(RolloutBuffer(6, 4, 2))
        stats.append(collect(PointEnv(4, max_episode_steps=5, goal=0.5), policy, parts[-1],
                             first_env=4 * k, **kw))
    both = RolloutBuffer.cat(parts)
    assert both.num_envs == 8 and both.num_filled == one.num_filled
    # an episodic rollout stops once its own envs are done: compare the valid entries (the
    # ones an update reads); 8 envs keep stepping finished envs until the slowest is done
    valid = one.valid
    assert torch.equal(both.valid, valid)
    for name in ("images", "state", "log_probs", "values", "rewards", "step_rewards", "steps",
                 "terminated", "truncated", "success", "success_once", "bootstrap_values"):
        assert torch.equal(getattr(both, name)[valid], getattr(one, name)[valid]), name
    assert torch.equal(both.stored["actions"][valid], one.stored["actions"][valid])
    assert torch.equal(both.last_values, one.last_values)
    assert [[w for w, v in zip(row, mask) if v] for row, mask in zip(both.instructions, valid)] \
        == [[w for w, v in zip(row, mask) if v] for row, mask in zip(one.instructions, valid)]
    key = lambda e: (e.env_idx, e.length)
    assert sorted(map(key, both.episodes)) == sorted(map(key, one.episodes))
    assert len({e.length for e in one.episodes}) > 1 and len(one.episodes) >= 8  # not trivial
    merged = sum_rollout_stats(stats)
    assert merged.keys() == stats_one.keys()
    for k, v in stats_one.items():
        assert merged[k] == pytest.approx(v), k
    assert RolloutBuffer.cat(parts[:1]) is parts[0]
    with pytest.raises(ValueError, match="one num_steps"):
        RolloutBuffer.cat([parts[0], RolloutBuffer(6, 4, 2)])
