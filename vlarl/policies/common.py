"""Model pieces shared by the VLA policies (token_vla, flow_vla, the student): value head,
LoRA, state inputs. Saving and loading a policy directory: :mod:`vlarl.policies.saving`.

* :class:`ValueHead` - PPO critic on pooled backbone features; :func:`masked_mean_pool` pools them.
* :func:`apply_lora` - wrap a transformers model with peft LoRA (base frozen) or, for full
  fine-tuning, leave every weight trainable. :func:`count_parameters` for the report.
* :func:`pad_state`, :func:`check_state_size`, :func:`privileged_input` - the state inputs.
* :func:`torch_dtype` - ``"float32"`` / ``"bfloat16"`` to a torch dtype.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlarl.config import ConfigError, PolicyConfig
from vlarl.types import Obs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """Map ``PolicyConfig.dtype`` to a torch dtype."""
    if name not in _DTYPES:
        raise ConfigError(f"policy.dtype={name!r} is not allowed; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


# ----------------------------------------------------------------------------- heads

def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [N, L, H]`` over positions where ``mask [N, L]`` is 1 -> ``[N, H]``."""
    m = mask.bool().unsqueeze(-1)
    # where() rather than a product: padded rows may hold NaN (fully masked attention).
    total = torch.where(m, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    return total / m.sum(1).clamp_min(1).to(hidden.dtype)


class ValueHead(nn.Module):
    """State-value critic ``V(s)``: ``[N, H] -> [N]`` (pooled backbone features or privileged state).

    A small MLP in fp32 (the backbone may be bf16) with ``depth`` hidden layers. The last
    layer starts at zero so the initial values are exactly 0 and the first PPO updates are
    not dominated by a random critic.
    """

    def __init__(self, hidden_size: int, width: int = 256, depth: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(hidden_size if i == 0 else width, width), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # fp32 even inside a bf16 autocast region (train.mixed_precision: bf16): value
        # targets are returns of size ~1-100 that bf16's 8-bit mantissa would round
        with torch.autocast(features.device.type, enabled=False):
            return self.net(features.float()).squeeze(-1)


def make_value_head(cfg: PolicyConfig, hidden_size: int) -> ValueHead | None:
    """The policy's critic: None, on backbone features, or (``critic_input: privileged``) a
    2-layer MLP on the zero-padded simulator state - the asymmetric actor-critic of sim-to-real
    robot RL (the actor never sees the privileged state)."""
    if not cfg.value_head:
        return None
    if cfg.critic_input == "privileged":
        return ValueHead(cfg.privileged_dim, depth=2)
    return ValueHead(hidden_size)


def pad_state(state: torch.Tensor, width: int, fix: str) -> torch.Tensor:
    """``state [..., D]`` zero-padded on the right to ``width`` dims: one policy serves tasks
    whose proprioceptive state differs in length (a multi-task base, ``data.extra_tasks``),
    as LeRobot's pi0 pads to ``max_state_dim``. ``D > width`` is an error naming ``fix``."""
    d = state.shape[-1]
    if d > width:
        raise ValueError(f"obs.state has D={d} > the policy's state width {width}; {fix}")
    return F.pad(state.float(), (0, width - d))


def check_state_size(cfg: PolicyConfig, size: int, where: str) -> None:
    """Raise if a policy that reads the state was trained on states of other lengths than
    ``size`` (``where``'s): binned as text or projected, a state of another length would be
    read as another robot's without a word."""
    if cfg.use_state and cfg.state_sizes and size not in cfg.state_sizes:
        trained = " or ".join(map(str, cfg.state_sizes))
        raise ValueError(f"{where} gives a state of {size} values, and the policy was trained "
                         f"on states of {trained} values (policy.state_sizes, written by SFT): "
                         "use the env.task the policy was trained on, or SFT a base on this one")


def privileged_input(obs: Obs, dim: int, device: torch.device | str,
                     reader: str = "policy.critic_input=privileged") -> torch.Tensor:
    """``obs.privileged`` zero-padded to ``[N, dim]`` (the input of a privileged critic or a
    state-based student; ``reader`` names the setting that asked for it in the error)."""
    priv = obs.privileged
    if priv is None:
        raise ValueError(f"{reader} but the observation has no privileged state: set "
                         "env.privileged_state=true (or env.obs_mode=state)")
    if priv.shape[-1] > dim:
        raise ValueError(f"privileged state has {priv.shape[-1]} values > policy.privileged_dim={dim}")
    return F.pad(priv.float(), (0, dim - priv.shape[-1])).to(device)


# ----------------------------------------------------------------------------- LoRA

def lora_config(cfg: PolicyConfig, model: nn.Module | None = None, lm_head: bool = False):
    """peft ``LoraConfig`` from the policy config (``all-linear`` or a comma-separated list;
    ``lm_head`` adds ``model``'s output layer: the token VLA's ``policy.lora_lm_head``)."""
    from peft import LoraConfig

    targets: str | list[str] = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ConfigError(f"policy.lora_target_modules={cfg.lora_target_modules!r} is empty; "
                              "use 'all-linear' or module names like 'q_proj,v_proj'")
    if lm_head:
        if model is None or model.get_output_embeddings() is None:
            raise ValueError("policy.lora_lm_head needs a model with an output layer")
        head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
        if targets == "all-linear":
            # peft's all-linear = every nn.Linear but the output layer; peft cannot mix the
            # keyword with names, so spell it out: the leaf names of every nn.Linear
            targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                              if isinstance(m, nn.Linear)})
        else:
            targets = sorted({*targets, head.rsplit(".", 1)[-1]})
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")


def apply_lora(model: PreTrainedModel, cfg: PolicyConfig, lm_head: bool = False) -> nn.Module:
    """LoRA-wrap ``model`` (peft freezes the base) or, if ``cfg.use_lora`` is False, unfreeze all.

    With LoRA the reference policy is the same module with adapters disabled (TRL's
    ``disable_adapter()``), so no second copy of the model is ever held.
    """
    if not cfg.use_lora:
        model.requires_grad_(True)
        return model
    from peft import get_peft_model

    with warnings.catch_warnings():  # tied lm_head: untie_output_layer runs before any merge
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
        return get_peft_model(model, lora_config(cfg, model, lm_head))


def enable_checkpointing(model: nn.Module, cfg: PolicyConfig) -> None:
    """``policy.gradient_checkpointing``: transformers' activation checkpointing on the base
    model (non-reentrant, so frozen embeddings under LoRA need no ``requires_grad`` inputs)."""
    if not cfg.gradient_checkpointing:
        return
    base = model.get_base_model() if is_peft(model) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"policy.gradient_checkpointing=true: {type(base).__name__} does not "
                         "support gradient checkpointing; set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.23's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def untie_output_layer(model: nn.Module) -> None:
    """Give a LoRA-adapted output layer that shares its weight with the input embeddings
    (``tie_word_embeddings``) its own copy, so ``merge_and_unload`` folds the adapter into the
    output layer only (peft's warning about tied target modules); also records
    ``tie_word_embeddings=False`` in the config so the merged checkpoint reloads untied."""
    base = model.get_base_model() if is_peft(model) else model
    out, inp = base.get_output_embeddings(), base.get_input_embeddings()
    layer = getattr(out, "base_layer", out)
    if out is None or inp is None or layer.weight is not inp.weight:
        return
    layer.weight = nn.Parameter(layer.weight.detach().clone(),
                                requires_grad=layer.weight.requires_grad)
    for c in (base.config, getattr(base.config, "text_config", None)):
        if c is not None and getattr(c, "tie_word_embeddings", False):
            c.tie_word_embeddings = False


def merge_adapters(model: nn.Module) -> nn.Module:
    """peft ``merge_and_unload`` after :func:`untie_output_layer`."""
    untie_output_layer(model)
    return model.merge_and_unload()


def is_peft(model: nn.Module) -> bool:
    """True if ``model`` is a peft wrapper (has adapters that can be disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total
