"""A newcomer's path: commands say what happened and validate only what they read.
`vlarl expert` measures a shipped task's expert (real envs); `vlarl train` explains skipped
updates; `vlarl diagnose` on one env is not refused over the GRPO section it never reads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vlarl.cli import SECTIONS, _load
from vlarl.config import ConfigError, load_config


def test_diagnose_and_eval_validate_only_the_sections_they_read():
    from vlarl.algorithms import check_config

    rest = ["--env.num_envs", "1", "--algo.name", "grpo", "--algo.num_generations", "4"]
    with pytest.raises(ConfigError, match="divisible by algo.num_generations"):
        check_config(load_config(None, rest))  # a training run reads algo (preflight)
    for cmd in ("diagnose", "eval", "demo", "expert"):
        assert "algo" not in SECTIONS[cmd]
        cfg = _load(argparse.Namespace(command=cmd, config=None), rest)
        assert cfg.env.num_envs == 1
    with pytest.raises(ConfigError, match="num_generations=1 must be >= 2"):
        check_config(load_config(None, ["--algo.name", "grpo", "--algo.num_generations", "1",
                                        "--env.num_envs", "2"]))
    _load(argparse.Namespace(command="diagnose", config=None),
          ["--algo.name", "grpo", "--algo.num_generations", "1"])


def test_chunk_longer_than_the_episode_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"policy.chunk_size=8.*env.max_episode_steps=5"):
        load_config(None, ["--policy.chunk_size", "8", "--env.max_episode_steps", "5"])


def test_skipped_updates_are_explained_once_then_counted(capsys):
    from vlarl.runtime.run_report import RunReport, skip_advice

    skipped = {"algo/skipped_update": 1.0, "algo/groups_kept": 0.0, "rollout/success_rate": 0.0}
    assert skip_advice({"algo/optimizer_steps": 4.0}) is None
    assert "num_generations" in skip_advice(skipped)
    assert "progress term" in skip_advice(skipped)
    won = skip_advice({**skipped, "rollout/success_rate": 1.0})  # groups of successes only
    assert "every rollout succeeded" in won and "progress term" not in won
    assert "rollout steps" in skip_advice({"algo/skipped_update": 1.0, "algo/train_samples": 3})
    report = RunReport()
    said = [report.add(u, skipped) for u in range(1, 31)]
    assert said[0] is not None and "update 1 skipped (1 of 1 so far)" in said[0]
    assert sum(s is not None for s in said) == 2  # the first, then after 25 more updates
    err = capsys.readouterr().err
    assert "algo/groups_kept 0" in err and "update 26 skipped (26 of 26" in err
    summary = report.summary(Path("/r"), 1234)
    assert "30 updates, 1234 env steps" in summary and "skipped updates: 30" in summary
    assert "/r/policy" in summary and "peak RSS" not in summary
    mem = {"main": 1900.4, "children": 3200.0, "num_children": 8, "largest_child": 410.2,
           "tree": 5100.4}
    assert ("peak RSS: main process 1900 MB, 8 child processes 3200 MB (largest 410), tree "
            "5100 MB") in report.summary(Path("/r"), 1234, mem)
    mem["tree_pss_now"] = 4321.0
    assert "tree 5100 MB; tree PSS at the end 4321 MB (shared pages counted once)" in \
        report.summary(Path("/r"), 1234, mem)


def test_expert_command_measures_a_shipped_task():
    """`vlarl expert`'s figures on PushCube-v1 (real ManiSkill, no rendering): every seed
    solved, ~13 steps each, a Wilson interval that holds the rate."""
    from vlarl.tools.demo import run_expert

    cfg = load_config(None, ["--env.task", "PushCube-v1", "--env.num_envs", "1",
                             "--env.backend", "inline", "--eval.num_episodes", "4",
                             "--eval.splits", "train", "wide_pose"], sections=["env", "eval"])
    rows = run_expert(cfg)
    for split in ("train", "wide_pose"):
        r = rows[split]
        assert r["n"] == 4 and r["successes"] == 4
        assert r["ci_low"] == pytest.approx(0.510, abs=1e-3) and r["ci_high"] == 1.0
        assert 8 <= r["mean_length"] <= 25


def test_demo_runs_until_the_episodes_end(capsys):
    from vlarl.tools.demo import run_demo

    cfg = load_config(None, ["--env.task", "PushCube-v1", "--env.num_envs", "1",
                             "--env.backend", "inline", "--env.max_episode_steps", "40"],
                      sections=["env"])
    summary = run_demo(cfg)
    assert summary["episodes"] == 1 and summary["successes"] == 1
    assert summary["steps"] < 40  # stopped when the episode ended, not at a fixed count
    assert "1 episodes ended, 1 successful" in capsys.readouterr().out
