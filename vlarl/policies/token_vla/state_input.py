"""Proprioception as one continuous input vector (``policy.state_input: embedding``).

The token VLA reads the robot's state in one of two ways. ``text`` (RT-2 / OpenVLA): each
dimension binned to 0..255 and written into the prompt as numbers. ``embedding``
(OpenVLA-OFT, pi0): the prompt ends with the word ``state:`` and a small MLP maps the state,
normalised to [-1, 1] on the policy's state range, to one vector that is added to that last
prompt token's input embedding. The MLP's output layer starts at zero, so before training
the model reads exactly the prompt without the state.

The vector enters through a forward hook on the backbone's input-embedding module, at one
column of the prompt, so the backbone's own forward (images merged, masks, KV cache) runs
unchanged; the hook is installed only around the forwards that contain the prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vlarl.policies.common import pad_state
from vlarl.policies.token_vla.action_tokenizer import ActionTokenizer

STATE_BINS = 256
"""Bins of the proprio state rendered as text (``state_input: text``)."""
STATE_RANGE = 4.0
"""Without a demos range the state is clipped / scaled on [-STATE_RANGE, STATE_RANGE] (joint
angles in rad)."""
DEFAULT_WIDTH = 32
"""Projector input width when the config names no state length (no demos range, no sizes)."""


class StateProjector(nn.Module):
    """``state [N, D]`` -> ``[N, hidden]``: zero-pad to ``width``, scale to [-1, 1] on
    ``[low, high]`` (clipped at +-1.5), 2-layer MLP with a zero-initialised output layer."""

    def __init__(self, width: int, hidden: int, low: list[float] | float, high: list[float] | float):
        super().__init__()
        self.width = width
        lo = torch.as_tensor(low, dtype=torch.float32).expand(width).clone()
        hi = torch.as_tensor(high, dtype=torch.float32).expand(width).clone()
        self.register_buffer("low", lo, persistent=False)
        self.register_buffer("span", (hi - lo).clamp_min(1e-6), persistent=False)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x = pad_state(state, self.width, "the policy's state projector is narrower")
        x = ((x.to(self.low.device) - self.low) / self.span * 2 - 1).clamp(-1.5, 1.5)
        return self.net(x.to(self.net[0].weight.dtype))


def projector_for(cfg, hidden: int) -> StateProjector | None:
    """The projector ``cfg`` asks for (None unless ``use_state`` and ``state_input: embedding``);
    its width is the state range's length, else the longest trained state, else
    :data:`DEFAULT_WIDTH`."""
    if not (cfg.use_state and cfg.state_input == "embedding"):
        return None
    if cfg.state_low is not None:
        return StateProjector(len(cfg.state_low), hidden, cfg.state_low, cfg.state_high)
    width = max(cfg.state_sizes) if cfg.state_sizes else DEFAULT_WIDTH
    return StateProjector(width, hidden, -STATE_RANGE, STATE_RANGE)


def state_tokenizer(cfg) -> ActionTokenizer:
    """The bins of the state as text: :data:`STATE_BINS` on the policy's state range, else on
    [-STATE_RANGE, STATE_RANGE]."""
    return ActionTokenizer(STATE_BINS, cfg.state_low if cfg.state_low is not None else -STATE_RANGE,
                           cfg.state_high if cfg.state_high is not None else STATE_RANGE)


def state_words(state: torch.Tensor, low: list[float] | None, tokenizer=None) -> str:
    """The prompt's state suffix for one env: " state: 12 200 ..." (``state [D]`` binned by
    ``tokenizer`` on the policy's range; a multi-task base pads shorter states to its
    ``low``'s length) or, without a tokenizer (``state_input: embedding``), " state:", the
    token the projected state is added to."""
    if tokenizer is None:
        return " state:"
    state = state.float().cpu()
    if low is not None:
        state = pad_state(state, len(low), "the SFT demos had fewer state dims than this env")
    return " state: " + " ".join(map(str, tokenizer.tokenize(state).tolist()))


@contextlib.contextmanager
def added_at(embedding: nn.Module, column: int, vectors: torch.Tensor | None) -> Iterator[None]:
    """While inside, the output of ``embedding`` gets ``vectors [N, H]`` added at sequence
    position ``column`` of every row, in forwards whose input reaches that column (a KV-cache
    decoding step of one token does not). ``vectors`` None: nothing is added."""
    if vectors is None:
        yield
        return

    def hook(_module, _args, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3 or out.shape[1] <= column:
            return out
        delta = torch.zeros_like(out)
        delta[:, column] = vectors.to(out.dtype)
        return out + delta

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
