"""Uniform binning of continuous actions into discrete ids (RT-2 / OpenVLA style). Torch only.

Each action dimension is clipped to ``[low, high]`` and cut into ``bins`` equal-width bins;
an id maps back to its bin centre, so ``detokenize(tokenize(a))`` is within half a bin
width of ``clip(a)``. The same binning renders proprio state as text in ``token_vla``.
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
