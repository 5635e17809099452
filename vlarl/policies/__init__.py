"""Policies: the only package that imports transformers / peft (lazily, inside submodules).

Layout: one folder per policy, its ``policy`` section next to its model (LeRobot's)::

    token_vla/    configuration_token_vla.py  modeling_token_vla.py  (+ its tokenizer, inputs)
    flow_vla/     configuration_flow_vla.py   modeling_flow_vla.py   flow_math.py
    mlp_student/  configuration_mlp_student.py modeling_mlp_student.py

and what they share: ``base`` (the ``Policy`` protocol), ``common`` (value head, LoRA),
``saving``, ``sampling``, ``tokenizer``, ``tiny`` / ``tiny_backbones`` (offline checkpoints).
Importing this package imports the configurations only (no torch): ``import vlarl`` does, so
``load_config`` knows every policy's keys.

Data flow: ``Obs`` -> policy.act -> ``ActOutput`` (actions [N, k, A], log_probs, values,
stored tensors) -> rollout; algorithms call ``policy.evaluate(obs, stored)``.

Registry convention: ``@POLICIES.register(name)`` on a :class:`Policy` subclass that has
two classmethods, ``from_config(cfg: PolicyConfig)`` (build: ``cfg.path`` None -> the tiny
``cfg.tiny`` model) and ``from_pretrained(path, **overrides)``. Registered modules are
imported on first use (:data:`LAZY_POLICIES`), so ``import vlarl.policies`` stays light.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlarl.config import PolicyConfig
from vlarl.policies.flow_vla import FlowVLAConfig
from vlarl.policies.mlp_student import MLPStudentConfig
from vlarl.policies.token_vla import TokenVLAConfig
from vlarl.registry import Registry

if TYPE_CHECKING:
    from vlarl.policies.base import Policy

POLICIES: Registry = Registry("policy")
"""Policy classes by name (``token_vla``, ``flow_vla``, ...)."""

LAZY_POLICIES: dict[str, str] = {
    "token_vla": "vlarl.policies.token_vla.modeling_token_vla",
    "flow_vla": "vlarl.policies.flow_vla.modeling_flow_vla",
    "mlp_student": "vlarl.policies.mlp_student.modeling_mlp_student",
}
"""name -> module that registers it on import; other packages may add entries."""

__all__ = ["LAZY_POLICIES", "POLICIES", "FlowVLAConfig", "MLPStudentConfig", "TokenVLAConfig",
           "build_policy", "load_policy", "policy_class"]


def policy_class(name: str) -> type[Policy]:
    """The registered class ``name``, importing its module on first use."""
    if name not in POLICIES:
        if name not in LAZY_POLICIES:
            known = sorted(set(POLICIES.names()) | set(LAZY_POLICIES))
            raise KeyError(f"unknown policy {name!r}; known: {known}")
        importlib.import_module(LAZY_POLICIES[name])
    return POLICIES.get(name)


def quiet_model_io() -> None:
    """Turn off what transformers and peft print on every load and save that says nothing
    new: the weight-loading and shard-writing progress bars, the deprecation warning peft
    0.21 triggers in transformers 5 (``is_gradient_checkpointing``), and peft's note that a
    saved adapter's base moved (vlarl saves the base beside it), the NumPy 2 deprecation
    PaliGemma's processor triggers on every call. Hub download bars
    (huggingface_hub's own) stay. ``VLARL_VERBOSE=1`` keeps everything."""
    if os.environ.get("VLARL_VERBOSE"):
        return
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    # a saved policy's adapter names the base it was trained on; vlarl loads the copy saved
    # next to it (<dir>/base), which peft reports as a rename
    warnings.filterwarnings("ignore", message="The PEFT config's `base_model_name_or_path` was "
                            "renamed", category=UserWarning)
    # transformers' PaliGemma processor builds training labels with np.array(<torch tensor>)
    # on every call (NumPy 2 deprecation in torch's __array__); vlarl never reads those labels
    warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy",
                            category=DeprecationWarning,
                            module=r"transformers\.models\.paligemma")


def build_policy(cfg: PolicyConfig) -> Policy:
    """Build the policy ``cfg.name`` from ``cfg`` (``cfg.path`` None -> the tiny model)."""
    quiet_model_io()
    return policy_class(cfg.name).from_config(cfg)  # type: ignore[attr-defined]


def default_device() -> str:
    """Where policies run outside the trainer (eval, bench, drift, distill, diagnose): the
    local CUDA device when there is one (``LOCAL_RANK`` under a launcher), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', torch.cuda.current_device()))}"
    return "cpu"


def load_policy(path: str | Path, device: str | None = None, **overrides: Any) -> Policy:
    """Load a ``save_pretrained`` directory (or a plain HF checkpoint / hub id) onto
    ``device`` (default :func:`default_device`: the GPU when there is one; the trainer's
    accelerator moves its own copy).

    The policy name comes from ``vlarl_policy.json``; for a plain checkpoint pass
    ``name=`` (default ``token_vla``). ``overrides`` are PolicyConfig fields
    (e.g. ``temperature=0.5``, ``use_lora=False``).
    """
    meta = Path(path, "vlarl_policy.json")
    name = overrides.pop("name", None)
    if meta.is_file():
        saved = json.loads(meta.read_text())["policy"]
        if name is not None and name != saved:
            raise ValueError(f"name={name!r} does not match the checkpoint's policy {saved!r}")
        name = saved
    cls = policy_class(name or "token_vla")
    quiet_model_io()
    policy = cls.from_pretrained(path, **overrides)  # type: ignore[attr-defined]
    return policy.to(device or default_device())
