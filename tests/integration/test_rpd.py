"""RPD (PPO on the student + teacher-action MSE): the regularizer math, the algorithm's loss,
bad-input errors before any env starts, and real small runs (tiny token-VLA teacher, MLP
student, real ManiSkill PickCube env inline) through the RL trainer."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_env_config

from vlarl.algorithms import ALGORITHMS, UpdateContext
from vlarl.algorithms.losses import linear_decay, teacher_action_loss
from vlarl.algorithms.ppo import PPO
from vlarl.algorithms.rpd import RPD, TEACHER_KEY
from vlarl.config import AlgoConfig, Config, ConfigError, EnvConfig
from vlarl.methods.distill import run_distill
from vlarl.methods.distill_rpd import TeacherLabelled
from vlarl.policies import MLPStudentConfig, TokenVLAConfig, build_policy, load_policy
from vlarl.policies.mlp_student.modeling_mlp_student import MLPStudentPolicy
from vlarl.rollout import Batch
from vlarl.types import Obs

K, A = 4, 4


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny token VLA (random weights) saved as a checkpoint (as tests/integration/test_distill.py)."""
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    build_policy(TokenVLAConfig(chunk_size=K, action_dim=A)).save_pretrained(path)
    return path


def _env_cfg() -> EnvConfig:
    # 8-step episodes of k=4 chunks: 2 decisions per episode keep the teacher affordable
    return tiny_env_config(task="PickCube-v1", control_mode="pd_ee_delta_pos")


def _cfg(tmp_path, teacher, **algo) -> Config:
    cfg = Config()
    cfg.env = _env_cfg()
    cfg.distill.method = "rpd"
    cfg.distill.teacher = None if teacher is None else str(teacher)
    cfg.distill.output_dir = str(tmp_path / "student")
    cfg.eval.num_episodes = 1
    cfg.train.num_updates, cfg.train.rollout_steps, cfg.train.save_every = 4, 4, 4
    cfg.algo.num_mini_batches, cfg.algo.num_ppo_epochs = 2, 2
    for k, v in algo.items():
        setattr(cfg.algo, k, v)
    return cfg


def _obs(n: int, seed: int = 0) -> Obs:
    g = torch.Generator().manual_seed(seed)
    return Obs(torch.randint(0, 256, (n, 1, 32, 32, 3), dtype=torch.uint8, generator=g),
               torch.randn(n, 16, generator=g), ["push the cube"] * n)


def _student(chunk: int = K, dim: int = A) -> MLPStudentPolicy:
    torch.manual_seed(0)
    return MLPStudentPolicy(MLPStudentConfig(chunk_size=chunk, action_dim=dim))


# ----------------------------------------------------------------------------- pure math

def test_teacher_action_loss_hand_computed():
    mean = torch.tensor([[[0.0, 0.0], [1.0, 1.0]],
                         [[0.5, -0.5], [0.0, 0.0]]], requires_grad=True)  # [B=2, k=2, A=2]
    teacher = torch.zeros(2, 2, 2)
    # chunk 0: (0 + 0 + 1 + 1) / 4 = 0.5; chunk 1: (0.25 + 0.25 + 0 + 0) / 4 = 0.125
    loss = teacher_action_loss(mean, teacher)
    assert float(loss.detach()) == pytest.approx(0.3125)
    loss.backward()
    # d/dmu mean((mu - t)^2) = 2 (mu - t) / (B k A) = (mu - t) / 4
    assert torch.allclose(mean.grad, mean.detach() / 4)
    assert float(teacher_action_loss(mean, teacher, torch.tensor([True, False]))) == 0.5
    assert float(teacher_action_loss(mean, teacher)) == pytest.approx(
        float(torch.nn.functional.mse_loss(mean, teacher)))
    with pytest.raises(ValueError, match="same \\[B, k, A\\] shape"):
        teacher_action_loss(mean, torch.zeros(2, 4))


def test_linear_decay():
    assert [linear_decay(2.0, u, 4) for u in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    assert linear_decay(2.0, 99, 0) == 2.0


def test_rpd_loss_is_ppo_loss_plus_weighted_teacher_mse():
    student = _student()
    obs = _obs(6)
    out = student.act(obs, generator=torch.Generator().manual_seed(1))
    target = torch.rand(6, K, A, generator=torch.Generator().manual_seed(2)) * 2 - 1
    batch = Batch(obs, {**out.stored, TEACHER_KEY: target}, out.log_probs, out.values,
                  torch.randn(6, generator=torch.Generator().manual_seed(3)),
                  torch.randn(6, generator=torch.Generator().manual_seed(4)), torch.arange(6))
    cfg = AlgoConfig(name="rpd", teacher_coef=3.0, teacher_coef_decay_updates=4,
                     critic_warmup_updates=1)
    assert ALGORITHMS.get("rpd") is RPD
    rpd, ppo = RPD(cfg), PPO(cfg)
    want_mse = float(torch.nn.functional.mse_loss(student.predict(obs), target))
    ctx = UpdateContext()
    base, _ = ppo.loss(student, batch, ctx, 2)
    loss, parts = rpd.loss(student, batch, ctx, 2)
    assert float(parts["teacher_mse"]) == pytest.approx(want_mse, rel=1e-6)
    assert float(parts["teacher_coef"]) == 1.5  # 3.0 * (1 - 2/4)
    assert float(loss) == pytest.approx(float(base) + 1.5 * want_mse, rel=1e-6)
    # critic warm-up (update 0 < 1): the teacher term counts 0, like the actor loss
    base0, _ = ppo.loss(student, batch, ctx, 0)
    loss0, parts0 = rpd.loss(student, batch, ctx, 0)
    assert float(loss0) == pytest.approx(float(base0), rel=1e-6)
    assert float(parts0["teacher_coef"]) == 3.0
    del batch.stored[TEACHER_KEY]
    with pytest.raises(KeyError, match="vlarl distill --distill.method rpd"):
        rpd.loss(student, batch, ctx, 2)


def test_wrapper_exposes_only_the_student(teacher_dir):
    student, teacher = _student(), load_policy(teacher_dir)
    wrapped = TeacherLabelled(student, teacher)
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in student.parameters()]
    assert len(wrapped.state_dict()) == len(student.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    wrapped.train()
    assert student.training and not teacher.training
    out = wrapped.act(_obs(2))
    assert out.stored[TEACHER_KEY].shape == (2, K, A) and "raw_actions" in out.stored
    assert torch.equal(out.stored[TEACHER_KEY], teacher.act(_obs(2), deterministic=True).actions)
    with pytest.raises(ValueError, match="student chunk_size=2 but teacher chunk_size=4"):
        TeacherLabelled(_student(chunk=2), teacher)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_fails_before_env(tmp_path, teacher_dir, no_env):
    with pytest.raises(ConfigError, match="distill.teacher is required"):
        run_distill(_cfg(tmp_path, None))
    with pytest.raises(FileNotFoundError, match="no_such_teacher"):
        run_distill(_cfg(tmp_path, tmp_path / "no_such_teacher"))
    cfg = _cfg(tmp_path, teacher_dir)
    cfg.algo.name, cfg.algo.num_generations, cfg.env.num_envs = "grpo", 2, 2
    with pytest.raises(ConfigError, match="algo.name='grpo' is not allowed"):
        run_distill(cfg)
    cfg = _cfg(tmp_path, teacher_dir)
    cfg.policy.value_head = False
    with pytest.raises(ConfigError, match="policy.value_head must be true"):
        run_distill(cfg)
    with pytest.raises(ConfigError, match="algo.teacher_coef=-1"):
        run_distill(_cfg(tmp_path, teacher_dir, teacher_coef=-1.0))
    with pytest.raises(ConfigError, match="must be divisible by algo.num_mini_batches=3"):
        run_distill(_cfg(tmp_path, teacher_dir, num_mini_batches=3))
    for chunk, dim, key in ((2, A, "chunk_size=2"), (K, 7, "action_dim=7")):
        _student(chunk, dim).save_pretrained(tmp_path / f"s{chunk}{dim}")
        cfg = _cfg(tmp_path, teacher_dir)
        cfg.policy.path = str(tmp_path / f"s{chunk}{dim}")
        with pytest.raises(ValueError, match=f"{key} but the teacher .* has"):
            run_distill(cfg)
    assert not (tmp_path / "student").exists()


# ----------------------------------------------------------------------------- slow: real env

@pytest.mark.slow
def test_rollout_stores_the_teachers_deterministic_chunk(teacher_dir):
    from vlarl.envs import make_env
    from vlarl.rollout import RolloutBuffer, collect

    teacher, student = load_policy(teacher_dir), _student()
    wrapped = TeacherLabelled(student, teacher)
    env = make_env(_env_cfg())
    try:
        buf = RolloutBuffer(4, env.num_envs, K)
        collect(env, wrapped, buf, base_seed=3, update=0,
                generator=torch.Generator().manual_seed(0))
    finally:
        env.close()
    labels = buf.stored[TEACHER_KEY].flatten(0, 1)
    assert labels.shape == (4, K, A) and bool(buf.valid.all())
    for i in range(4):  # batch 1, as during collection
        again = teacher.act(buf.flat_obs(torch.tensor([i])), deterministic=True).actions
        assert torch.equal(labels[i], again[0].float())
    # the student acted: its stored sample reproduces its rollout log-probs
    obs = buf.flat_obs(torch.arange(4))
    lp, _, _ = student.evaluate(obs, {"raw_actions": buf.stored["raw_actions"].flatten(0, 1)})
    assert torch.allclose(lp, buf.log_probs.flatten(), atol=1e-4)


@pytest.mark.slow
def test_rpd_end_to_end_pulls_the_student_to_the_teacher(tmp_path, teacher_dir):
    # a large teacher weight: the MSE term dominates PPO's, so the student must approach
    # the teacher on the states it visits, update after update
    cfg = _cfg(tmp_path, teacher_dir, teacher_coef=50.0, teacher_coef_decay_updates=8)
    cfg.train.learning_rate = 3e-3
    out = run_distill(cfg)
    report = json.loads((out / "report.json").read_text())
    rpd = report["rpd"]
    assert rpd["updates"] == 4 and report["rounds"] == []
    assert rpd["teacher_coef"] == [50.0, 43.75, 37.5, 31.25]
    mse = rpd["teacher_mse_rollout"]
    assert mse[-1] < 0.5 * mse[0], mse
    assert rpd["teacher_mse"][-1] < 0.5 * rpd["teacher_mse"][0], rpd["teacher_mse"]
    rows = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert all(r["algo/optimizer_steps"] == 4 and r["rollout/decisions"] == 4 for r in rows)
    assert {"algo/policy_loss", "algo/value_loss", "algo/teacher_mse"} <= set(rows[0])
    ev = report["eval"]
    assert ev["teacher"]["n"] == ev["student"]["n"] == 1
    assert "RPD: 4 PPO updates" in (out / "report.md").read_text()
    # the student checkpoint is first-class: it loads by name and holds the trained weights
    student = load_policy(out)
    assert type(student) is MLPStudentPolicy and (student.chunk_size, student.action_dim) == (K, A)
    ref = load_policy(out / "rl" / "policy")
    obs = _obs(2)
    assert torch.equal(student.act(obs, deterministic=True).actions,
                       ref.act(obs, deterministic=True).actions)
