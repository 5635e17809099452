"""Uniform binning of continuous actions into discrete ids (RT-2 / OpenVLA style). Torch only.

Each action dimension is clipped to ``[low, high]`` and cut into ``bins`` equal-width bins;
an id maps back to its bin centre, so ``detokenize(tokenize(a))`` is within half a bin
width of ``clip(a)``. The same binning renders proprio state as text in ``token_vla``.

:class:`OpenVLAActionTokenizer` reproduces OpenVLA's convention (``policy.action_token_layout:
openvla``) behind the same interface: its ids are positions in the block of ``bins`` action
ids (``token_vla`` adds the block's first id), in OpenVLA's descending order.
"""

from __future__ import annotations

import torch


class ActionTokenizer:
    """``tokenize``: float ``[..., A]`` -> int64 bin ids in ``[0, bins)``; ``detokenize`` inverts.

    ``low`` / ``high`` are scalars or per-dimension sequences of length A.
    """

    def __init__(self, bins: int, low: float | list[float] = -1.0, high: float | list[float] = 1.0):
        if bins < 2:
            raise ValueError(f"bins={bins} must be >= 2")
        self.bins = int(bins)
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.high = torch.as_tensor(high, dtype=torch.float32)
        if not bool((self.low < self.high).all()):
            raise ValueError(f"low={low} must be < high={high} in every dimension")

    @property
    def bin_width(self) -> torch.Tensor:
        return (self.high - self.low) / self.bins

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        """Bin ids (int64, same shape) of ``actions`` after clipping to ``[low, high]``."""
        a = actions.float()
        low, high = self.low.to(a.device), self.high.to(a.device)
        a = torch.minimum(torch.maximum(a, low), high)
        ids = torch.floor((a - low) / (high - low) * self.bins).long()
        return ids.clamp_(0, self.bins - 1)  # a == high falls in the last bin

    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        """Bin centres (float32) of ``ids``; ids outside ``[0, bins)`` are clipped."""
        ids = ids.long().clamp(0, self.bins - 1).float()
        low, high = self.low.to(ids.device), self.high.to(ids.device)
        return low + (ids + 0.5) * (high - low) / self.bins

    def __repr__(self) -> str:
        return (f"ActionTokenizer(bins={self.bins}, low={self.low.tolist()}, "
                f"high={self.high.tolist()})")


class OpenVLAActionTokenizer(ActionTokenizer):
    """OpenVLA's binning (``prismatic/vla/action_tokenizer.py``), as positions in an id block.

    OpenVLA puts ``bins`` uniform *edges* on ``[low, high]`` (``bins - 1`` intervals), takes
    ``d = np.digitize(clip(a), edges)`` in ``1..bins`` and emits the vocabulary id
    ``vocab_size - d``. ``token_vla`` addresses the ``bins`` ids ``vocab_size - bins ..
    vocab_size - 1`` as a block starting at ``vocab_size - bins``, so the position is
    ``bins - d`` (descending: ``a = high`` -> 0, ``a = low`` -> ``bins - 1``). Decoding maps
    ``d`` to the centre of interval ``clip(d - 1, 0, bins - 2)`` as OpenVLA does, so positions
    0 and 1 both decode to the last interval's centre.
    """

    @property
    def bin_width(self) -> torch.Tensor:
        return (self.high - self.low) / (self.bins - 1)

    def _edges(self, device: torch.device) -> torch.Tensor:
        """``[bins]`` (scalar range) or ``[A, bins]`` edges, float64 like ``np.linspace``."""
        low, high = self.low.double().to(device), self.high.double().to(device)
        frac = torch.linspace(0.0, 1.0, self.bins, dtype=torch.float64, device=device)
        return low[..., None] + (high - low)[..., None] * frac

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        """Positions ``bins - digitize(clip(a), edges)`` (int64, same shape as ``actions``)."""
        a = actions.double()
        edges = self._edges(a.device)
        a = torch.minimum(torch.maximum(a, edges[..., 0]), edges[..., -1])
        digitized = (a[..., None] >= edges).sum(-1)  # np.digitize: count of edges <= a
        return (self.bins - digitized).long()

    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        """Centre of the interval OpenVLA decodes position ``ids`` to (float32)."""
        digitized = self.bins - ids.long().clamp(0, self.bins - 1)
        edges = self._edges(ids.device)
        centres = (edges[..., :-1] + edges[..., 1:]) / 2  # [bins - 1] or [A, bins - 1]
        idx = (digitized - 1).clamp(0, self.bins - 2)
        if centres.dim() == 1:
            return centres[idx].float()
        return centres.expand(*idx.shape, -1).gather(-1, idx[..., None]).squeeze(-1).float()



def action_ids(tokenizer, base_model, cfg) -> tuple[int, ActionTokenizer]:
    """The first action id in the vocabulary and the action tokenizer of
    ``cfg.action_token_layout`` (``cfg``: a ``TokenVLAConfig``); ``ValueError`` names the
    field when the layout, the bins or the tokenizer's ``<act_0>`` do not fit the model."""
    if cfg.action_token_layout == "openvla":
        # OpenVLA: ids tokenizer.vocab_size - 1..bins (Llama: 31744..31999), not the padded
        # embedding's last rows (32064); see OpenVLAActionTokenizer.
        vocab, tokenizer_cls = tokenizer.vocab_size, OpenVLAActionTokenizer
    elif cfg.action_token_layout == "vlarl":
        vocab = base_model.get_output_embeddings().weight.shape[0]
        tokenizer_cls = ActionTokenizer
    else:
        raise ValueError(f"policy.action_token_layout={cfg.action_token_layout!r} is not "
                         "allowed; choose one of ['openvla', 'vlarl']")
    if cfg.action_bins >= vocab:
        raise ValueError(f"policy.action_bins={cfg.action_bins} must be < the vocabulary "
                         f"size {vocab} (action ids are its last bins)")
    start = vocab - cfg.action_bins
    named = (tokenizer.convert_tokens_to_ids("<act_0>") if "<act_0>" in tokenizer.get_vocab()
             else None)
    if cfg.action_token_layout == "vlarl" and named not in (None, start):
        raise ValueError(f"tokenizer's <act_0> has id {named} but policy.action_bins="
                         f"{cfg.action_bins} puts bin 0 at id {start}")
    return start, tokenizer_cls(cfg.action_bins, cfg.action_low, cfg.action_high)
