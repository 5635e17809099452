"""The flow VLA: :mod:`.configuration_flow_vla` (its ``policy`` section, imported with
``vlarl.policies``), :mod:`.modeling_flow_vla` (the model, imported on first use) and
:mod:`.flow_math` (the pure flow-matching math)."""

from vlarl.policies.flow_vla.configuration_flow_vla import FlowVLAConfig

__all__ = ["FlowVLAConfig"]
