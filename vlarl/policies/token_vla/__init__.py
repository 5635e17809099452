"""The token VLA: :mod:`.configuration_token_vla` (its ``policy`` section, imported with
``vlarl.policies``) and :mod:`.modeling_token_vla` (the model, imported on first use), with its
parts: the action tokenizer, the prompt inputs, the state input, Prismatic (OpenVLA) support."""

from vlarl.policies.token_vla.configuration_token_vla import TokenVLAConfig

__all__ = ["TokenVLAConfig"]
