"""Scripted experts solve their real ManiSkill tasks (state obs, physx_cpu, no rendering)."""

from __future__ import annotations

import gymnasium as gym
import mani_skill.envs  # noqa: F401  (registers the ManiSkill tasks with gymnasium)
import numpy as np
import pytest

from vlarl.envs.experts import EXPERTS, get_expert, resolve_task

TASKS = ["PickCube-v1", "PushCube-v1", "PullCube-v1", "StackCube-v1", "PlaceSphere-v1", "PokeCube-v1"]
SEEDS = range(20)


def _make(task: str):
    return gym.make(
        task, obs_mode="state", control_mode="pd_ee_delta_pose", sim_backend="physx_cpu"
    )


def _run(env, expert, seed: int, max_steps: int, reset_expert: bool = True) -> int | None:
    """Steps to success of one episode, or None if it never succeeded."""
    env.reset(seed=seed)
    if reset_expert:
        expert.reset()
    for t in range(max_steps):
        action = expert.act(env.unwrapped)
        assert action.shape == (7,) and action.dtype == np.float32
        assert np.all(np.abs(action[:3]) <= 1.0) and np.linalg.norm(action[3:6]) <= 1.0 + 1e-6
        _, _, _, _, info = env.step(action)
        if bool(info["success"]):
            return t + 1
    return None


@pytest.mark.parametrize("task", TASKS)
def test_expert_solves_task(task: str):
    max_steps = gym.spec(task).max_episode_steps
    assert max_steps == 50
    env = _make(task)
    try:
        expert = get_expert(task)
        steps = [_run(env, expert, seed, max_steps) for seed in SEEDS]
    finally:
        env.close()
    solved = [s for s in steps if s is not None]
    print(f"{task}: {len(solved)}/{len(steps)} solved, mean steps {np.mean(solved):.1f}")
    assert len(solved) >= 19, (
        f"{task}: failed seeds {[i for i, s in enumerate(steps) if s is None]}"
    )
    assert max(solved) <= max_steps


def test_expert_notices_reset_it_was_not_told_about():
    # The env layer auto-resets inside its workers; a stale phase must not leak over.
    env = _make("PickCube-v1")
    try:
        expert = get_expert("PickCube-v1")
        first = _run(env, expert, seed=0, max_steps=50)
        assert expert.phase >= 3
        second = _run(env, expert, seed=1, max_steps=50, reset_expert=False)
    finally:
        env.close()
    assert first is not None and second is not None


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="known tasks") as err:
        get_expert("OpenDrawer-v1")
    for task in TASKS:
        assert task in str(err.value)
    assert "docs/adding_a_task.md" in str(err.value)
    # every task has an expert (a new task adds both; nothing here lists them by hand)
    assert set(TASKS) <= set(EXPERTS.names())


def test_ood_variants_resolve_to_base_task():
    assert resolve_task("PickCube-v1") == "PickCube-v1"
    assert resolve_task("PickCubeOOD-v1") == "PickCube-v1"
    assert resolve_task("StackCube-v1-colors") == "StackCube-v1"
    assert resolve_task("MyPush-v0", base_task={"MyPush-v0": "PushCube-v1"}) == "PushCube-v1"
    expert = get_expert("PlaceSphereWide-v1")
    assert type(expert).task_id == "PlaceSphere-v1"
