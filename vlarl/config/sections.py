"""The config sections: one dataclass per recipe key (``env``, ``policy``, ``algo``, ``train``,
``data``, ``sft``, ``eval``, ``distill``, ``ire``), a docstring under every field (what
``vlarl <command> --help`` lists). Values are checked in :mod:`vlarl.config.run`. The ``policy``
section's shared fields are :mod:`vlarl.config.policy`'s; each policy's own live with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EnvConfig:
    task: str = "PickCube-v1"
    """ManiSkill task id, one of the registered tasks (``vlarl.envs.TASKS``; in a task with
    target colours the instruction names the target cube). New tasks: docs/adding_a_task.md."""
    split: str = "train"
    """Named variant of the task: ``train`` (in-distribution) or an OOD split (``vlarl.envs.SPLITS``)."""
    num_envs: int = 2
    """Parallel envs N (CPU: one simulator each, in worker processes or, with ``backend:
    inline``, in this process; GPU: one batched ManiSkill env)."""
    num_workers: int = 0
    """CPU backend: worker processes the N envs are spread over, in contiguous blocks that each
    worker steps in turn; 0 = one per env. Results do not depend on it (env i keeps its seeds
    and its own simulator). Each worker costs ~0.5 GB and ~10 s of one core at its start
    (SAPIEN computes its BRDF lookup table on the software renderer): on 2 cores, 8 envs in 2
    workers start 3x faster in 2.7x less memory than in 8, and step ~10 % slower in a GRPO
    rollout (docs/experiments/2026-12-07-env-worker-start.md)."""
    backend: Literal["auto", "cpu", "gpu", "inline"] = "auto"
    """``gpu``: physx_cuda batched env; ``cpu``: worker processes; ``inline``: this process (on
    GPU the batched env; on CPU the N simulators stepped in turn: no parallelism, but one
    renderer start (~10 s of one core on the software renderer) for every env set the process
    builds, where each worker pays its own); ``auto``: gpu if CUDA else cpu."""
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
    CPU workers reset each env alone and are exact already."""
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
    importance_sampling_level: Literal["chunk", "token"] = "chunk"
    """Where the clipped ratio is taken (TRL's ``GRPOConfig.importance_sampling_level``):
    ``chunk`` = one ratio per decision, the exp of its k x A action tokens' summed log-prob
    change, clipped once; ``token`` = one ratio per action token, each clipped, averaged over
    the chunk (TRL's default, as verl / SimpleVLA-RL train OpenVLA-OFT). Token VLA only."""
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
    """GRPO: drop groups whose outcomes are all equal: all succeed or all fail, or with a
    progress term (``shaping_coef``) all succeed (DAPO / SimpleVLA-RL)."""
    shaping_coef: float = 0.0
    """GRPO: weight of the env's dense reward, reduced per ``shaping``, added to the 0/1
    outcome reward."""
    shaping: Literal["return", "max"] = "return"
    """GRPO: how an episode's dense rewards become its shaping term: ``return`` sums them
    (an episode that fails slowly collects more than one that succeeds fast when success ends
    it), ``max`` takes the best per-step reward reached (progress: with ``normalized_dense``
    a success is the maximum, 1, so no failure outranks it). docs/grpo.md."""
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
    rollouts_per_update: int = 1
    """Rollouts collected one after another for one update, side by side in its batch
    (batch = rollouts_per_update * num_envs * rollout_steps chunks). Rollout k's envs take
    the global env indices after rollout k-1's, so 8 envs x 2 rollouts draw the episodes of
    16 envs x 1. GRPO / RLOO: more groups per update than ``env.num_envs`` holds, without
    more env worker processes (each holds a simulator and a renderer)."""
    pipeline_groups: int = 1
    """Split the envs into this many groups and let the policy act for one group while the
    others step (RLinf's pipelining of generation and simulation; ``env.backend: cpu``, whose
    envs are worker processes). 1: act for all envs, then step them all."""
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
    state_noise: float = 0.0
    """Augmentation: Gaussian noise added to every demo state before the policy reads it, its
    std as a fraction of each state dimension's std over the demos (0: none). The labels (the
    expert's actions) stay as recorded, so the policy sees states near, not only on, the
    demos' trajectories."""
    grounding_scenes: int = 0
    """Grounding pre-training before SFT (:mod:`vlarl.methods.grounding`): this many rendered
    initial scenes of the task (train split, reset seeds from 500000: disjoint from the demo
    and eval seeds), on which the policy learns to regress the task's layout - the xyz of its
    ``layout_attrs`` actors, standardised - from its prompt features through a linear head that
    is dropped before saving. Without it the tiny VLA's SFT base did not localize the cube
    (docs/experiments/2026-12-07-success-by-position.md). 0: none."""
    grounding_steps: int = 800
    """Optimizer steps of grounding pre-training (batch ``sft.batch_size``, peak LR
    ``sft.learning_rate``, the SFT schedule)."""
    grounding_weight: float = 1.0
    """Weight of the same grounding loss during SFT, on the layout of each demonstration's
    reset, added to the action loss so SFT keeps what pre-training taught (0: pre-training
    only). Used only with ``grounding_scenes > 0``."""


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
    point_estimate: Literal["mode", "mean"] | None = None
    """Override each token_vla checkpoint's ``policy.point_estimate`` for a deterministic
    evaluation (None: the checkpoint's own)."""
    temperature: float | None = None
    """Sampling temperature of each token_vla checkpoint for a sampled evaluation
    (``deterministic: false``; None: the checkpoint's own ``policy.temperature``, the one its
    rollouts used). Eval loads every checkpoint with its saved config, so ``policy.*`` options
    do not reach it; this one does."""
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
