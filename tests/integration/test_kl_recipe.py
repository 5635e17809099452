"""The KL forgetting check's recipe at smoke scale, on real parts: a two-task SFT base
(recipes/cpu/kl_forgetting.yaml's data.extra_tasks), GRPO with the scheduled KL pull on one
task, the drift measured on the other task's states, and eval on the task RL never saw."""

from __future__ import annotations

import json

import pytest

from vlarl.config import load_config

pytestmark = pytest.mark.slow


def test_two_task_base_then_grpo_with_scheduled_kl_then_the_other_task(tmp_path, monkeypatch):
    from vlarl.eval.drift import dataset_batches, policy_kl
    from vlarl.eval.evaluate import run_eval
    from vlarl.methods.sft import demo_dirs, run_sft
    from vlarl.policies import load_policy
    from vlarl.trainer import train

    monkeypatch.setenv("VLARL_CACHE", str(tmp_path / "cache"))
    tiny = ["--env.image_size", "32", "--env.max_episode_steps", "25", "--env.num_envs", "2",
            "--env.backend", "inline",
            "--algo.num_generations", "2", "--data.num_episodes", "1", "--data.num_workers", "1",
            "--sft.output_dir", str(tmp_path / "sft")]
    cfg = load_config("recipes/cpu/kl_forgetting.yaml", tiny)
    assert cfg.data.extra_tasks == ["PullCube-v1"] and cfg.algo.beta > 0
    sft = run_sft(cfg, max_steps=2)
    push, pull = demo_dirs(cfg)
    # dense shaping makes the group's outcomes differ, so the policy moves away from the base
    rl = load_config("recipes/cpu/kl_forgetting.yaml", tiny + [
        "--policy.path", str(sft), "--train.output_dir", str(tmp_path / "run"),
        "--train.num_updates", "2", "--train.rollout_steps", "7", "--train.eval_every", "0",
        "--algo.beta", "0.5", "--algo.beta_decay_updates", "2", "--algo.num_mini_batches", "1",
        "--algo.dynamic_sampling", "false", "--env.reward_mode", "dense",
        "--algo.shaping_coef", "1.0", "--train.learning_rate", "1e-2"])
    train(rl)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["algo/beta"] for r in rows] == pytest.approx([0.5, 0.25])  # the schedule
    assert rows[0]["algo/kl_ref"] >= 0 and rows[1]["algo/kl_ref"] > 0  # it moved, KL pulls
    policy, base = load_policy(tmp_path / "run" / "policy"), load_policy(sft)
    drift = policy_kl(policy, base, dataset_batches(pull, policy.chunk_size, rows=8))
    assert drift["n"] == 8 and drift["kl"] != 0.0  # the other task's states see the change
    ev = load_config("recipes/cpu/kl_forgetting.yaml", tiny + [
        "--env.task", "PullCube-v1", "--eval.num_episodes", "2"])
    rep = run_eval([str(sft), str(tmp_path / "run" / "policy")], ev, tmp_path / "eval")
    assert [(r["task"], r["n"]) for r in rep["results"]] == [("PullCube-v1", 2)] * 2
    assert push != pull
