"""The config sections: one dataclass per recipe key (``env``, ``policy``, ``algo``, ``train``,
``data``, ``sft``, ``eval``, ``distill``, ``ire``), a docstring under every field (what
``vlarl <command> --help`` lists). Values are checked in :mod:`vlarl.config.run`."""

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
    state_input: Literal["text", "embedding"] = "embedding"
    """How the token VLA reads the state (with ``use_state``): ``embedding`` (default) = a
    2-layer MLP projects the state, scaled to [-1, 1] on the state range, into the embedding
    of the prompt's last token " state:" (OpenVLA-OFT / pi0 style; saved as the
    ``state_proj`` head, frozen under LoRA once trained); ``text`` = each dimension binned to
    0..255 and written into the prompt (RT-2 / OpenVLA). On the same 100 PushCube demos the
    embedding gave the better SFT base and GRPO gains on 3 of 3 seeds where text gave none on
    average (docs/experiments/2026-12-06-state-input-embedding.md). A checkpoint refuses a
    run that changes it; checkpoints saved before this field existed read the state as text."""
    state_range: Literal["demos", "fixed"] = "demos"
    """How SFT sets the range the state is binned / normalised on: ``demos`` = each
    dimension's range in the demonstrations (+10 %), written to ``state_low`` /
    ``state_high``; ``fixed`` = [-4, 4] on every dimension, the same for every task and
    every state size (no per-dimension lists). Loading a checkpoint, ``demos`` keeps the
    range it was trained on and ``fixed`` bins on [-4, 4] instead (the coarse-input
    experiment, docs/experiments/2026-11-24-coarse-state-input.md)."""
    state_low: list[float] | None = None
    """Per-dimension lower end of the state range used to bin / normalise it (SFT sets it
    from the demonstrations, like LeRobot's normalisation stats); None: -4 for every dim."""
    state_high: list[float] | None = None
    """Per-dimension upper end of the state range (see ``state_low``); None: +4."""
    state_sizes: list[int] | None = None
    """Lengths of the proprioceptive state the policy was trained on (SFT writes those of its
    demonstrations: one per task of a multi-task base); an env whose state has another length
    is refused before its first step, naming both. None: not recorded (no check)."""
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
    point_estimate: Literal["mode", "mean"] = "mode"
    """token_vla's deterministic action (greedy evaluation): ``mode`` = the most likely bin of
    each action token (argmax); ``mean`` = the bin nearest the mean of the bins' distribution
    at ``temperature``, which moves with the probability mass RL shifts (the mode moves only
    once another bin overtakes it)."""
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
