"""Typed run configuration: env + policy + algo + train + eval + data/sft + distill.

Recipes are YAML files of these dataclasses (one top-level key per section); any field
can be overridden on the command line as ``--section.field value`` (e.g.
``--algo.epsilon 0.1``). Checks live in :mod:`.run`, and every error names the key and
the allowed values. Nothing heavy is imported, so a bad config fails in milliseconds.

Layout: :mod:`.sections` (the dataclasses), :mod:`.run` (``Config``: resolve + validate),
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
from vlarl.config.run import Config
from vlarl.config.sections import (
    AlgoConfig,
    DataConfig,
    DistillConfig,
    EnvConfig,
    EvalConfig,
    IreConfig,
    PolicyConfig,
    SFTConfig,
    TrainConfig,
)

__all__ = ["AlgoConfig", "Config", "ConfigError", "DataConfig", "DistillConfig", "EnvConfig",
           "EvalConfig", "IreConfig", "PolicyConfig", "SFTConfig", "TrainConfig", "field_docs",
           "load_config", "non_default", "parse_overrides", "save_config", "set_field",
           "to_dict"]
