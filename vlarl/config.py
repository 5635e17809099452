"""Typed run configuration: env + policy + algo + train + eval + data/sft + distill.

Recipes are YAML files of these dataclasses (one top-level key per section); any field
can be overridden on the command line as ``--section.field value`` (e.g.
``--algo.epsilon 0.1``). All validation lives here, and every error names the key and
the allowed values. Nothing heavy is imported, so a bad config fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is allowed."""


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {sorted(allowed)}")


def _positive(key: str, value: float, zero_ok: bool = False) -> None:
    if value is None or (value < 0 if zero_ok else value <= 0):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if zero_ok else '> 0'}")


@dataclass
class EnvConfig:
    task: str = "PickCube-v1"
    """ManiSkill task id, one of the registered tasks (``vlarl.envs.TASKS``; in a task with
    target colours the instruction names the target cube). New tasks: docs/adding_a_task.md."""
    split: str = "train"
    """Named variant of the task: ``train`` (in-distribution) or an OOD split (``vlarl.envs.SPLITS``)."""
    num_envs: int = 2
    """Parallel envs N (CPU: one worker process each; GPU: one batched ManiSkill env)."""
    backend: Literal["auto", "cpu", "gpu", "inline"] = "auto"
    """``gpu``: physx_cuda batched env; ``cpu``: worker processes; ``inline``: the batched
    ManiSkill env in this process (num_envs=1 on CPU); ``auto``: gpu if CUDA else cpu."""
    image_size: int = 64
    """Square camera resolution in pixels."""
    control_mode: str = "pd_ee_delta_pose"
    """ManiSkill controller (``pd_ee_delta_pose``, ``pd_ee_delta_pos``, ``pd_joint_delta_pos``)."""
    reward_mode: Literal["sparse", "dense", "normalized_dense"] = "sparse"
    """``sparse``: 1 on success; ``dense``/``normalized_dense``: ManiSkill's shaped rewards."""
    max_episode_steps: int = 50
    """Control steps before an episode is truncated."""
    terminate_on_success: bool = True
    """End the episode (terminated=True) at the first success."""
    render_every_step: bool = False
    """Render a frame at every control step (benchmark baseline); default renders only at decisions."""
    seed: int = 0
    """Base seed of the episode stream; env i of reset r gets a seed derived from it."""
    reset_each_env: bool = False
    """GPU backend: reset every env with a distinct seed alone (one partial reset each), so
    seed s gives the same initial state in every batch position and for every ``num_envs``
    (a batched ``physx_cuda`` reset draws the whole batch from its first seed). ``vlarl eval``
    switches it on, so paired comparisons hold on GPU; it costs one render per env and reset.
    CPU workers hold one env each and are exact already."""
    privileged_state: bool = False
    """Also return the simulator's full state (``Obs.privileged``: ManiSkill's ``get_state()``
    - every actor's pose and velocity, the robot's root pose, qpos, qvel - plus the episode's
    elapsed-time fraction). For an asymmetric critic (``policy.critic_input: privileged``) or a
    state-based expert; switched on automatically when the policy reads it."""
    obs_mode: Literal["rgb", "state"] = "rgb"
    """``rgb``: camera images (the VLA's input); ``state``: no camera and no rendering (fast
    state-only RL experts, RLDG): images are empty ``[N, 0, H, W, 3]``, ``Obs.state`` is
    ManiSkill's state observation (agent + task extras, object poses included) and
    privileged state is on."""


@dataclass
class PolicyConfig:
    name: str = "token_vla"
    """Registered policy (``vlarl.policies.POLICIES``): ``token_vla``, ``flow_vla``, ``mlp_student``."""
    path: str | None = None
    """Checkpoint directory or hub id to load with ``from_pretrained``; None builds ``tiny``."""
    tiny: str = "paligemma"
    """Tiny offline architecture when ``path`` is None: ``paligemma``, ``idefics3`` (SmolVLM's
    architecture) or ``llava`` (token_vla); ``pi0`` (flow_vla)."""
    chunk_size: int = 4
    """Actions k emitted per decision (one image every k control steps)."""
    action_dim: int = 7
    """Action dimension A; must match the env's action space."""
    action_bins: int = 256
    """Discrete bins per action dimension (token VLAs)."""
    action_low: float = -1.0
    """Lower clip of each action dimension before binning."""
    action_high: float = 1.0
    """Upper clip of each action dimension before binning."""
    use_state: bool = True
    """Feed proprioceptive state to the policy."""
    state_range: Literal["demos", "fixed"] = "demos"
    """How SFT sets the range the state is binned / normalised on: ``demos`` = each
    dimension's range in the demonstrations (+10 %), written to ``state_low`` /
    ``state_high``; ``fixed`` = [-4, 4] on every dimension, the same for every task and
    every state size (no per-dimension lists)."""
    state_low: list[float] | None = None
    """Per-dimension lower end of the state range used to bin / normalise it (SFT sets it
    from the demonstrations, like LeRobot's normalisation stats); None: -4 for every dim."""
    state_high: list[float] | None = None
    """Per-dimension upper end of the state range (see ``state_low``); None: +4."""
    temperature: float = 1.0
    """Sampling temperature during rollouts (TRL's name)."""
    num_inference_steps: int = 4
    """Denoising steps of flow policies."""
    noise_level: float = 0.3
    """Std of the noise injected into each flow denoising step (Flow-Noise / ReinFlow)."""
    use_lora: bool = True
    """Train LoRA adapters (peft) instead of the full backbone."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's layer activations in backward (transformers'
    ``gradient_checkpointing_enable``, non-reentrant): activation memory of the update falls
    from all layers to one layer's inputs (docs/gpu.md, memory plan), at ~1 extra forward."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps rollout and update log-probs identical)."""
    lora_target_modules: str = "all-linear"
    """peft target modules: ``all-linear`` or a comma-separated list of module names."""
    lora_lm_head: bool = False
    """Token VLAs: also LoRA-adapt the output layer (``lm_head``, the action tokens' logits),
    which peft's ``all-linear`` leaves out. Frozen, it is tied to the input embeddings and
    bounds how far RL can move the action distribution (docs/ppo.md, "the frozen output
    layer"). A tied output layer gets its own weight before adapters are merged."""
    value_head: bool = True
    """Add a value head on pooled backbone features (PPO's critic)."""
    critic_input: Literal["features", "privileged"] = "features"
    """What the value head reads: ``features`` = pooled backbone features (RL4VLA's shared
    critic); ``privileged`` = the simulator state ``Obs.privileged`` (asymmetric actor-critic:
    the actor still sees only images + proprioception; needs ``env.privileged_state``, which
    is switched on for it)."""
    privileged_dim: int = 128
    """Width the privileged state is zero-padded to for ``critic_input: privileged`` and
    ``student_input: privileged`` (PushCube / PickCube: 71 values); a larger state is refused."""
    student_input: Literal["full", "privileged"] = "full"
    """mlp_student's input: ``full`` = camera images + hashed instruction + proprioception (a
    student of a VLA); ``privileged`` = only the simulator state ``Obs.privileged``,
    zero-padded to ``privileged_dim`` (a state-based RL expert, RLDG: images and words are
    ignored, the critic reads the same state; needs ``env.privileged_state``, which is
    switched on for it, and trains fastest with ``env.obs_mode: state``)."""
    detach_value_features: bool = False
    """Feed the value head detached backbone features, so the value loss does not move the
    actor's adapters (token_vla; default False = the shared backbone of RL4VLA)."""
    decoding: Literal["autoregressive", "parallel"] = "autoregressive"
    """token_vla: ``autoregressive`` feeds each sampled action token back (k*A sequential
    forwards per decision, KV cache); ``parallel`` feeds k*A-1 placeholder tokens instead and
    predicts the whole chunk in one forward (OpenVLA-OFT's parallel decoding; the chunk's
    tokens are then independent given the prompt). Fixed at SFT: a checkpoint keeps its mode."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype of the backbone (bf16 on GPU)."""
    trust_remote_code: bool = False
    """Pass to ``from_pretrained`` (OpenVLA-format checkpoints need it)."""
    action_token_layout: Literal["vlarl", "openvla"] = "vlarl"
    """token_vla's action-token ids: ``vlarl`` = bin ``b`` of ``action_bins`` equal-width bins
    is id ``V - action_bins + b`` (V = output-embedding rows, ascending); ``openvla`` =
    OpenVLA's ActionTokenizer: ``np.digitize`` on ``action_bins`` uniform edges (so
    ``action_bins - 1`` bins), id ``tokenizer.vocab_size - digitized`` (descending, below the
    tokenizer's base vocabulary size). Use ``openvla`` for OpenVLA checkpoints."""
    prompt_template: str = "What action should the robot take to {instruction}?"
    """token_vla prompt after the image placeholders; ``{instruction}`` is the lower-cased task.
    OpenVLA's: ``"In: What action should the robot take to {instruction}?\\nOut:"``."""


@dataclass
class AlgoConfig:
    name: str = "ppo"
    """Registered algorithm: ``ppo``, ``grpo``, ``rloo`` or ``rpd`` (PPO + teacher MSE; run it
    through ``vlarl distill --distill.method rpd``, which supplies the teacher labels)."""
    gamma: float = 0.99
    """Discount per decision (chunk)."""
    gae_lambda: float = 0.95
    """GAE lambda (PPO)."""
    epsilon: float = 0.2
    """Lower clip range of the ratio (TRL's name; PPO's clip_coef)."""
    epsilon_high: float | None = None
    """Upper clip range ("clip-higher", DAPO); None uses ``epsilon``."""
    cliprange_value: float | None = None
    """Clip range of the value loss (TRL's name); None: plain MSE. The clip bounds each
    update's value change to +-cliprange_value in return units, so with unnormalised
    returns (dense rewards sum to ~20 per episode here) the critic lags the returns for
    tens of updates (measured: explained variance ~0 for 40 updates at 0.2);
    Andrychowicz et al. 2021 also found value clipping does not help."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    beta: float = 0.0
    """KL coefficient to the reference policy (adapters disabled), TRL's name."""
    beta_decay_updates: int = 0
    """``beta`` falls linearly to 0 over this many updates (0: constant). A KL pull to the
    base that is strong early and released later (FDPP-style scheduled regularisation)."""
    target_kl: float | None = None
    """Stop the update epochs early when the approximate KL exceeds this."""
    num_ppo_epochs: int = 2
    """Passes over each rollout batch (TRL's name)."""
    num_mini_batches: int = 2
    """Minibatches per epoch (TRL's name)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step inside a minibatch."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (PPO)."""
    critic_warmup_updates: int = 0
    """First updates train only the value head."""
    num_generations: int = 4
    """Group size G for GRPO/RLOO (TRL's name): rollouts from one initial state."""
    dynamic_sampling: bool = True
    """GRPO: drop groups whose rollouts all succeed or all fail (DAPO / SimpleVLA-RL)."""
    shaping_coef: float = 0.0
    """GRPO: weight of the env's dense return added to the 0/1 outcome reward."""
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = "dapo"
    """GRPO/RLOO loss aggregation, TRL's ``GRPOConfig.loss_type`` with an episode as the
    completion and a decision (chunk) as its token: ``dapo`` = mean over every decision of the
    global batch; ``grpo`` = mean over episodes of each episode's decision mean (a short
    episode's decisions weigh more); ``dr_grpo`` = sum over decisions / (episodes x
    ``train.rollout_steps``), no length normalisation (Liu et al. 2025, Dr. GRPO). docs/grpo.md."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """GRPO advantage scaling, TRL's ``GRPOConfig.scale_rewards``: divide ``r - group mean`` by
    the group's std (``group``), by the std of all outcomes of the update (``batch``), or not at
    all (``none``, Dr. GRPO). RLOO never scales."""
    max_nan_strikes: int = 3
    """Non-finite losses/gradients tolerated (step skipped) before the run stops."""
    teacher_coef: float = 1.0
    """RPD: weight of ``MSE(student action mean, teacher action)`` added to the PPO loss."""
    teacher_coef_decay_updates: int = 0
    """RPD: ``teacher_coef`` falls linearly to 0 over this many updates (0: constant)."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    """Run directory: checkpoints, metrics.jsonl, config.yaml."""
    num_updates: int = 10
    """Policy updates (each = one rollout + optimisation)."""
    rollout_steps: int = 8
    """Decisions per env per update: batch = num_envs * rollout_steps chunks."""
    learning_rate: float = 1e-4
    """Peak learning rate of adapters / heads."""
    value_learning_rate: float | None = None
    """Learning rate of the value head; None uses ``learning_rate``."""
    lr_scheduler_type: str = "constant"
    """transformers scheduler name: ``constant``, ``linear``, ``cosine``, ``constant_with_warmup``."""
    warmup_steps: int = 0
    """Scheduler warm-up in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 1
    """Seed of torch / numpy / python RNGs and of the env stream."""
    save_every: int = 5
    """Checkpoint every K updates (and at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are pruned only after a new one is complete."""
    eval_every: int = 0
    """Evaluate every K updates on ``eval_episodes`` fixed seeds (0: never)."""
    eval_episodes: int = 16
    """Episodes of the in-training evaluation."""
    report_to: Literal["none", "wandb"] = "none"
    """Logger besides the local metrics.jsonl."""
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    """wandb mode; ``offline`` never touches the network."""
    wandb_project: str = "vlarl"
    """wandb project."""
    resume: bool = False
    """Continue from the latest good checkpoint in ``output_dir``."""
    overwrite: bool = False
    """Delete an existing ``output_dir`` first."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """accelerate mixed precision: ``bf16`` autocasts rollout (act) and update (evaluate) alike,
    the value head stays fp32. fp16 is refused: its loss scaler needs ``scaler.update()`` after
    a skipped step, which the non-finite guard of the update would skip."""


@dataclass
class DataConfig:
    dataset_dir: str = "~/.cache/vlarl/datasets/default"
    """Where demonstrations are written / read (HF datasets format)."""
    num_episodes: int = 100
    """Successful expert episodes to collect."""
    num_workers: int = 2
    """Collection worker processes."""
    seed: int = 10_000
    """First seed of the demonstration episodes (disjoint from eval seeds)."""
    expert: str = "scripted"
    """Who acts during ``vlarl collect``: ``scripted`` (the state-machine experts of
    ``vlarl.envs.experts``) or a policy directory (e.g. a state-based RL expert's
    ``<run>/policy``, RLDG), run with deterministic actions; only its successful episodes
    are written. The directory's content hash is part of the dataset's cache key."""
    extra_tasks: list[str] = field(default_factory=list)
    """More tasks for a multi-task SFT base: ``vlarl sft`` also collects ``num_episodes``
    scripted demos of each (same env settings and seeds, cached by key under
    ``<cache>/datasets``) and trains on all of them; the instruction tells the tasks apart.
    Used by the KL forgetting check (``docs/kl.md``). Empty: ``env.task`` only (which is
    never collected twice if listed here too)."""


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    """Where the SFT checkpoint (a ``from_pretrained`` directory) is written."""
    num_epochs: float = 10.0
    """Passes over the demonstrations."""
    batch_size: int = 32
    """Per-device batch size (chunks)."""
    learning_rate: float = 3e-4
    """Peak learning rate."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    warmup_ratio: float = 0.05
    """Fraction of steps used for warm-up."""
    full_finetune: bool = True
    """Train all weights (True) or LoRA adapters only (False)."""
    seed: int = 0
    """Training seed."""


@dataclass
class EvalConfig:
    num_episodes: int = 100
    """Episodes per (checkpoint, split); the same seeds for every checkpoint."""
    seed: int = 1_000_000
    """First evaluation seed (disjoint from training and demonstration seeds)."""
    splits: list[str] = field(default_factory=lambda: ["train"])
    """Splits to evaluate."""
    deterministic: bool = True
    """Greedy / mean actions instead of sampling."""
    video_episodes: int = 0
    """Write mp4 videos of the first K episodes."""
    out: str | None = None
    """Report directory (JSON, markdown, plot); None: <checkpoint>/eval."""


@dataclass
class DistillConfig:
    method: Literal["bc", "dagger", "rpd"] = "dagger"
    """``bc`` on teacher rollouts, ``dagger`` (student acts, teacher labels) or ``rpd`` (PPO on
    the student + ``algo.teacher_coef`` x MSE to the teacher; ``train.*`` / ``algo.*`` apply)."""
    teacher: str | None = None
    """Teacher checkpoint directory."""
    output_dir: str = "runs/distill"
    """Where the student checkpoint is written."""
    rounds: int = 3
    """DAgger rounds (BC uses one)."""
    episodes_per_round: int = 32
    """Episodes collected per round."""
    epochs: int = 20
    """Student training epochs per round."""
    learning_rate: float = 1e-3
    """Student learning rate."""
    batch_size: int = 64
    """Student batch size."""


@dataclass
class IreConfig:
    output_dir: str = "runs/ire"
    """Run directory of ``vlarl ire``: ``round_<r>/{rl,successes,sft}``, ``policy``, ``summary.json``."""
    rounds: int = 3
    """iRe-VLA iterations, each an RL phase then an SFT phase."""
    rl_updates: int = 100
    """RL updates per round (LoRA, backbone frozen; ``algo.*`` / ``train.*`` apply, except
    ``train.num_updates``, which this replaces). rounds x rl_updates = the plain RL run's
    ``train.num_updates`` gives the comparison at (nearly) equal env steps. 0: the SFT-only
    control arm (the same SFT phases on the demonstrations alone, no env; needs policy.path)."""
    sft_steps: int = 200
    """Optimizer steps of each SFT phase (``sft.*`` apply; batch ``sft.batch_size``) on the
    demonstrations + every successful RL episode so far; 0 only merges the adapters."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
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

    def validate(self, sections: Iterable[str] | None = None) -> Config:
        """Check every value that can be checked without importing ManiSkill or torch.

        ``sections``: only these sections (and the checks between two of them) - a command
        validates what it reads (``vlarl diagnose`` never refuses a GRPO group size); None
        checks all. Values legal one by one but impossible together are refused here,
        naming both keys.
        """
        read = set(sections) if sections is not None else {
            "env", "policy", "algo", "train", "data", "sft", "eval", "distill", "ire"}
        e, p, a, t = self.env, self.policy, self.algo, self.train
        if "env" in read:
            self._validate_env()
        if "policy" in read:
            self._validate_policy()
        if {"env", "policy"} <= read and p.chunk_size > e.max_episode_steps:
            raise ConfigError(f"policy.chunk_size={p.chunk_size} is larger than "
                              f"env.max_episode_steps={e.max_episode_steps}: one chunk would "
                              "outlast the episode")
        if "algo" in read:
            self._validate_algo()
            if a.name in ("grpo", "rloo") and "env" in read and e.num_envs % a.num_generations:
                raise ConfigError(f"env.num_envs={e.num_envs} must be divisible by "
                                  f"algo.num_generations={a.num_generations}")
        if "train" in read:
            self._validate_train()
        if {"env", "algo", "train"} <= read:
            batch = e.num_envs * t.rollout_steps
            if a.name in ("ppo", "rpd") and batch % a.num_mini_batches:
                raise ConfigError(f"env.num_envs*train.rollout_steps={batch} must be divisible by "
                                  f"algo.num_mini_batches={a.num_mini_batches}")
            mb = batch // a.num_mini_batches
            if a.name in ("ppo", "rpd") and mb % a.gradient_accumulation_steps:
                raise ConfigError(f"minibatch size {mb} must be divisible by "
                                  f"algo.gradient_accumulation_steps={a.gradient_accumulation_steps}")
        if "eval" in read:
            _positive("eval.num_episodes", self.eval.num_episodes)
        if "sft" in read:
            _positive("sft.batch_size", self.sft.batch_size)
        if "data" in read:
            _positive("data.num_episodes", self.data.num_episodes)
            if not str(self.data.expert).strip():
                raise ConfigError("data.expert='' is not allowed; use 'scripted' or a policy directory")
            if self.data.extra_tasks:
                self._check_extra_tasks()
        if "distill" in read:
            _choice("distill.method", self.distill.method, {"bc", "dagger", "rpd"})
        if "ire" in read:
            self._validate_ire()
        return self

    def _validate_env(self) -> None:
        e = self.env
        _positive("env.num_envs", e.num_envs)
        _positive("env.image_size", e.image_size)
        _positive("env.max_episode_steps", e.max_episode_steps)
        _choice("env.backend", e.backend, {"auto", "cpu", "gpu", "inline"})
        _choice("env.reward_mode", e.reward_mode, {"sparse", "dense", "normalized_dense"})
        _choice("env.control_mode", e.control_mode,
                {"pd_ee_delta_pose", "pd_ee_delta_pos", "pd_joint_delta_pos", "pd_joint_pos"})
        _choice("env.obs_mode", e.obs_mode, {"rgb", "state"})

    def _validate_policy(self) -> None:
        e, p = self.env, self.policy
        _choice("policy.critic_input", p.critic_input, {"features", "privileged"})
        _positive("policy.privileged_dim", p.privileged_dim)
        _choice("policy.student_input", p.student_input, {"full", "privileged"})
        if p.student_input == "privileged" and p.name != "mlp_student":
            raise ConfigError(f"policy.student_input=privileged needs policy.name=mlp_student "
                              f"(got policy.name={p.name!r}); a VLA actor never reads the sim state")
        if p.critic_input == "privileged" or p.student_input == "privileged" or \
                e.obs_mode == "state":
            e.privileged_state = True  # the policy reads it: the env must return it
        if p.critic_input == "privileged" and not p.value_head:
            raise ConfigError("policy.critic_input=privileged needs policy.value_head=true")
        if p.lora_lm_head and (p.name != "token_vla" or not p.use_lora):
            raise ConfigError(f"policy.lora_lm_head=true needs policy.name=token_vla and "
                              f"policy.use_lora=true (got {p.name!r}, use_lora={p.use_lora})")
        _positive("policy.chunk_size", p.chunk_size)
        _positive("policy.action_dim", p.action_dim)
        if p.action_bins < 2:
            raise ConfigError(f"policy.action_bins={p.action_bins} must be >= 2")
        if not p.action_low < p.action_high:
            raise ConfigError(f"policy.action_low={p.action_low} must be < policy.action_high={p.action_high}")
        _positive("policy.temperature", p.temperature)
        _positive("policy.num_inference_steps", p.num_inference_steps)
        _positive("policy.noise_level", p.noise_level, zero_ok=True)
        _choice("policy.dtype", p.dtype, {"float32", "bfloat16"})
        _choice("policy.action_token_layout", p.action_token_layout, {"vlarl", "openvla"})
        _choice("policy.state_range", p.state_range, {"demos", "fixed"})
        if "{instruction}" not in p.prompt_template:
            raise ConfigError(f"policy.prompt_template={p.prompt_template!r} must contain the "
                              "placeholder '{instruction}'")

    def _validate_algo(self) -> None:
        a = self.algo
        _choice("algo.name", a.name, {"ppo", "grpo", "rloo", "rpd"})
        _choice("algo.loss_type", a.loss_type, {"dapo", "grpo", "dr_grpo"})
        _choice("algo.scale_rewards", a.scale_rewards, {"group", "batch", "none"})
        for key in ("gamma", "gae_lambda"):
            v = getattr(a, key)
            if not (0.0 <= v <= 1.0):
                raise ConfigError(f"algo.{key}={v} must be in [0, 1]")
        _positive("algo.epsilon", a.epsilon)
        if a.epsilon_high is not None:
            _positive("algo.epsilon_high", a.epsilon_high)
        _positive("algo.num_ppo_epochs", a.num_ppo_epochs)
        _positive("algo.num_mini_batches", a.num_mini_batches)
        _positive("algo.gradient_accumulation_steps", a.gradient_accumulation_steps)
        _positive("algo.max_grad_norm", a.max_grad_norm)
        _positive("algo.beta", a.beta, zero_ok=True)
        _positive("algo.beta_decay_updates", a.beta_decay_updates, zero_ok=True)
        _positive("algo.teacher_coef", a.teacher_coef, zero_ok=True)
        _positive("algo.teacher_coef_decay_updates", a.teacher_coef_decay_updates, zero_ok=True)
        if a.name in ("grpo", "rloo") and a.num_generations < 2:
            raise ConfigError(f"algo.num_generations={a.num_generations} must be >= 2 for {a.name}")

    def _validate_train(self) -> None:
        t = self.train
        _positive("train.num_updates", t.num_updates)
        _positive("train.rollout_steps", t.rollout_steps)
        _positive("train.learning_rate", t.learning_rate)
        _positive("train.save_every", t.save_every)
        _positive("train.keep_last", t.keep_last)
        _choice("train.lr_scheduler_type", t.lr_scheduler_type,
                {"constant", "linear", "cosine", "constant_with_warmup", "cosine_with_restarts",
                 "polynomial", "inverse_sqrt"})
        _choice("train.report_to", t.report_to, {"none", "wandb"})
        _choice("train.wandb_mode", t.wandb_mode, {"online", "offline", "disabled"})
        if t.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision='fp16' is not supported (a step skipped by "
                              "the non-finite guard would leave fp16's loss scaler stuck); use "
                              "'bf16' (GPUs since Ampere, and CPUs) or 'no'")
        _choice("train.mixed_precision", t.mixed_precision, {"no", "bf16"})

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


# ----------------------------------------------------------------------------- loading

def _convert(key: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot convert {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_convert(key, v, args[0] if args else str) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={value!r} must be a bool (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be an int")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be an int") from None
        if not f.is_integer():
            raise ConfigError(f"{key}={value!r} must be an int")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a float")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a float") from None
        if math.isnan(f):
            raise ConfigError(f"{key}=nan is not a valid value")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} must be a string")
        return str(value)
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_field(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(obj)]
    key = prefix + head
    if head not in names:
        close = difflib.get_close_matches(head, names, n=1)
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {key!r}{hint}; allowed: {names}")
    tp = _hints(type(obj))[head]
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if rest:
            set_field(current, rest, value, key + ".")
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
        for k, v in value.items():
            set_field(current, str(k), v, key + ".")
        return
    if rest:
        raise ConfigError(f"{key} has no sub-keys (got {prefix}{dotted!r})")
    setattr(obj, head, _convert(key, value, tp))


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                cls=Config, sections: Iterable[str] | None = None) -> Any:
    """Build a validated config from an optional YAML recipe and overrides.

    ``overrides`` is either ``["--algo.epsilon", "0.1", "--env.task=PushCube-v1"]`` or a
    ``{"algo.epsilon": 0.1}`` dict. Raises :class:`ConfigError` naming the bad key.
    """
    cfg = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"YAML syntax error in {p}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections, got {type(data).__name__}")
        for k, v in data.items():
            set_field(cfg, str(k), v)
    for key, value in parse_overrides(overrides or []):
        set_field(cfg, key, value)
    return cfg.validate(sections) if hasattr(cfg, "validate") else cfg


def parse_overrides(overrides: list[str] | dict) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    out, i = [], 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--"):
            raise ConfigError(f"expected --section.key, got {tok!r}")
        tok = tok[2:]
        if "=" in tok:
            k, v = tok.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"--{tok} needs a value")
            # `--eval.splits train wide_pose`: every token up to the next --key is a value;
            # several values make a list (as does the YAML form "[train, wide_pose]").
            j = i + 1
            while j < len(overrides) and not overrides[j].startswith("--"):
                j += 1
            k, values = tok, overrides[i + 1:j]
            i = j
            if len(values) > 1:
                out.append((k.replace("-", "_"), [yaml.safe_load(v) for v in values]))
                continue
            v = values[0]
        k = k.replace("-", "_")
        out.append((k, yaml.safe_load(v) if v not in ("",) else v))
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def non_default(section: Any) -> dict:
    """The fields of a config section that differ from the dataclass defaults: what cache keys
    hash, so adding a field (with a default) to vlarl does not invalidate cached stages."""
    default = type(section)()
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
            if getattr(section, f.name) != getattr(default, f.name)}


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) for ``--help``."""
    import ast
    import inspect
    import itertools

    src = inspect.getsource(cls)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and \
                isinstance(getattr(nxt, "value", None), ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs
