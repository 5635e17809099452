"""A saved vlarl policy directory, written by :func:`save_checkpoint` and read back by each
policy's ``from_pretrained``::

    <dir>/vlarl_policy.json   {"policy": name, "config": its config's fields, "format": 1,
                               "heads": [saved head names], ...extras}
    <dir>/base/               model.save_pretrained + processor.save_pretrained
    <dir>/adapter/            peft adapter (safetensors), only with LoRA
    <dir>/heads.safetensors   value head and other small heads ("<head>.<param>")

Loading reports missing / unexpected keys and refuses any (a silent partial load would train a
random head or adapter). :func:`resolve_pretrained` takes a local directory or a hub id and
fails fast when offline; :func:`refuse_changed` refuses a run config that changes what the
saved model reads or writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlarl.config import PolicyConfig, set_field
from vlarl.policies.common import is_peft, torch_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel

POLICY_FILE = "vlarl_policy.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapter"
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1


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


def write_policy_json(path: str | Path, name: str, cfg: PolicyConfig, **extra: Any) -> None:
    """Write ``vlarl_policy.json``: policy name, its config's fields, format version, extras."""
    data = {"policy": name, "format": FORMAT_VERSION, "config": dataclasses.asdict(cfg), **extra}
    Path(path, POLICY_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))


def read_policy_json(path: str | Path, legacy: dict | None = None,
                     **overrides: Any) -> tuple[str, PolicyConfig, dict]:
    """Read ``vlarl_policy.json`` -> ``(policy name, its config with overrides, raw dict)``.

    Overrides use the policy's config field names (``temperature=0.5``); unknown names raise
    :class:`ConfigError` listing the allowed ones. ``legacy``: the value of each field a
    checkpoint saved before that field existed was trained with (added to the raw dict too).
    """
    f = Path(path, POLICY_FILE)
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a vlarl policy directory: {POLICY_FILE} not found")
    data = json.loads(f.read_text())
    cfg = PolicyConfig.for_name(data["policy"])()
    saved = data.setdefault("config", {})
    for key, value in (legacy or {}).items():
        saved.setdefault(key, value)
    # An override of None never erases a saved value: ``from_config`` passes every field of
    # the run's PolicyConfig, and the data-derived ones (the SFT demos' ``state_low`` /
    # ``state_high``) are None there - RL would otherwise bin the state on another scale than
    # the one the checkpoint was trained on.
    kept = {k: v for k, v in overrides.items() if v is not None or saved.get(k) is None}
    # ``state_range``: ``fixed`` asks for the state binned on [-4, 4] whatever range the
    # checkpoint was trained on (its lists are dropped); ``demos`` (every run's default)
    # keeps the checkpoint's own range and setting.
    if kept.get("state_range") == "demos" and "state_range" in saved:
        kept.pop("state_range")
    # a checkpoint saved when one config class held every policy's fields also wrote the
    # other policies' (at their defaults): only this policy's are read back
    own = {f.name for f in dataclasses.fields(cfg)}
    for key, value in {**{k: v for k, v in saved.items() if k in own}, **kept}.items():
        set_field(cfg, key, value, "policy.")
    if kept.get("state_range") == "fixed":
        cfg.state_low = cfg.state_high = None
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
