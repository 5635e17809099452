"""A batched, left-padded forward for OpenVLA's Prismatic models (``token_vla`` uses it).

OpenVLA's remote ``PrismaticForConditionalGeneration.forward`` takes no ``position_ids`` and
no ``logits_to_keep``, decodes with a KV cache at batch 1 only, and inserts the projected
image patches after the first token of every row, which is ``<BOS>`` only without left
padding. RL needs batched decoding of left-padded prompts and one teacher-forced forward
over a minibatch, so :func:`prismatic_forward` computes the same function from the model's
own parts (``vision_backbone``, ``projector``, ``language_model``), as RLinf's OpenVLA actor
does, with the arguments every other family's ``forward`` takes:

* **Prefill / teacher forcing** (``pixel_values`` given): text embeddings and patch
  embeddings are laid out per row as ``[pads, BOS, patches, rest of the text]`` - Prismatic's
  order with the padding in front - and the language model gets explicit positions
  ``cumsum(mask) - 1``, so a left-padded row computes what it computes alone.
* **Cached decoding** (``past_key_values`` given): the attention mask (text positions only,
  as the caller keeps it) is widened by the patch count and the positions continue from it.
* Outputs are in the caller's text layout: ``hidden_states`` have the patch positions
  removed (position ``t`` is the ``t``-th input id), ``logits_to_keep`` counts from the end,
  and ``labels`` are ignored (-100) on the patches, as Prismatic does.

:func:`is_prismatic` decides at load which models need it; everything else keeps its own
``forward``. Adapters (LoRA) live inside the parts, so peft's layers and
``disable_adapter()`` apply unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
PARTS = ("vision_backbone", "projector", "language_model")


def is_prismatic(model: nn.Module) -> bool:
    """True for a Prismatic-style model (OpenVLA) whose ``forward`` lacks ``position_ids``."""
    import inspect

    if not all(hasattr(model, p) for p in PARTS):
        return False
    return "position_ids" not in inspect.signature(model.forward).parameters


def _leading_pads(mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` number of leading zeros of each row; refuses masks with holes (right padding)."""
    pads = (mask.cumsum(-1) == 0).sum(-1)
    if not torch.equal(mask.sum(-1), mask.shape[1] - pads):
        raise ValueError("prismatic_forward needs left padding (every 0 of attention_mask "
                         "before every 1); set the tokenizer's padding_side to 'left'")
    return pads


def _layout(pads: torch.Tensor, length: int, patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices into ``cat([text (L), patches (P)])`` that give each row
    ``[pads, BOS, patches, rest]`` (``[N, L+P]``), and the text positions in that layout
    (``[N, L]``)."""
    j = torch.arange(length + patches, device=pads.device)[None]
    rel = j - pads[:, None]  # 0 at BOS
    src = torch.where(rel <= 0, j, torch.where(rel <= patches, length + rel - 1, j - patches))
    t = torch.arange(length, device=pads.device)[None]
    text_at = torch.where(t <= pads[:, None], t, t + patches)
    return src, text_at


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[n, idx[n, i]]`` for ``x`` of shape ``[N, L, ...]``."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def prismatic_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None,
                      past_key_values: Any = None, labels: torch.Tensor | None = None,
                      logits_to_keep: int = 0, output_hidden_states: bool = False,
                      use_cache: bool | None = None, **_ignored: Any):
    """The Prismatic model's output for a left-padded batch (see the module docstring).

    ``position_ids`` and the other per-family inputs a caller passes are ignored: positions
    follow from the attention mask once the patches are laid in.
    """
    lm = model.language_model
    mask = attention_mask
    pads = _leading_pads(mask)
    common = {"use_cache": use_cache, "logits_to_keep": logits_to_keep,
              "output_hidden_states": output_hidden_states}
    if past_key_values is not None and pixel_values is None:  # cached decoding
        if labels is not None:
            raise ValueError("labels with past_key_values: teacher forcing takes one forward")
        patches = past_key_values.get_seq_length() + input_ids.shape[1] - mask.shape[1]
        full = torch.arange(mask.shape[1] + patches, device=mask.device)[None] >= pads[:, None]
        full = full.to(mask.dtype)
        pos = (full.cumsum(-1) - 1)[:, -input_ids.shape[1]:]
        return lm(input_ids=input_ids, attention_mask=full, position_ids=pos,
                  past_key_values=past_key_values, **common)
    if pixel_values is None:
        raise ValueError("prismatic_forward without a cache needs pixel_values")
    if past_key_values is not None and past_key_values.get_seq_length() > 0:
        raise ValueError("pixel_values with a non-empty cache: the image goes in the prefill")
    feats = model.projector(model.vision_backbone(pixel_values))  # [N, P, D]
    text = model.get_input_embeddings()(input_ids)  # [N, L, D]
    n, length = input_ids.shape
    src, text_at = _layout(pads, length, feats.shape[1])
    embeds = _take(torch.cat([text, feats.to(text.dtype)], 1), src)
    full = _take(torch.cat([mask, mask.new_ones(n, feats.shape[1])], 1), src)
    pos = (full.cumsum(-1) - 1).clamp_min(0)
    lab = None
    if labels is not None:
        lab = _take(torch.cat([labels, labels.new_full((n, feats.shape[1]), IGNORE_INDEX)], 1), src)
    out = lm(inputs_embeds=embeds, attention_mask=full, position_ids=pos, labels=lab,
             past_key_values=past_key_values, **common)
    if output_hidden_states and out.hidden_states is not None:
        out.hidden_states = tuple(_take(h, text_at) for h in out.hidden_states)
    if out.logits is not None and out.logits.shape[1] == length + feats.shape[1]:
        out.logits = _take(out.logits, text_at)  # all positions kept: the text layout too
    return out
