"""The env layer against real ManiSkill envs (CPU, software rendering).

Env creation costs ~6 s, so envs are module-scoped fixtures shared by the tests:
``inline`` (1 env in-process, normalized dense reward, 6-step episodes) and ``vec``
(2 worker processes, sparse reward, 50-step episodes).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest
import torch

from vlarl.config import EnvConfig
from vlarl.envs import SPLITS, TASKS, check_env, instruction, make_env, remake_env
from vlarl.envs.vector import (
    WORKER_RENDER_THREADS,
    CpuVecEnv,
    WorkerError,
    worker_blocks,
    worker_env,
)

SIZE = 32


@pytest.fixture(scope="module")
def inline():
    env = make_env(EnvConfig(task="PickCube-v1", backend="inline", num_envs=1, image_size=SIZE,
                             max_episode_steps=6, reward_mode="normalized_dense"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def vec():
    env = make_env(EnvConfig(task="PickCube-v1", backend="cpu", num_envs=2, image_size=SIZE,
                             max_episode_steps=50, reward_mode="sparse"))
    yield env
    env.close()


def _expert_available() -> bool:
    try:
        from vlarl.envs.experts import get_expert

        get_expert("PickCube-v1")
        return True
    except (ImportError, KeyError, ValueError):
        return False


# ---------------------------------------------------------------------------- no simulator
@pytest.mark.parametrize("override, needle", [
    ({"task": "PickCub-v1"}, "PickCube-v1"),
    ({"split": "nope"}, "unseen_color"),
    ({"image_size": 0}, "image_size=0"),
    ({"backend": "tpu"}, "inline"),
    ({"reward_mode": "shaped"}, "normalized_dense"),
    ({"backend": "inline", "num_envs": 2, "num_workers": 1}, r"num_workers=1 .*backend='inline'"),
    ({"num_envs": 2, "num_workers": 3}, r"num_workers=3 .*num_envs=2"),
    ({"num_workers": -1}, "num_workers=-1"),
])
def test_bad_config_raises_before_any_env(override, needle):
    with pytest.raises(ValueError, match=needle):
        make_env(EnvConfig(**override))


def test_instruction_pools_are_disjoint_and_seeded():
    assert set(SPLITS.names()) >= {"train", "unseen_color", "distractor", "unseen_instruction", "wide_pose"}
    for task, spec in TASKS.items():
        train = {instruction(task, "train", s) for s in range(40)}
        held = {instruction(task, "heldout", s) for s in range(40)}
        assert len(train) == len(spec.train) and len(held) == len(spec.heldout)
        assert not train & held
    assert instruction("PickCube-v1", "train", 3) == instruction("PickCube-v1", "train", 3)
    assert "purple" in instruction("PickCube-v1", "train", 3, color="purple")


# ---------------------------------------------------------------------------- inline backend
def test_check_env_inline(inline):
    summary = check_env(inline, seed=0, chunk=3)
    assert summary["image_shape"] == [1, SIZE, SIZE, 3]
    assert summary["state_dim"] == 20 and summary["action_dim"] == 7  # qpos 9 + is_grasped 1 + tcp 7 + goal 3


def test_bad_actions_raise(inline):
    inline.reset([0])
    for bad, needle in [(torch.zeros(1, 2, 6), r"\[N=1, k>=1, A=7\]"),
                        (torch.zeros(2, 2, 7), "shape"),
                        (torch.zeros(1, 7), "shape"),
                        (torch.zeros(1, 2, 7, dtype=torch.long), "dtype"),
                        (torch.full((1, 2, 7), float("nan")), "NaN")]:
        with pytest.raises(ValueError, match=needle):
            inline.step_chunk(bad)
    with pytest.raises(ValueError, match="reset_seeds"):
        inline.step_chunk(torch.zeros(1, 1, 7), reset_seeds=[1, 2])


def test_same_seed_same_first_obs(inline):
    a, b, c = inline.reset([7]), inline.reset([7]), inline.reset([8])
    assert torch.equal(a.images, b.images) and torch.equal(a.state, b.state)
    assert a.instructions == b.instructions
    assert not torch.equal(a.images, c.images)


def test_chunk_is_exact_and_matches_maniskill_step(inline):
    """One chunk of 5 == 5 chunks of 1 == ManiSkill's own env.step, reward by reward."""
    actions = torch.rand(1, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inline.reset([11])
    chunk = inline.step_chunk(actions)
    inline.reset([11])
    singles = [inline.step_chunk(actions[:, j:j + 1]) for j in range(5)]
    inline.reset([11])
    ms = [float(inline.u.step(actions[0, j])[1]) for j in range(5)]
    one_by_one = torch.cat([s.rewards for s in singles], 1)
    assert chunk.rewards.shape == (1, 5) and chunk.steps.item() == 5
    assert torch.allclose(chunk.rewards, one_by_one, atol=1e-6)
    assert torch.allclose(chunk.rewards[0], torch.tensor(ms), atol=1e-6)
    assert chunk.rewards.abs().sum() > 0  # dense reward: a non-trivial comparison
    assert torch.equal(chunk.obs.state, singles[-1].obs.state)
    assert torch.equal(chunk.obs.images, singles[-1].obs.images)


def test_truncation_not_termination(inline):
    inline.reset([3])
    first = inline.step_chunk(torch.zeros(1, 4, 7), reset_seeds=[4])
    assert first.steps.item() == 4 and not first.done.any()
    out = inline.step_chunk(torch.zeros(1, 4, 7), reset_seeds=[4])
    assert out.truncated.tolist() == [True] and out.terminated.tolist() == [False]
    assert out.steps.item() == 2 and out.rewards[0, 2:].abs().sum() == 0
    assert out.info["elapsed_steps"].item() == 6
    fresh = inline.reset([4])  # the auto-reset used reset_seeds
    assert torch.equal(out.obs.images, fresh.images) and torch.equal(out.obs.state, fresh.state)
    assert not torch.equal(out.final_obs.state, out.obs.state)


# ---------------------------------------------------------------------------- cpu workers
@pytest.mark.slow
def test_check_env_vector_and_grouped_reset(vec, inline):
    summary = check_env(vec, seed=0, chunk=2)
    assert summary["num_envs"] == 2 and summary["state_dim"] == 20
    same = vec.reset([5, 5])
    assert torch.equal(same.images[0], same.images[1]) and torch.equal(same.state[0], same.state[1])
    assert same.instructions[0] == same.instructions[1]
    diff = vec.reset([5, 6])
    assert not torch.equal(diff.state[0], diff.state[1])
    one = inline.reset([6])  # same seed, other backend: same first observation
    assert torch.equal(one.images[0], diff.images[1]) and torch.allclose(one.state[0], diff.state[1])


@pytest.mark.slow
@pytest.mark.skipif(not _expert_available(), reason="vlarl.envs.experts not available yet")
def test_success_terminates_and_partial_reset(vec, inline):
    """Env 0 follows the expert to success; env 1 idles. Only env 0 resets."""
    vec.reset([1, 2])
    total = 0
    for _ in range(50):
        act = vec.expert_actions()
        act[1] = 0.0
        out = vec.step_chunk(act[:, None, :], reset_seeds=[21, 22])
        total += 1
        if out.done[0]:
            break
    assert out.terminated.tolist() == [True, False] and out.truncated.tolist() == [False, False]
    assert out.success[0] and out.success_once[0]
    assert out.rewards[0].tolist() == [1.0] and out.info["episode_return"][0].item() == 1.0
    assert out.info["elapsed_steps"].tolist() == [total, total]  # env 1 kept its episode
    assert not torch.equal(out.final_obs.state[0], out.obs.state[0])
    assert torch.equal(out.final_obs.state[1], out.obs.state[1])
    fresh = inline.reset([21])
    assert torch.equal(out.obs.images[0], fresh.images[0]) and out.obs.instructions[0] == fresh.instructions[0]
    nxt = vec.step_chunk(torch.zeros(2, 1, 7))
    assert nxt.info["elapsed_steps"].tolist() == [1, total + 1]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver workers: Linux only")
def test_forkserver_workers_draw_what_spawned_workers_draw(vec):
    """The default start method (forkserver, imports preloaded) changes where workers come
    from, not what they produce: the same seeds give bit-identical observations."""
    me = os.getpid()
    servers = {psutil.Process(pid).ppid() for pid in vec.pids}
    assert len(servers) == 1 and me not in servers  # both forked by one server, not by us
    spawned = CpuVecEnv(vec.cfg, start_method="spawn")
    try:
        assert {psutil.Process(pid).ppid() for pid in spawned.pids} == {me}
        a, b = vec.reset([7, 8]), spawned.reset([7, 8])
        assert torch.equal(a.images, b.images) and torch.equal(a.state, b.state)
        act = torch.full((2, 3, 7), 0.3)
        sa, sb = vec.step_chunk(act, [1, 2]), spawned.step_chunk(act, [1, 2])
        assert torch.equal(sa.obs.images, sb.obs.images) and torch.equal(sa.rewards, sb.rewards)
    finally:
        spawned.close()


def test_worker_blocks():
    assert worker_blocks(8, 3) == [range(2), range(2, 5), range(5, 8)]
    assert worker_blocks(2, 2) == [range(1), range(1, 2)] and worker_blocks(5, 1) == [range(5)]
    with pytest.raises(ValueError, match=r"num_workers=3 must be in \[1, env.num_envs=2\]"):
        worker_blocks(2, 3)


@pytest.mark.slow
def test_envs_sharing_a_worker_draw_what_one_env_per_worker_draws(vec):
    """Two envs in one worker process step in turn and give bit-identical episodes to one env
    per worker (the default), also with each chunk split over two requests as the overlap
    splits it, and so do the two envs held in this process (``backend: inline`` on CPU); the
    worker rebuilds its envs for the next split without a new start; a dead shared worker is
    named with its envs."""
    import dataclasses

    per_env, shared = vec, CpuVecEnv(dataclasses.replace(vec.cfg, num_workers=1))
    here = make_env(dataclasses.replace(vec.cfg, backend="inline"))
    try:
        assert type(here).__name__ == "BlockVecEnv" and here.resets_each_env_alone
        assert len(per_env.pids) == 2 and len(shared.pids) == 1
        a, b, c = per_env.reset([3, 4]), shared.reset([3, 4]), here.reset([3, 4])
        assert torch.equal(a.images, b.images) and torch.equal(a.state, b.state)
        assert torch.equal(a.images, c.images) and torch.equal(a.state, c.state)
        gen = torch.Generator().manual_seed(0)
        for k in range(4):
            act = torch.rand(2, 5, 7, generator=gen) * 2 - 1
            sa = per_env.step_chunk(act, [10 + k, 20 + k])
            shared.step_chunk_start(act[:1], [10 + k], range(1))  # as the overlap does
            shared.step_chunk_start(act[1:], [20 + k], range(1, 2))
            first, second = shared.step_chunk_finish(range(1)), shared.step_chunk_finish(range(1, 2))
            sc = here.step_chunk(act, [10 + k, 20 + k])
            for x, y, z in ((sa.obs.images, torch.cat([first.obs.images, second.obs.images]), sc.obs.images),
                            (sa.obs.state, torch.cat([first.obs.state, second.obs.state]), sc.obs.state),
                            (sa.rewards, torch.cat([first.rewards, second.rewards]), sc.rewards),
                            (sa.done, torch.cat([first.done, second.done]), sc.done)):
                assert torch.equal(x, y) and torch.equal(x, z), k
        assert sa.info["elapsed_steps"].tolist() == [20, 20]  # no episode ended: 4 chunks of 5
        assert torch.equal(per_env.expert_actions(), here.expert_actions())
        # the next split in the same worker: fresh simulators, renderer already up
        worker, pid = psutil.Process(shared.pids[0]), shared.pids[0]
        cpu = sum(worker.cpu_times()[:2])
        ood = dataclasses.replace(vec.cfg, split="unseen_color", num_workers=1)
        assert remake_env(shared, ood) is shared and shared.pids == [pid]
        assert sum(worker.cpu_times()[:2]) - cpu < 4.0  # a new worker: ~10 s
        here = remake_env(here, dataclasses.replace(ood, backend="inline", num_workers=0))
        a, c = shared.reset([3, 4]), here.reset([3, 4])
        assert shared.split == "unseen_color" and torch.equal(a.images, c.images)
        assert not torch.equal(a.images, b.images)  # another cube colour
        with pytest.raises(ValueError, match="rebuild keeps the worker layout"):
            shared.rebuild(dataclasses.replace(ood, num_workers=2))
        os.kill(shared.pids[0], signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"env worker 0 \(pid \d+, envs 0-1, PickCube-v1\) died"):
            shared.step_chunk(torch.zeros(2, 1, 7))
    finally:
        shared.close()
        here.close()


@pytest.mark.slow
def test_an_env_set_built_after_another_closed_reuses_the_renderer():
    """SAPIEN computes its BRDF table (~10 s of one core on llvmpipe) with the process's first
    camera picture and frees it with the last live render system; vlarl keeps one alive, so
    an env set built after the previous one closed (an evaluation's next split) starts in
    about a second of CPU instead of ~11."""
    import dataclasses

    cfg = EnvConfig(task="PushCube-v1", backend="inline", num_envs=2, image_size=16,
                    max_episode_steps=8)
    with make_env(cfg) as env:  # this process's first env set may pay the table
        env.reset([0, 1])
    cpu = time.process_time()
    with make_env(dataclasses.replace(cfg, split="unseen_color")) as env:
        obs = env.reset([0, 1])
    assert time.process_time() - cpu < 4.0
    assert obs.images.shape == (2, 1, 16, 16, 3) and obs.images.float().std() > 10


def test_worker_render_threads_default_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("LP_NUM_THREADS", raising=False)
    assert worker_env() == {"LP_NUM_THREADS": WORKER_RENDER_THREADS} == {"LP_NUM_THREADS": "1"}
    monkeypatch.setenv("LP_NUM_THREADS", "3")
    assert worker_env() == {}


@pytest.mark.slow
def test_killed_worker_raises():
    env = make_env(EnvConfig(task="PushCube-v1", backend="cpu", num_envs=1, image_size=16))
    try:
        env.reset([0])
        os.kill(env.pids[0], signal.SIGKILL)
        with pytest.raises(WorkerError, match="died"):
            env.step_chunk(torch.zeros(1, 2, 7))
    finally:
        env.close()


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """Forkserver workers import the script again; one that builds envs at import time kills
    them at start. The error names the script and the guard."""
    import subprocess

    body = ('from vlarl.config import EnvConfig\nfrom vlarl.envs import make_env\n'
            'def build():\n    make_env(EnvConfig(task="PushCube-v1", backend="cpu", num_envs=1,'
            ' image_size=16)).close()\n')
    bare = tmp_path / "bare.py"
    bare.write_text(body + "build()\n")
    out = subprocess.run([sys.executable, str(bare)], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "died with exit code 1" in out.stderr
    assert f"importing {bare} again" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr.splitlines()[-1]


# ---------------------------------------------------------------------------- OOD splits
@pytest.mark.slow
@pytest.mark.parametrize("split", ["unseen_color", "distractor", "wide_pose"])
def test_ood_split_changes_only_what_it_says(split, inline):
    base = inline.reset([9])
    cube0 = inline.u.cube.pose.p.clone()
    goal0 = inline.u.goal_site.pose.p.clone()
    env = make_env(EnvConfig(task="PickCube-v1", split=split, backend="inline", num_envs=1,
                             image_size=SIZE, reward_mode="normalized_dense"))
    try:
        obs = env.reset([9])
        u = env.u
        # the robot starts where it did (qpos 9 + is_grasped 1 + tcp pose 7; goal_pos may move)
        assert torch.allclose(obs.state[:, :17], base.state[:, :17])
        assert not torch.equal(obs.images, base.images)  # but the scene looks different
        if split == "unseen_color":
            assert "purple" in obs.instructions[0] and torch.equal(u.cube.pose.p, cube0)
        elif split == "distractor":
            assert torch.equal(u.cube.pose.p, cube0)
            assert u.distractor.pose.p[0, 1] * cube0[0, 1] < 0  # opposite side in y
        else:
            shift = u.cube.pose.p - cube0
            assert 0 < shift[0, :2].abs().max() <= 0.05 and shift[0, 2].abs() < 1e-6
            assert torch.allclose(u.goal_site.pose.p - goal0, shift, atol=1e-6)
    finally:
        env.close()


def test_control_steps_warn_nothing_unless_verbose(inline, monkeypatch):
    """ManiSkill 3.0.1 runs ``np.isnan`` on the torch action it builds itself, a NumPy 2
    deprecation warning on every CPU control step; vlarl's env silences it at the step and
    ``VLARL_VERBOSE=1`` shows it again."""
    import warnings

    def library_noise() -> int:
        inline.reset(seeds=[0])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            inline.step_chunk(torch.zeros(1, 3, inline.action_dim))
        return sum("__array_wrap__" in str(w.message) for w in seen)

    assert library_noise() == 0
    monkeypatch.setenv("VLARL_VERBOSE", "1")
    assert library_noise() >= 3  # one per control step
