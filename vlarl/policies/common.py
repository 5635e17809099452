"""Plumbing shared by the VLA policies (token_vla, flow_vla): value head, LoRA, save/load.

Stable API (``flow_vla`` reuses it):

* :class:`ValueHead` - PPO critic on pooled backbone features; :func:`masked_mean_pool` pools them.
* :func:`apply_lora` - wrap a transformers model with peft LoRA (base frozen) or, for full
  fine-tuning, leave every weight trainable. :func:`count_parameters` for the report.
* Checkpoint directory layout written by :func:`save_checkpoint` and read by
  :func:`load_checkpoint`::

      <dir>/vlarl_policy.json   {"policy": name, "config": PolicyConfig fields, "format": 1,
                                 "heads": [saved head names], ...extras}
      <dir>/base/               model.save_pretrained + processor.save_pretrained
      <dir>/adapter/            peft adapter (safetensors), only with LoRA
      <dir>/heads.safetensors   value head and other small heads ("<head>.<param>")

  Loading reports missing / unexpected keys and refuses any (a silent partial load would
  train a random head or adapter).
* :func:`resolve_pretrained` - a local directory or a hub id; fails fast when offline.
* :func:`torch_dtype` - ``"float32"`` / ``"bfloat16"`` to a torch dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vlarl.config import ConfigError, PolicyConfig, set_field
from vlarl.types import Obs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

POLICY_FILE = "vlarl_policy.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapter"
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1

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

def lora_config(cfg: PolicyConfig, model: nn.Module | None = None):
    """peft ``LoraConfig`` from the policy config (``all-linear`` or a comma-separated list;
    ``cfg.lora_lm_head`` adds ``model``'s output layer)."""
    from peft import LoraConfig

    targets: str | list[str] = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ConfigError(f"policy.lora_target_modules={cfg.lora_target_modules!r} is empty; "
                              "use 'all-linear' or module names like 'q_proj,v_proj'")
    if cfg.lora_lm_head:
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


def apply_lora(model: PreTrainedModel, cfg: PolicyConfig) -> nn.Module:
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
        return get_peft_model(model, lora_config(cfg, model))


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


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the frozen base of a (maybe) peft-wrapped model, in the base's own key names.

    peft injects ``<layer>.base_layer`` and ``lora_*`` sub-modules; stripping them gives a
    checkpoint that plain ``from_pretrained`` loads with zero missing / unexpected keys.
    """
    base = model.get_base_model() if is_peft(model) else model
    out = {}
    for k, v in base.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


# ----------------------------------------------------------------------------- checkpoints

def write_policy_json(path: str | Path, name: str, cfg: PolicyConfig, **extra: Any) -> None:
    """Write ``vlarl_policy.json``: policy name, PolicyConfig fields, format version, extras."""
    data = {"policy": name, "format": FORMAT_VERSION, "config": dataclasses.asdict(cfg), **extra}
    Path(path, POLICY_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))


def read_policy_json(path: str | Path, **overrides: Any) -> tuple[str, PolicyConfig, dict]:
    """Read ``vlarl_policy.json`` -> ``(policy name, PolicyConfig with overrides, raw dict)``.

    Overrides use PolicyConfig field names (``temperature=0.5``); unknown names raise
    :class:`ConfigError` listing the allowed ones.
    """
    f = Path(path, POLICY_FILE)
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a vlarl policy directory: {POLICY_FILE} not found")
    data = json.loads(f.read_text())
    cfg = PolicyConfig()
    saved = data.get("config", {})
    # An override of None never erases a saved value: ``from_config`` passes every field of
    # the run's PolicyConfig, and the data-derived ones (the SFT demos' ``state_low`` /
    # ``state_high``) are None there - RL would otherwise bin the state on another scale than
    # the one the checkpoint was trained on.
    kept = {k: v for k, v in overrides.items() if v is not None or saved.get(k) is None}
    for key, value in {**saved, **kept}.items():
        set_field(cfg, key, value, "policy.")
    return data["policy"], cfg, data


def refuse_changed(path: str | Path, cfg: PolicyConfig, meta: dict, keys: tuple[str, ...],
                   why: str) -> None:
    """Raise if ``cfg`` (the checkpoint's config with the run's overrides) changes one of
    ``keys`` from the value the checkpoint was trained with. For fields that define what the
    model reads or writes (``use_state``, ``action_bins``, ``decoding``): a run config whose
    default differs would otherwise silently feed a no-state policy its state, or read its
    action tokens on another grid. Checkpoints saved before a field existed are not checked."""
    saved = meta.get("config", {})
    for key in keys:
        if key in saved and getattr(cfg, key) != saved[key]:
            want = json.dumps(saved[key])
            raise ValueError(f"policy.{key}={getattr(cfg, key)!r} differs from the checkpoint's "
                             f"{key}={saved[key]!r} at {path}: {why} (set policy.{key}: {want} "
                             f"in the recipe, or leave it out)")


def save_heads(path: str | Path, heads: dict[str, nn.Module]) -> None:
    """Save small heads (``{"value_head": module}``) into one safetensors file."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().contiguous().cpu()
               for name, mod in heads.items() for k, v in mod.state_dict().items()}
    save_file(tensors, str(Path(path, HEADS_FILE)))


def load_saved_heads(policy: nn.Module, path: str | Path, meta: dict) -> None:
    """Load every head ``vlarl_policy.json`` lists into the attribute of ``policy`` with its
    name; heads the current config drops (attribute None) are skipped on purpose."""
    saved = set(meta.get("heads", []))
    heads = {n: getattr(policy, n) for n in saved if getattr(policy, n, None) is not None}
    cfg = getattr(policy, "cfg", None)
    saved_critic = meta.get("config", {}).get("critic_input", "features")
    if cfg is not None and getattr(cfg, "critic_input", saved_critic) != saved_critic:
        heads.pop("value_head", None)  # another critic input: the new critic starts fresh
    load_heads(path, heads, skip=tuple(saved - heads.keys()))


def load_heads(path: str | Path, heads: dict[str, nn.Module], skip: tuple[str, ...] = ()) -> None:
    """Load heads saved by :func:`save_heads`; any missing or unexpected key is an error.

    ``skip``: saved heads deliberately not loaded (e.g. a value head the new config drops).
    """
    from safetensors.torch import load_file

    f = Path(path, HEADS_FILE)
    tensors = load_file(str(f)) if f.is_file() else {}
    tensors = {k: v for k, v in tensors.items() if k.split(".", 1)[0] not in skip}
    expected = {f"{n}.{k}" for n, m in heads.items() for k in m.state_dict()}
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise RuntimeError(f"{f}: missing keys {missing}, unexpected keys {unexpected}")
    for name, mod in heads.items():
        prefix = name + "."
        mod.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                             if k.startswith(prefix)})


def save_checkpoint(path: str | Path, name: str, cfg: PolicyConfig, model: nn.Module,
                    processor: Any, heads: dict[str, nn.Module], **extra: Any) -> None:
    """Write the checkpoint directory described in the module docstring."""
    path = Path(path)
    (path / BASE_DIR).mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if is_peft(model) else model
    base.save_pretrained(str(path / BASE_DIR), state_dict=base_state_dict(model))
    if processor is not None:
        processor.save_pretrained(str(path / BASE_DIR))
    if is_peft(model):
        model.save_pretrained(str(path / ADAPTER_DIR), safe_serialization=True)
    save_heads(path, heads)
    write_policy_json(path, name, dataclasses.replace(cfg, use_lora=is_peft(model)),
                      heads=sorted(heads), **extra)


def load_base(path: str | Path, cfg: PolicyConfig, auto_class: str = "AutoModelForImageTextToText"):
    """Load ``(model, processor)`` from a local dir or hub id through the Auto classes.

    With ``trust_remote_code``, a checkpoint whose ``config.json`` ``auto_map`` names its class
    only under ``AutoModelForVision2Seq`` (OpenVLA; transformers 5 dropped that Auto class)
    is loaded through that remote class. Raises if the weights file does not match the
    architecture (missing/unexpected keys).
    """
    import transformers

    src = resolve_pretrained(path)
    loader = getattr(transformers, auto_class)
    legacy = _legacy_remote_class(src, auto_class) if cfg.trust_remote_code else None
    if legacy is not None:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        key, ref = legacy
        loader = get_class_from_dynamic_module(ref, src)
        # What register_for_auto_class(key) does, minus its check that transformers still has
        # the Auto class: save_pretrained then copies the remote .py files next to the weights,
        # so a saved policy loads again the same way.
        loader._auto_class = key
    model, info = loader.from_pretrained(
        src, dtype=torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code,
        output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if bad:
        raise RuntimeError(f"loading {src}: {bad}")
    processor = transformers.AutoProcessor.from_pretrained(
        src, trust_remote_code=cfg.trust_remote_code)
    return model, processor


LEGACY_AUTO_CLASSES = ("AutoModelForVision2Seq",)
"""``auto_map`` keys of Auto classes transformers 5 removed; their remote class is used when
the requested Auto class has no entry of its own."""


def _legacy_remote_class(src: str, auto_class: str) -> tuple[str, str] | None:
    """``(auto_map key, "module.Class")`` to load ``src`` with instead of ``auto_class``, or None."""
    f = Path(src, "config.json")
    auto_map = json.loads(f.read_text()).get("auto_map", {}) if f.is_file() else {}
    if auto_class in auto_map:
        return None
    key = next((k for k in LEGACY_AUTO_CLASSES if k in auto_map), None)
    if key is None:
        return None
    ref = auto_map[key]
    return key, ref[0] if isinstance(ref, (list, tuple)) else ref


def load_adapter(model: PreTrainedModel, path: str | Path) -> nn.Module:
    """Wrap ``model`` with the saved peft adapter at ``<path>/adapter`` (trainable).

    Uses ``set_peft_model_state_dict`` directly so the missing / unexpected adapter keys can
    be checked: any of them is an error.
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    adir = Path(path, ADAPTER_DIR)
    pcfg = PeftConfig.from_pretrained(str(adir))
    pcfg.inference_mode = False
    peft_model = get_peft_model(model, pcfg)
    weights = load_file(str(adir / "adapter_model.safetensors"))
    res = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in res.missing_keys if "lora_" in k]
    if missing or res.unexpected_keys:
        raise RuntimeError(f"{adir}: missing adapter keys {missing}, "
                           f"unexpected keys {list(res.unexpected_keys)}")
    return peft_model


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_pretrained(path: str | Path) -> str:
    """A local checkpoint directory, or a hub id found in the local HF cache.

    Never hangs offline: a hub id is looked up with ``local_files_only`` first; if it is not
    cached and ``HF_HUB_OFFLINE`` is set (or the download fails) the error says so plainly.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p)
    s = str(path)
    if not _HUB_ID.match(s) or s.startswith((".", "/", "~")):
        raise FileNotFoundError(f"policy path {s!r} is not an existing directory (nor a hub id "
                                "like 'org/model')")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(s, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise FileNotFoundError(f"{s!r} is neither a local directory nor in the Hugging Face "
                                "cache, "
                                "and HF_HUB_OFFLINE is set: download it on a networked machine "
                                "or pass a local checkpoint directory") from None
    try:
        return snapshot_download(s, etag_timeout=10)
    except Exception as err:  # noqa: BLE001 - any network/auth failure gets the same advice
        raise FileNotFoundError(f"could not fetch {s!r} from the Hugging Face hub "
                                f"({type(err).__name__}: {err}); pass a local checkpoint "
                                "directory or set HF_HUB_OFFLINE=1"
                                ) from None
