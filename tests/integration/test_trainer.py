"""The RL trainer end to end on real parts (ManiSkill env, tiny token VLA, peft, accelerate):
exact resume after a clean stop and after kill -9, NaN guard, bad input before start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, train_config

from vlarl.checkpoint import load
from vlarl.config import ConfigError

pytestmark = pytest.mark.slow

# in-training evaluations after updates 3 and 6: the run stopped after update 3 resumes into
# update 4 on a fresh env, the reference on the env it has just evaluated on
TINY = [*TINY_TRAIN, "--train.num_updates", "6", "--train.keep_last", "3",
        "--train.lr_scheduler_type", "linear", "--train.eval_every", "3",
        "--train.eval_episodes", "2"]


def _cfg(out: Path, *extra: str):
    return train_config(out, *TINY[len(TINY_TRAIN):], *extra)


def _final(run_dir: Path, update: int = 6):
    return load(run_dir / "checkpoints" / f"update_{update:06d}")


def _assert_same_state(a, b):
    ta, tb = a.tensors["trainable"], b.tensors["trainable"]
    assert ta.keys() == tb.keys() and len(ta) > 0
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"trainable tensor {k} differs"
    oa, ob = a.objects["optimizer"]["state"], b.objects["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name, v in oa[k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob[k][name])), f"optimizer {k}.{name}"
    assert a.objects["scheduler"] == b.objects["scheduler"]
    from vlarl.runtime.rng import restore_rng_state

    draws = []
    for ck in (a, b):
        gen = torch.Generator()
        restore_rng_state(ck.objects["rng"][0], {"update_generator": gen})
        draws.append(torch.cat([torch.rand(5), torch.rand(5, generator=gen)]))
    assert torch.equal(draws[0], draws[1])
    assert a.meta["env_steps"] == b.meta["env_steps"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    import vlarl.trainer
    from vlarl.trainer import train

    out = tmp_path_factory.mktemp("ref") / "run"
    built = []
    with pytest.MonkeyPatch.context() as mp:  # count the envs the run builds
        make = vlarl.trainer.build_env
        mp.setattr(vlarl.trainer, "build_env", lambda env_cfg: built.append(env_cfg) or make(env_cfg))
        train(_cfg(out))
    (out / "envs_built.txt").write_text(str(len(built)))
    return out


def test_reference_run_trains_and_logs(reference_run):
    import json

    lines = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["train/env_steps"] == 6 * 8  # 2 decisions x 4 steps, 6 updates
    # the in-training evaluations ran on the idle training env (one env: resets are per env)
    assert [r["update"] for r in lines if "eval/success_rate" in r] == [3, 6]
    assert (reference_run / "envs_built.txt").read_text() == "1"
    # ... and scored what a fresh env scores with the exported final policy, episode by episode
    from vlarl.envs import make_env
    from vlarl.eval.evaluate import evaluate_policy
    from vlarl.policies import load_policy

    cfg = _cfg(reference_run)
    with make_env(cfg.env) as env:
        fresh = evaluate_policy(load_policy(reference_run / "policy"), env,
                                [cfg.eval.seed, cfg.eval.seed + 1])
    assert lines[-1]["eval/n"] == 2 and lines[-1]["eval/episode_return"] > 0
    assert 0 < lines[-1]["eval/wall_s"] < 120
    assert lines[-1]["eval/episode_return"] == pytest.approx(
        sum(e["return"] for e in fresh) / 2, abs=1e-5)
    first = _final(reference_run, 6).tensors["trainable"]
    from vlarl.trainer import train  # noqa: F401  (import cost already paid)

    # the linear schedule decays to 0 after 6 updates; the adapters moved away from init
    assert lines[-1]["train/lr"] == pytest.approx(0.0)
    assert any("lora_B" in k and first[k].abs().sum() > 0 for k in first)


def test_exact_resume_after_clean_stop(reference_run, tmp_path):
    from vlarl.trainer import train

    out = tmp_path / "run"
    train(_cfg(out), stop_after=3)
    assert (out / "checkpoints" / "update_000003").is_dir()
    train(_cfg(out, "--train.resume", "true"))
    _assert_same_state(_final(out), _final(reference_run))
    import json

    steps = [json.loads(x)["update"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_exact_resume_after_kill_9_mid_update(reference_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vlarl", "train", *TINY, "--train.output_dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / "checkpoints" / "update_000003"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    time.sleep(0.3)  # inside update 4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (out / "checkpoints" / "update_000006").exists()
    res = subprocess.run(cmd + ["--train.resume", "true"], check=False, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_state(_final(out), _final(reference_run))


def test_in_training_evaluation_leaves_what_the_run_learns_unchanged(reference_run, tmp_path):
    """The reference evaluates after updates 3 and 6 on its training env; the same run without
    evaluations ends in the same weights, optimizer, scheduler and RNG streams, so
    ``train.eval_every`` can be changed without changing a run's result."""
    from vlarl.trainer import train

    out = tmp_path / "run"
    train(_cfg(out, "--train.eval_every", "0"))
    _assert_same_state(_final(out), _final(reference_run))


def test_existing_run_dir_needs_resume_or_overwrite(reference_run):
    from vlarl.trainer import train

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="resume|overwrite"):
        train(_cfg(reference_run))
    assert time.perf_counter() - t0 < 5


def test_unknown_algorithm_fails_before_envs_start(tmp_path):
    from vlarl.trainer import train

    envs_built = []
    with pytest.raises(ConfigError, match=r"algo.name='sac' is not allowed; choose one of "
                                          r"\['grpo', 'ppo', 'rloo', 'rpd'\]"):
        train(_cfg(tmp_path / "x", "--algo.name", "sac"), make_env_fn=envs_built.append)
    assert envs_built == [] and not (tmp_path / "x").exists()  # bad input leaves nothing


def test_an_algorithm_that_needs_a_critic_refuses_a_policy_without_one_before_envs_start(tmp_path):
    """PPO declares ``needs_critic``; the trainer checks it right after loading the policy,
    before any env worker starts (it used to raise inside the first update)."""
    from vlarl.algorithms import ALGORITHMS
    from vlarl.trainer import train

    assert ALGORITHMS.get("ppo").needs_critic and not ALGORITHMS.get("grpo").needs_critic
    assert ALGORITHMS.get("grpo").rollout_mode == "episodic"
    assert ALGORITHMS.get("ppo").rollout_mode == "continuous"
    envs_built = []
    with pytest.raises(ConfigError, match="needs a critic.*policy.value_head=true"):
        train(_cfg(tmp_path / "x", "--policy.value_head", "false"),
              make_env_fn=lambda c: envs_built.append(c))
    assert envs_built == []


def test_a_state_of_another_size_fails_before_the_first_env_step(tmp_path):
    """A policy trained on 5-value states (policy.state_sizes, which SFT writes) meets
    PickCube's longer state: refused at start-up naming both sizes, no env reset or step."""
    from vlarl.trainer import build_env, train

    envs = []

    def make_env(c):
        env = build_env(c)
        env.reset = env.step_chunk = lambda *a, **k: pytest.fail("the env was used")
        envs.append(env)
        return env

    cfg = _cfg(tmp_path / "x", "--policy.state_sizes", "[5]")
    with pytest.raises(ValueError, match=r"env.task='PickCube-v1' gives a state of 20 values, "
                                         r"and the policy was trained on states of 5 values"):
        train(cfg, make_env_fn=make_env)
    assert len(envs) == 1
    envs[0].close()


def test_rollouts_per_update_collects_each_rollout_on_its_own_env_indices(tmp_path):
    """train.rollouts_per_update=2 with 1 env: two rollouts per update, reset on the seeds of
    global env indices 0 and 1 (what 2 envs x 1 rollout draw), trained on as one batch."""
    import json

    from vlarl.rollout import episode_seed
    from vlarl.trainer import build_env, train

    resets = []

    def make_env(c):
        env = build_env(c)
        real = env.reset
        env.reset = lambda seeds: resets.append(list(seeds)) or real(seeds)
        return env

    out = tmp_path / "run"
    train(train_config(out, "--train.num_updates", "2", "--train.rollouts_per_update", "2",
                       "--train.seed", "3"), make_env_fn=make_env)
    assert resets == [[episode_seed(3, u, k, 0)] for u in (0, 1) for k in (0, 1)]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout/decisions"] for r in lines] == [4, 4]  # 2 rollouts x 2 decisions
    assert lines[-1]["train/env_steps"] == 2 * 2 * 8
    assert [r["rollout/num_episodes"] for r in lines] == [2, 2]
