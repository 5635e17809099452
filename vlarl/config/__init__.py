"""Typed run configuration: env + policy + algo + train + eval + data/sft + distill.

Recipes are YAML files of these dataclasses (one top-level key per section); any field
can be overridden on the command line as ``--section.field value`` (e.g.
``--algo.epsilon 0.1``). Checks live in :mod:`.run`, and every error names the key and
the allowed values. Nothing heavy is imported, so a bad config fails in milliseconds.

Layout: :mod:`.sections` (the dataclasses), :mod:`.policy` (the policy section's shared
fields; each policy's own class lives in ``vlarl/policies/<name>/``), :mod:`.run` (``Config``: resolve + validate),
:mod:`.loader` (YAML + overrides), :mod:`.checks` (``ConfigError``).
"""

from vlarl.config.checks import ConfigError
from vlarl.config.loader import (
    field_docs,
    load_config,
    non_default,
    parse_overrides,
    save_config,
    set_field,
    to_dict,
)
from vlarl.config.policy import POLICY_CONFIGS, PolicyConfig, register_policy_config
from vlarl.config.run import Config
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

__all__ = ["POLICY_CONFIGS", "AlgoConfig", "Config", "ConfigError", "DataConfig", "DistillConfig", "EnvConfig",
           "EvalConfig", "IreConfig", "PolicyConfig", "SFTConfig", "TrainConfig", "field_docs",
           "load_config", "non_default", "parse_overrides", "register_policy_config", "save_config",
           "set_field", "to_dict"]
