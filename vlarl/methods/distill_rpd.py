"""RPD distillation: PPO on the student, through the RL trainer, with teacher labels.

Refined Policy Distillation (Jülg, Burgard & Walter 2025, arXiv:2503.05833). Data flow::

    student (fresh, or a BC/DAgger checkpoint) --TeacherLabelled--> vlarl.trainer.train
        collect: the student samples; the frozen teacher's deterministic chunk on the same
                 observation -> stored["teacher_actions"]
        algo rpd (vlarl.algorithms.rpd): PPO loss + teacher_coef * MSE(mean, teacher chunk)
    -> the trained student (the same module) -> vlarl.methods.distill's teacher-vs-student report

Nothing of the RL loop is copied: :func:`train_rpd` calls ``vlarl.trainer.train`` with a
``make_policy_fn`` that returns the wrapped student, and the run directory (metrics.jsonl,
checkpoints, config.yaml) is ``<distill.output_dir>/rl``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from vlarl.algorithms.rpd import TEACHER_KEY
from vlarl.config import Config, ConfigError
from vlarl.policies.base import Policy
from vlarl.types import ActOutput, Obs


class TeacherLabelled(Policy):
    """The student, acting as itself, plus the teacher's deterministic chunk on every
    observation it acts on in ``stored["teacher_actions"]`` (float ``[N, k, A]``).

    Only the student is a submodule: ``parameters()``, ``state_dict()``, ``train()`` and the
    optimizer see the student alone; the teacher is frozen, in eval mode, and follows
    ``.to(device)``. ``save_pretrained`` writes the plain student checkpoint.
    """

    def __init__(self, student: Policy, teacher: Policy):
        super().__init__()
        for key in ("chunk_size", "action_dim"):
            if getattr(student, key) != getattr(teacher, key):
                raise ValueError(f"student {key}={getattr(student, key)} but teacher "
                                 f"{key}={getattr(teacher, key)}; they must be equal")
        self.student = student
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule
        self.chunk_size, self.action_dim = student.chunk_size, student.action_dim

    @property
    def teacher(self) -> Policy:
        return self._teacher[0]

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        out = self.student.act(obs, deterministic=deterministic, generator=generator)
        label = self.teacher.act(obs, deterministic=True).actions
        stored = {**out.stored, TEACHER_KEY: label.to(out.actions.device, torch.float32)}
        return ActOutput(actions=out.actions, log_probs=out.log_probs, values=out.values,
                         stored=stored)

    def evaluate(self, obs: Obs, stored: dict[str, torch.Tensor]):
        return self.student.evaluate(obs, stored)

    def value(self, obs: Obs) -> torch.Tensor | None:
        return self.student.value(obs)

    def predict(self, obs: Obs) -> torch.Tensor:
        return self.student.predict(obs)

    def reference(self):
        return self.student.reference()

    def save_pretrained(self, path: str | Path) -> None:
        self.student.save_pretrained(path)

    def _apply(self, fn, *args, **kwargs):
        self.teacher._apply(fn, *args, **kwargs)  # keep the teacher on the student's device
        return super()._apply(fn, *args, **kwargs)


def check_rpd_config(cfg: Config) -> None:
    """RPD-specific checks, before any policy is loaded or env started."""
    if cfg.algo.name not in ("ppo", "rpd"):
        raise ConfigError(f"distill.method=rpd trains with algo rpd (PPO + teacher MSE); "
                          f"algo.name={cfg.algo.name!r} is not allowed (leave it ppo or rpd)")
    if not cfg.policy.value_head:
        raise ConfigError("distill.method=rpd runs PPO, which needs the student's critic: "
                          "policy.value_head must be true")
    if cfg.train.resume:
        raise ConfigError("train.resume is not supported by distill.method=rpd (its run "
                          "directory lives inside the distillation's temporary output)")
    from vlarl.algorithms import check_config

    rl = rl_config(cfg, Path("rl"), 1, 1).resolve().validate()
    check_config(rl)  # PPO's batch / minibatch divisibility, before the teacher loads


def rl_config(cfg: Config, run_dir: Path, chunk_size: int, action_dim: int) -> Config:
    """The trainer's config: algo ``rpd``, the student's policy section, run dir ``run_dir``."""
    return dataclasses.replace(
        cfg, algo=dataclasses.replace(cfg.algo, name="rpd"),
        policy=cfg.policy.to("mlp_student", chunk_size=chunk_size, action_dim=action_dim),
        train=dataclasses.replace(cfg.train, output_dir=str(run_dir), resume=False,
                                  overwrite=False))


def train_rpd(cfg: Config, teacher: Policy, student: Policy, run_dir: Path) -> dict:
    """Run ``train.num_updates`` RPD updates of ``student`` (in place) in ``run_dir``;
    return the per-update curves for the report (from the run's metrics.jsonl)."""
    from vlarl.eval.evaluate import check_compatible
    from vlarl.trainer import build_env, train

    def make_env(env_cfg):
        env = build_env(env_cfg)
        try:
            check_compatible(teacher, env, str(cfg.distill.teacher))
        except ValueError:
            env.close()
            raise
        return env

    rl_cfg = rl_config(cfg, run_dir, teacher.chunk_size, teacher.action_dim)
    wrapped = TeacherLabelled(student, teacher)
    train(rl_cfg, make_env_fn=make_env, make_policy_fn=lambda _cfg: wrapped)
    return summarize(run_dir / "metrics.jsonl")


CURVES = {"teacher_mse_rollout": "algo/teacher_mse_rollout", "teacher_mse": "algo/teacher_mse",
          "teacher_coef": "algo/teacher_coef", "rollout_success_rate": "rollout/success_rate",
          "update_s": "time/update_s"}
"""Report key -> metrics.jsonl key of the per-update curves kept in ``report.json``."""


def summarize(metrics_path: Path) -> dict:
    """Per-update curves of an RPD run plus its totals."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    out: dict = {"updates": len(rows), "env_steps": rows[-1]["train/env_steps"] if rows else 0,
                 "train_s": round(sum(r.get("time/update_s", 0.0) for r in rows), 1)}
    for name, key in CURVES.items():
        out[name] = [r.get(key, float("nan")) for r in rows]
    return out
