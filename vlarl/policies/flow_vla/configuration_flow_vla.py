"""The flow VLA's ``policy`` section (pi0-style: a flow-matching action expert on a
vision-language backbone). Shared fields: :class:`PolicyConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from vlarl.config.checks import positive
from vlarl.config.policy import PolicyConfig, register_policy_config


@register_policy_config("flow_vla")
@dataclass
class FlowVLAConfig(PolicyConfig):
    name: str = "flow_vla"
    """Registered policy: ``flow_vla``."""
    tiny: str = "pi0"
    """Tiny offline architecture when ``path`` is None: ``pi0``."""
    num_inference_steps: int = 4
    """Denoising steps of flow policies."""
    noise_level: float = 0.3
    """Std of the noise injected into each flow denoising step (Flow-Noise / ReinFlow)."""

    def check(self) -> None:
        super().check()
        positive("policy.num_inference_steps", self.num_inference_steps)
        positive("policy.noise_level", self.noise_level, zero_ok=True)
