"""The distilled student's ``policy`` section: a small MLP on the camera images, the hashed
instruction and the state, or on the simulator state alone. Shared fields: :class:`PolicyConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlarl.config.checks import choice
from vlarl.config.policy import PolicyConfig, register_policy_config


@register_policy_config("mlp_student")
@dataclass
class MLPStudentConfig(PolicyConfig):
    name: str = "mlp_student"
    """Registered policy: ``mlp_student``."""
    student_input: Literal["full", "privileged"] = "full"
    """mlp_student's input: ``full`` = camera images + hashed instruction + proprioception (a
    student of a VLA); ``privileged`` = only the simulator state ``Obs.privileged``,
    zero-padded to ``privileged_dim`` (a state-based RL expert, RLDG: images and words are
    ignored, the critic reads the same state; needs ``env.privileged_state``, which is
    switched on for it, and trains fastest with ``env.obs_mode: state``)."""

    def reads_privileged_state(self) -> bool:
        return super().reads_privileged_state() or self.student_input == "privileged"

    def check(self) -> None:
        super().check()
        choice("policy.student_input", self.student_input, {"full", "privileged"})
