"""Distillation: real tiny token-VLA teacher, real MLP student, real ManiSkill env (inline).

PickCube with ``pd_ee_delta_pos`` (A=4), chunk k=4, 32 px images and 8-step episodes:
2 decisions per episode keep the teacher's autoregressive decoding affordable on CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_env_config

from vlarl.config import Config, ConfigError
from vlarl.data import collate_chunks
from vlarl.methods.distill import SEED0, DistillDataset, run_distill
from vlarl.policies import MLPStudentConfig, TokenVLAConfig, build_policy, load_policy
from vlarl.types import Obs

K, A = 4, 4



@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny token VLA (random weights) saved as a checkpoint."""
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    build_policy(TokenVLAConfig(chunk_size=K, action_dim=A)).save_pretrained(path)
    return path


def _cfg(tmp_path, teacher, **distill) -> Config:
    cfg = Config()
    cfg.env = tiny_env_config(task="PickCube-v1", control_mode="pd_ee_delta_pos")
    cfg.distill.teacher = None if teacher is None else str(teacher)
    cfg.distill.output_dir = str(tmp_path / "student")
    cfg.eval.num_episodes = 1
    for k, v in distill.items():
        setattr(cfg.distill, k, v)
    return cfg


# ----------------------------------------------------------------------------- fast

def test_missing_teacher_fails_before_env(tmp_path, no_env):
    with pytest.raises(ConfigError, match="distill.teacher is required"):
        run_distill(_cfg(tmp_path, None))
    with pytest.raises(FileNotFoundError, match="no_such_teacher"):
        run_distill(_cfg(tmp_path, tmp_path / "no_such_teacher"))
    with pytest.raises(ConfigError, match="overlap eval seeds"):
        cfg = _cfg(tmp_path, tmp_path)
        cfg.eval.seed = SEED0
        run_distill(cfg)
    with pytest.raises(ValueError, match="beta=2"):
        run_distill(_cfg(tmp_path, tmp_path), beta=2)
    assert not (tmp_path / "student").exists()


def test_chunk_mismatch_fails_before_env(tmp_path, teacher_dir, no_env):
    from vlarl.policies.mlp_student.modeling_mlp_student import MLPStudentPolicy

    MLPStudentPolicy(MLPStudentConfig(chunk_size=2, action_dim=A)).save_pretrained(tmp_path / "s2")
    cfg = _cfg(tmp_path, teacher_dir)
    cfg.policy.path = str(tmp_path / "s2")
    with pytest.raises(ValueError, match="chunk_size=2 but the teacher .* has chunk_size=4"):
        run_distill(cfg)
    assert not (tmp_path / "student").exists()


def test_dataset_items_collate_like_demos():
    data = DistillDataset()
    obs = Obs(torch.zeros(3, 1, 8, 8, 3, dtype=torch.uint8), torch.ones(3, 16), ["a", "b", "c"])
    data.extend(obs, torch.full((3, K, A), 0.5))
    data.extend(obs.index([0]), torch.zeros(1, K, A))
    assert len(data) == 4
    batch_obs, actions = collate_chunks([data[i] for i in range(4)])
    assert batch_obs.images.shape == (4, 1, 8, 8, 3) and actions.shape == (4, K, A)
    assert batch_obs.instructions == ["a", "b", "c", "a"] and float(actions[3].abs().sum()) == 0
    with pytest.raises(ValueError, match="3 observations but 2 action chunks"):
        data.extend(obs, torch.zeros(2, K, A))


# ----------------------------------------------------------------------------- slow: end to end

@pytest.mark.slow
def test_dagger_end_to_end(tmp_path, teacher_dir):
    cfg = _cfg(tmp_path, teacher_dir, method="dagger", rounds=2, episodes_per_round=1,
               epochs=40, batch_size=16, learning_rate=3e-3)
    out = run_distill(cfg)
    report = json.loads((out / "report.json").read_text())
    r0, r1 = report["rounds"]
    # Round 0 is BC on the teacher's own roll-out: 1 episode of 8 steps = 2 chunks.
    assert (r0["actor"], r1["actor"]) == ("teacher", "student")
    assert r0["new_samples"] == 2 and r0["dataset_size"] == 2
    assert r0["mse_after"] < 0.2 * r0["mse_before"], r0
    # DAgger aggregates: the student's visited states, teacher-labelled, are added.
    assert r1["new_samples"] == 2 and r1["dataset_size"] == 4
    assert r1["mse_after"] < 0.2 * r0["mse_before"], r1
    ev = report["eval"]
    assert ev["teacher"]["n"] == ev["student"]["n"] == 1
    assert [e["seed"] for e in ev["student"]["episodes"]] == report["eval_seeds"] == [1_000_000]
    assert 0.0 <= ev["student"]["ci_low"] <= ev["student"]["success_rate"] <= ev["student"]["ci_high"]
    speed = report["actions_per_s_batch1"]
    assert speed["speedup"] > 5, speed  # measured ~100-400x; > 10x is the target
    assert 100_000 < report["parameters"]["student"] < 1_000_000
    assert report["peak_rss_mb"] > 100
    assert "| student |" in (out / "report.md").read_text()
    # The checkpoint loads by name (as `vlarl eval` does) and acts like the trained student.
    student = load_policy(out)
    assert (student.chunk_size, student.action_dim) == (K, A)
    obs = Obs(torch.zeros(1, 1, 32, 32, 3, dtype=torch.uint8), torch.zeros(1, 16), ["pick"])
    a = student.act(obs, deterministic=True).actions
    assert a.shape == (1, K, A) and float(a.abs().max()) <= 1.0
