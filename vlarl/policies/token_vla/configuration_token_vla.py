"""The token VLA's ``policy`` section: actions as discrete tokens of a vision-language model
(RT-2 / OpenVLA), the state as an embedding or as text. Shared fields: :class:`PolicyConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlarl.config.checks import ConfigError, choice, positive
from vlarl.config.policy import PolicyConfig, register_policy_config

LEGACY_DEFAULTS = {"decoding": "autoregressive", "state_input": "text"}
"""What a checkpoint saved before one of these fields existed was trained with (read back by
``read_policy_json(..., legacy=LEGACY_DEFAULTS)``)."""


@register_policy_config("token_vla")
@dataclass
class TokenVLAConfig(PolicyConfig):
    name: str = "token_vla"
    """Registered policy: ``token_vla``."""
    action_bins: int = 256
    """Discrete bins per action dimension (token VLAs)."""
    action_low: float = -1.0
    """Lower clip of each action dimension before binning."""
    action_high: float = 1.0
    """Upper clip of each action dimension before binning."""
    temperature: float = 1.0
    """Sampling temperature during rollouts (TRL's name)."""
    state_input: Literal["text", "embedding"] = "embedding"
    """How the token VLA reads the state (with ``use_state``): ``embedding`` (default) = a
    2-layer MLP projects the state, scaled to [-1, 1] on the state range, into the embedding
    of the prompt's last token " state:" (OpenVLA-OFT / pi0 style; saved as the
    ``state_proj`` head, frozen under LoRA once trained); ``text`` = each dimension binned to
    0..255 and written into the prompt (RT-2 / OpenVLA). On the same 100 PushCube demos the
    embedding gave the better SFT base and GRPO gains on 3 of 3 seeds where text gave none on
    average (docs/experiments/2026-12-06-state-input-embedding.md). A checkpoint refuses a
    run that changes it; checkpoints saved before this field existed read the state as text."""
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
    action_token_layout: Literal["vlarl", "openvla"] = "vlarl"
    """token_vla's action-token ids: ``vlarl`` = bin ``b`` of ``action_bins`` equal-width bins
    is id ``V - action_bins + b`` (V = output-embedding rows, ascending); ``openvla`` =
    OpenVLA's ActionTokenizer: ``np.digitize`` on ``action_bins`` uniform edges (so
    ``action_bins - 1`` bins), id ``tokenizer.vocab_size - digitized`` (descending, below the
    tokenizer's base vocabulary size). Use ``openvla`` for OpenVLA checkpoints."""
    prompt_template: str = "What action should the robot take to {instruction}?"
    """token_vla prompt after the image placeholders; ``{instruction}`` is the lower-cased task.
    OpenVLA's: ``"In: What action should the robot take to {instruction}?\\nOut:"``."""
    lora_lm_head: bool = False
    """Token VLAs: also LoRA-adapt the output layer (``lm_head``, the action tokens' logits),
    which peft's ``all-linear`` leaves out. Frozen, it is tied to the input embeddings and
    bounds how far RL can move the action distribution (docs/ppo.md, "the frozen output
    layer"). A tied output layer gets its own weight before adapters are merged."""
    detach_value_features: bool = False
    """Feed the value head detached backbone features, so the value loss does not move the
    actor's adapters (token_vla; default False = the shared backbone of RL4VLA)."""

    def check(self) -> None:
        super().check()
        if self.action_bins < 2:
            raise ConfigError(f"policy.action_bins={self.action_bins} must be >= 2")
        if not self.action_low < self.action_high:
            raise ConfigError(f"policy.action_low={self.action_low} must be < "
                              f"policy.action_high={self.action_high}")
        positive("policy.temperature", self.temperature)
        choice("policy.state_input", self.state_input, {"text", "embedding"})
        choice("policy.decoding", self.decoding, {"autoregressive", "parallel"})
        choice("policy.point_estimate", self.point_estimate, {"mode", "mean"})
        choice("policy.action_token_layout", self.action_token_layout, {"vlarl", "openvla"})
        if self.lora_lm_head and not self.use_lora:
            raise ConfigError("policy.lora_lm_head=true needs policy.use_lora=true")
        if "{instruction}" not in self.prompt_template:
            raise ConfigError(f"policy.prompt_template={self.prompt_template!r} must contain the "
                              "placeholder '{instruction}'")
