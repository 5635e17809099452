"""``Config``: the sections of one run, derived settings (:meth:`Config.resolve`) and the
checks (:meth:`Config.validate`, pure: it never changes the config it checks)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vlarl.config.checks import ConfigError, choice, positive
from vlarl.config.policy import DEFAULT_POLICY, PolicyConfig
from vlarl.config.sections import (
    AlgoConfig,
    DataConfig,
    DistillConfig,
    EnvConfig,
    EvalConfig,
    IreConfig,
    SFTConfig,
    TrainConfig,
)


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig.for_name(DEFAULT_POLICY)())
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ire: IreConfig = field(default_factory=IreConfig)

    def _check_extra_tasks(self) -> None:
        # task names are checked by vlarl.methods.sft.demo_dirs (the registry imports torch)
        d = self.data  # env.task listed too is skipped (eval of a recipe on its extra task)
        if len(set(d.extra_tasks)) != len(d.extra_tasks):
            raise ConfigError(f"data.extra_tasks={d.extra_tasks} repeats a task")
        if d.expert != "scripted":
            raise ConfigError(f"data.extra_tasks needs data.expert=scripted (got {d.expert!r}: "
                              "a policy expert acts on env.task only)")

    def resolve(self) -> Config:
        """Settings that follow from others, filled in before :meth:`validate` (by
        ``load_config``): a policy that reads the simulator state (privileged critic or
        student, ``env.obs_mode: state``) needs the env to return it. Returns ``self``."""
        p, e = self.policy, self.env
        if p.reads_privileged_state() or e.obs_mode == "state":
            e.privileged_state = True
        return self

    def validate(self, sections: Iterable[str] | None = None) -> Config:
        """Check every value that can be checked without importing ManiSkill or torch.

        ``sections``: only these sections (and the checks between two of them) - a command
        validates what it reads (``vlarl diagnose`` never refuses a GRPO group size); None
        checks all. Values legal one by one but impossible together are refused here,
        naming both keys.
        """
        read = set(sections) if sections is not None else {
            "env", "policy", "algo", "train", "data", "sft", "eval", "distill", "ire"}
        e, p = self.env, self.policy
        if "env" in read:
            self._validate_env()
        if "policy" in read:
            self._validate_policy()
        if {"env", "policy"} <= read and p.chunk_size > e.max_episode_steps:
            raise ConfigError(f"policy.chunk_size={p.chunk_size} is larger than "
                              f"env.max_episode_steps={e.max_episode_steps}: one chunk would "
                              "outlast the episode")
        t = self.train
        if {"env", "train"} <= read and t.pipeline_groups > 1:
            if e.num_envs % t.pipeline_groups:
                raise ConfigError(f"train.pipeline_groups={t.pipeline_groups} must divide "
                                  f"env.num_envs={e.num_envs}")
            if e.backend in ("inline", "gpu"):
                raise ConfigError(f"train.pipeline_groups={t.pipeline_groups} needs "
                                  f"env.backend=cpu (worker processes); env.backend={e.backend!r} "
                                  "steps all envs at once")
        if "algo" in read:
            self._validate_algo()
        if "train" in read:
            self._validate_train()
        if "eval" in read:
            positive("eval.num_episodes", self.eval.num_episodes)
            if self.eval.temperature is not None:
                positive("eval.temperature", self.eval.temperature)
                if self.eval.deterministic:
                    raise ConfigError(f"eval.temperature={self.eval.temperature} needs "
                                      "eval.deterministic=false (a greedy evaluation samples nothing)")
        if "sft" in read:
            positive("sft.batch_size", self.sft.batch_size)
            positive("sft.state_noise", self.sft.state_noise, zero_ok=True)
            self._check_grounding()
        if "data" in read:
            positive("data.num_episodes", self.data.num_episodes)
            if not str(self.data.expert).strip():
                raise ConfigError("data.expert='' is not allowed; use 'scripted' or a policy directory")
            if self.data.extra_tasks:
                self._check_extra_tasks()
        if "distill" in read:
            choice("distill.method", self.distill.method, {"bc", "dagger", "rpd"})
        if "ire" in read:
            self._validate_ire()
        return self

    def _check_grounding(self) -> None:
        s = self.sft
        positive("sft.grounding_scenes", s.grounding_scenes, zero_ok=True)
        if not s.grounding_scenes:
            return
        positive("sft.grounding_steps", s.grounding_steps)
        positive("sft.grounding_weight", s.grounding_weight, zero_ok=True)

    def check_grounding_run(self) -> None:
        """What an SFT run with grounding pre-training needs of the other sections (checked
        by ``run_sft`` before any demo or model: other commands carry the sft section too,
        e.g. the quickstart's distillation of an ``mlp_student``)."""
        if not self.sft.grounding_scenes:
            return
        choice("policy.name (with sft.grounding_scenes > 0)", self.policy.name,
               {"token_vla", "flow_vla"})
        if self.data.extra_tasks:
            raise ConfigError("sft.grounding_scenes > 0 grounds one task; data.extra_tasks="
                              f"{self.data.extra_tasks} is not allowed with it (set "
                              "sft.grounding_scenes 0)")
        if self.env.obs_mode != "rgb":
            raise ConfigError(f"sft.grounding_scenes > 0 needs pictures: env.obs_mode="
                              f"{self.env.obs_mode!r} is not allowed with it; choose 'rgb'")

    def _validate_env(self) -> None:
        e = self.env
        positive("env.num_envs", e.num_envs)
        positive("env.image_size", e.image_size)
        positive("env.max_episode_steps", e.max_episode_steps)
        choice("env.backend", e.backend, {"auto", "cpu", "gpu", "inline"})
        choice("env.reward_mode", e.reward_mode, {"sparse", "dense", "normalized_dense"})
        choice("env.control_mode", e.control_mode,
                {"pd_ee_delta_pose", "pd_ee_delta_pos", "pd_joint_delta_pos", "pd_joint_pos"})
        choice("env.obs_mode", e.obs_mode, {"rgb", "state"})

    def _validate_policy(self) -> None:
        e, p = self.env, self.policy
        if type(p) is not PolicyConfig.for_name(p.name):
            raise ConfigError(f"policy.name={p.name!r} but the policy section is a "
                              f"{type(p).__name__}: set policy.name through load_config / "
                              "set_field, or build PolicyConfig.for_name(name)")
        p.check()
        if (p.reads_privileged_state() or e.obs_mode == "state") and not e.privileged_state:
            raise ConfigError("a privileged critic or student (policy.critic_input / "
                              "policy.student_input = privileged) and env.obs_mode=state read the "
                              "simulator state: env.privileged_state must be true (load_config "
                              "sets it; Config.resolve() does too)")

    def _validate_algo(self) -> None:
        # algo.name and what an algorithm needs of the other sections are the algorithm's own
        # checks (vlarl.algorithms.check_config, run by the trainer's preflight): they need
        # the registry, which imports torch, and this module stays import-light
        a = self.algo
        choice("algo.loss_type", a.loss_type, {"dapo", "grpo", "dr_grpo"})
        choice("algo.scale_rewards", a.scale_rewards, {"group", "batch", "none"})
        for key in ("gamma", "gae_lambda"):
            v = getattr(a, key)
            if not (0.0 <= v <= 1.0):
                raise ConfigError(f"algo.{key}={v} must be in [0, 1]")
        positive("algo.epsilon", a.epsilon)
        if a.epsilon_high is not None:
            positive("algo.epsilon_high", a.epsilon_high)
        positive("algo.num_ppo_epochs", a.num_ppo_epochs)
        positive("algo.num_mini_batches", a.num_mini_batches)
        positive("algo.gradient_accumulation_steps", a.gradient_accumulation_steps)
        positive("algo.max_grad_norm", a.max_grad_norm)
        positive("algo.beta", a.beta, zero_ok=True)
        positive("algo.beta_decay_updates", a.beta_decay_updates, zero_ok=True)
        positive("algo.teacher_coef", a.teacher_coef, zero_ok=True)
        positive("algo.teacher_coef_decay_updates", a.teacher_coef_decay_updates, zero_ok=True)

    def _validate_train(self) -> None:
        t = self.train
        positive("train.num_updates", t.num_updates)
        positive("train.rollout_steps", t.rollout_steps)
        positive("train.pipeline_groups", t.pipeline_groups)
        positive("train.rollouts_per_update", t.rollouts_per_update)
        positive("train.learning_rate", t.learning_rate)
        positive("train.save_every", t.save_every)
        positive("train.keep_last", t.keep_last)
        choice("train.lr_scheduler_type", t.lr_scheduler_type,
                {"constant", "linear", "cosine", "constant_with_warmup", "cosine_with_restarts",
                 "polynomial", "inverse_sqrt"})
        choice("train.report_to", t.report_to, {"none", "wandb"})
        choice("train.wandb_mode", t.wandb_mode, {"online", "offline", "disabled"})
        if t.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision='fp16' is not supported (a step skipped by "
                              "the non-finite guard would leave fp16's loss scaler stuck); use "
                              "'bf16' (GPUs since Ampere, and CPUs) or 'no'")
        choice("train.mixed_precision", t.mixed_precision, {"no", "bf16"})

    def _validate_ire(self) -> None:
        ire = self.ire
        for key, low in (("rounds", 1), ("rl_updates", 0), ("sft_steps", 0)):
            if getattr(ire, key) < low:
                raise ConfigError(f"ire.{key}={getattr(ire, key)!r} must be >= {low}")
        if ire.rl_updates == 0 and ire.sft_steps == 0:
            raise ConfigError("ire.rl_updates=0 and ire.sft_steps=0 would do nothing; the SFT-only "
                              "control arm (rl_updates 0) needs ire.sft_steps >= 1")
        if not str(ire.output_dir).strip():
            raise ConfigError("ire.output_dir must be a non-empty path")
