"""The ``policy`` section. :class:`PolicyConfig` holds the fields every policy reads; each
policy adds its own in a subclass that lives next to its model
(``vlarl/policies/<name>/configuration_<name>.py``, as LeRobot's ``configuration_*.py``) and
registers it under its name. ``policy.name`` picks the class, so a key that only another policy
reads is refused with the keys this one has, and checks live with the fields they check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from vlarl.config.checks import ConfigError, choice, positive

DEFAULT_POLICY = "token_vla"
"""The policy a run config without ``policy.name`` gets."""

POLICY_CONFIGS: dict[str, type[PolicyConfig]] = {}
"""Config class by policy name; filled by ``@register_policy_config`` when ``vlarl.policies``
is imported (which ``import vlarl`` does: it imports no torch)."""


def register_policy_config(name: str) -> Callable[[type[PolicyConfig]], type[PolicyConfig]]:
    """Class decorator: ``cls`` is the ``policy`` section of policy ``name``."""
    def deco(cls: type[PolicyConfig]) -> type[PolicyConfig]:
        if name in POLICY_CONFIGS:
            raise ValueError(f"policy config {name!r} is already registered")
        if cls().name != name:
            raise ValueError(f"{cls.__name__}.name defaults to {cls().name!r}, not {name!r}")
        POLICY_CONFIGS[name] = cls
        return cls
    return deco


@dataclass
class PolicyConfig:
    name: str = ""
    """Registered policy (``vlarl.policies.POLICIES``): ``token_vla``, ``flow_vla``,
    ``mlp_student``. It picks the section's class: the recipe's other ``policy`` keys are
    those that policy's configuration has (``vlarl <command> --help`` lists them)."""
    path: str | None = None
    """Checkpoint directory or hub id to load with ``from_pretrained``; None builds ``tiny``."""
    tiny: str = "paligemma"
    """Tiny offline architecture when ``path`` is None: ``paligemma``, ``idefics3`` (SmolVLM's
    architecture) or ``llava`` (token_vla); ``pi0`` (flow_vla)."""
    chunk_size: int = 4
    """Actions k emitted per decision (one image every k control steps)."""
    action_dim: int = 7
    """Action dimension A; must match the env's action space."""
    use_state: bool = True
    """Feed proprioceptive state to the policy."""
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
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype of the backbone (bf16 on GPU)."""
    trust_remote_code: bool = False
    """Pass to ``from_pretrained`` (OpenVLA-format checkpoints need it)."""

    def __post_init__(self) -> None:
        if type(self) is PolicyConfig:
            raise TypeError("PolicyConfig holds the fields policies share; build a policy's own "
                            "config: PolicyConfig.for_name(name)(...) or its class "
                            f"({sorted(POLICY_CONFIGS)})")

    @staticmethod
    def for_name(name: str) -> type[PolicyConfig]:
        """The config class of policy ``name``."""
        if name not in POLICY_CONFIGS:
            raise ConfigError(f"policy.name={name!r} is not allowed; choose one of "
                              f"{sorted(POLICY_CONFIGS)}")
        return POLICY_CONFIGS[name]

    def to(self, name: str, **changes) -> PolicyConfig:
        """This config as policy ``name``'s (a teacher's config for its student): the fields the
        two classes share are carried over but ``tiny`` (an architecture of this policy's), the
        others take ``name``'s defaults; ``changes`` on top."""
        cls = self.for_name(name)
        carried = {f.name: getattr(self, f.name) for f in dataclasses.fields(cls)
                   if f.name not in ("name", "tiny") and hasattr(self, f.name)}
        return cls(**{**carried, **changes})

    def reads_privileged_state(self) -> bool:
        """Whether this policy reads the simulator state (``env.privileged_state`` is then
        switched on by ``Config.resolve``)."""
        return self.critic_input == "privileged"

    def check(self) -> None:
        """Check this section's own values (pure; the ones between sections are
        ``Config.validate``'s). Subclasses add theirs after ``super().check()``."""
        choice("policy.critic_input", self.critic_input, {"features", "privileged"})
        positive("policy.privileged_dim", self.privileged_dim)
        if self.critic_input == "privileged" and not self.value_head:
            raise ConfigError("policy.critic_input=privileged needs policy.value_head=true")
        # peft would refuse these later with its own names ("`r` should be a positive integer")
        positive("policy.lora_r", self.lora_r)
        positive("policy.lora_alpha", self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"policy.lora_dropout={self.lora_dropout} must be in [0, 1)")
        positive("policy.chunk_size", self.chunk_size)
        positive("policy.action_dim", self.action_dim)
        choice("policy.dtype", self.dtype, {"float32", "bfloat16"})
        choice("policy.state_range", self.state_range, {"demos", "fixed"})
