"""Model inputs of ``token_vla`` for any image-text-to-text family: prompt, encode, extend.

What differs between families and is handled here, generically:

* **Image placeholder** per camera: the processor's ``image_token`` (PaliGemma, Idefics3 /
  SmolVLM, LLaVA, Qwen2-VL), wrapped in ``<|vision_start|> .. <|vision_end|>`` when the
  tokenizer has them (Qwen-VL); none for processors without an image token (OpenVLA's
  inserts the patch features itself).
* **Pixel inputs**: every processor output besides the text tensors and ``labels`` is passed
  on (``pixel_values``, ``pixel_attention_mask``, ``image_grid_thw``, ``image_sizes``...),
  floating ones cast to the model's dtype.
* **Per-token inputs** (``*token_type_ids``: PaliGemma's ``token_type_ids``, Qwen's
  ``mm_token_type_ids``) are extended over the action tokens: 1 for ``token_type_ids``
  (PaliGemma's causal suffix), 0 = text for the others.
* **Position ids**, always explicit so a left-padded row gets the positions it has alone:
  ``cumsum(mask) - 1`` (+1 on PaliGemma, which counts from 1), or the model's multimodal
  RoPE index ``[3, N, L]`` when it has ``get_rope_index`` (Qwen2-VL / Qwen2.5-VL). Action
  tokens continue from the last prompt position (text: equal in all three M-RoPE rows).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

TEXT_KEYS = ("input_ids", "attention_mask")
DROPPED_KEYS = ("labels",)
"""Processor outputs never passed on (PaliGemma's processor returns prompt ``labels``)."""
SEQUENCE_FILL = {"token_type_ids": 1}
"""Value of a per-token input (``*token_type_ids``) on the action tokens; default 0 (text)."""


def image_placeholder(processor: Any) -> str:
    """The text written once per camera image (see the module docstring)."""
    token = getattr(processor, "image_token", None) or ""
    vocab = processor.tokenizer.get_vocab() if token else {}
    if "<|vision_start|>" in vocab and "<|vision_end|>" in vocab:
        return f"<|vision_start|>{token}<|vision_end|>"
    return token


def _rope_index_fn(model: nn.Module):
    """The model's multimodal-RoPE ``get_rope_index`` (Qwen-VL), or None."""
    for m in (model, getattr(model, "model", None)):
        fn = getattr(m, "get_rope_index", None)
        if callable(fn):
            return fn
    return None


def position_ids(model: nn.Module, batch: dict[str, torch.Tensor],
                 offset: int = 0) -> torch.Tensor:
    """``[N, L]`` positions of the (left-padded) prompt, or ``[3, N, L]`` with M-RoPE."""
    mask = batch["attention_mask"]
    rope_index = _rope_index_fn(model)
    if rope_index is not None and "image_grid_thw" in batch:
        params = inspect.signature(rope_index).parameters
        kwargs = {k: v for k, v in batch.items() if k in params and k != "position_ids"}
        return rope_index(**kwargs)[0]
    return (mask.cumsum(-1) - 1).clamp_min(0) + offset


def encode(processor: Any, model: nn.Module, images: list[list[Any]], prompts: list[str],
           offset: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Processor outputs (left-padded) on ``device`` + explicit ``position_ids``."""
    enc = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    batch = {}
    for k, v in enc.items():
        if not torch.is_tensor(v) or k in DROPPED_KEYS:
            continue
        v = v.to(device)
        batch[k] = v.to(dtype) if v.is_floating_point() and k not in TEXT_KEYS else v
    batch["position_ids"] = position_ids(model, batch, offset)
    return batch


def extend(batch: dict[str, torch.Tensor], feed: torch.Tensor) -> dict[str, torch.Tensor]:
    """``batch`` with the ids ``feed [N, m]`` appended: mask, positions and per-token inputs."""
    n, prefix = batch["input_ids"].shape
    m = feed.shape[1]
    full = dict(batch)
    full["input_ids"] = torch.cat([batch["input_ids"], feed], dim=1)
    full["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(feed)], dim=1)
    pos = batch["position_ids"]
    steps = torch.arange(1, m + 1, device=pos.device, dtype=pos.dtype)
    full["position_ids"] = torch.cat([pos, pos[..., -1:] + steps], dim=-1)
    for k, v in batch.items():
        if not k.endswith("token_type_ids"):
            continue
        if tuple(v.shape) != (n, prefix):
            raise ValueError(f"processor output {k!r} has shape {tuple(v.shape)}, expected "
                             f"[N, L] = {[n, prefix]} like input_ids")
        full[k] = torch.cat([v, torch.full_like(feed, SEQUENCE_FILL.get(k, 0)).to(v.dtype)], 1)
    return full


def check_forward_signature(model: nn.Module) -> None:
    """Refuse at load a model whose ``forward`` cannot take the inputs ``act`` / ``evaluate``
    pass (``position_ids`` for left-padded batches, ``logits_to_keep``, the KV cache), so it
    fails here and not with a TypeError at the first rollout. OpenVLA's Prismatic class never
    gets here: it runs through :func:`prismatic_forward`."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in ("position_ids", "logits_to_keep", "past_key_values") if k not in params]
    if missing:
        raise NotImplementedError(
            f"{type(model).__name__}.forward takes no {missing}: token_vla needs them for batched, "
            "left-padded decoding with a KV cache (docs/adding_a_vla.md: a model family without "
            "them needs a batched forward like vlarl/policies/token_vla/prismatic.py)")
