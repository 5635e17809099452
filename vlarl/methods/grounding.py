"""Grounding pre-training: the VLA learns where the task's objects are before it learns to act.

Behaviour cloning on ~100 scripted demonstrations taught the tiny VLA an average motion, not one
that follows the cube: the first action's correlation with the cube's position stayed between
-0.22 and +0.07 over six SFT variants, and RL only traded one side of the table for the other
(docs/experiments/2026-12-07-success-by-position.md). Pictures of initial scenes are cheap (a
reset each, no expert), and the simulator knows where everything is. Two losses use that:

* pre-training (``sft.grounding_scenes`` scenes, ``sft.grounding_steps`` steps): a linear head on
  the policy's prompt features (``Policy.prompt_features``) regresses the scene's layout - the
  xyz of the task's ``layout_attrs`` actors (``ManiSkillVecEnv.layout_positions``),
  standardised - through the whole trainable policy;
* during SFT, ``sft.grounding_weight`` x the same loss on the layout of each demonstration's
  reset, so the action loss does not wash the grounding out.

The simulator state is a training target only, never an input, and the head is dropped: the
saved checkpoint is an ordinary policy. The held-out R^2 of the head (scenes it never trained
on) is the stage's own diagnostic, logged after pre-training and after SFT.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlarl.data import collate_chunks, load_demos
from vlarl.types import Obs

log = logging.getLogger(__name__)

SCENE_SEED = 500_000
"""First reset seed of the grounding scenes (demos start at ``data.seed``, eval at 1,000,000)."""
HELDOUT_FRACTION = 0.1
"""Share of the rendered scenes kept out of pre-training to measure the head's R^2."""


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per dimension; a constant dimension (std < 1e-6) maps to 0."""
    return torch.where(std > 1e-6, (x - mean) / std.clamp_min(1e-6), torch.zeros_like(x))


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination ``1 - SSE / SST`` pooled over the dimensions that vary
    (a constant dimension has nothing to explain); nan if none varies."""
    var = target.var(0, unbiased=False)
    keep = var > 1e-12
    if not bool(keep.any()):
        return float("nan")
    sse = ((pred - target)[:, keep] ** 2).sum()
    sst = ((target - target.mean(0))[:, keep] ** 2).sum()
    return float(1.0 - sse / sst)


def reset_layouts(env_cfg, seeds: list[int], desc: str = "grounding scenes"
                  ) -> tuple[list[Obs], torch.Tensor]:
    """Reset a one-env simulator at each seed: ``(first observations, layouts [S, 3 * L])``."""
    from tqdm.auto import tqdm

    from vlarl.envs import make_env

    env = make_env(dataclasses.replace(env_cfg, num_envs=1, num_workers=0, backend="inline"))
    obs, layout = [], []
    try:
        for s in tqdm(seeds, desc=desc, unit="scene", disable=len(seeds) < 50):
            obs.append(env.reset([int(s)]))
            layout.append(env.layout_positions()[0])
    finally:
        env.close()
    return obs, torch.stack(layout)


class SceneDataset(torch.utils.data.Dataset):
    """Rendered initial scenes as SFT-style items without actions, each with its layout."""

    def __init__(self, obs: list[Obs], targets: torch.Tensor):
        self.obs, self.targets = obs, targets

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        o = self.obs[i]
        return {"images": o.images[0], "state": o.state[0], "instruction": o.instructions[0],
                "grounding": self.targets[i]}


class WithLayouts(torch.utils.data.Dataset):
    """An SFT dataset whose items also carry the layout of their episode's reset."""

    def __init__(self, data: torch.utils.data.Dataset, targets: torch.Tensor):
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} samples but {len(targets)} layouts")
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.data[i], "grounding": self.targets[i]}


def collate_grounded(items: list[dict[str, Any]]
                     ) -> tuple[Obs, torch.Tensor | None, torch.Tensor]:
    """``collate_chunks`` plus the stacked layouts: ``(obs, actions | None, targets [B, D])``."""
    obs, actions = collate_chunks(items)
    return obs, actions, torch.stack([it["grounding"] for it in items])


@dataclasses.dataclass
class Grounding:
    """The stage's state between pre-training and SFT: the head, the target scale and the
    held-out scenes."""

    head: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    train: SceneDataset
    heldout: SceneDataset

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE of the head's prediction from prompt features ``[N, H]`` (targets standardised)."""
        pred = self.head(features)
        return nn.functional.mse_loss(pred, targets.to(pred))

    @torch.no_grad()
    def heldout_r2(self, policy: nn.Module, batch_size: int = 32) -> float:
        """R^2 of the head on the held-out scenes (never trained on)."""
        was_training = policy.training
        policy.eval()
        preds = []
        for i in range(0, len(self.heldout), batch_size):
            obs, _, _ = collate_grounded([self.heldout[j] for j in
                                          range(i, min(i + batch_size, len(self.heldout)))])
            preds.append(self.head(policy.prompt_features(obs)).float().cpu())
        policy.train(was_training)
        return r2_score(torch.cat(preds), self.heldout.targets)


def prepare(policy: nn.Module, cfg) -> Grounding:
    """Render ``sft.grounding_scenes`` scenes (+ ``HELDOUT_FRACTION`` more, held out), fit the
    target scale on the training ones, and build a head (drawn from torch's seeded generator)
    sized from one forward of the policy."""
    n = cfg.sft.grounding_scenes
    held = max(8, round(n * HELDOUT_FRACTION))
    obs, layout = reset_layouts(cfg.env, list(range(SCENE_SEED, SCENE_SEED + n + held)))
    mean, std = layout[:n].mean(0), layout[:n].std(0)
    targets = standardize(layout, mean, std)
    train = SceneDataset(obs[:n], targets[:n])
    heldout = SceneDataset(obs[n:], targets[n:])
    with torch.no_grad():
        width = policy.prompt_features(collate_grounded([train[0]])[0]).shape[-1]
    head = nn.Linear(width, layout.shape[1])
    return Grounding(head, mean, std, train, heldout)


def demo_targets(cfg, path: str | Path, data: torch.utils.data.Dataset, g: Grounding) -> torch.Tensor:
    """Standardised layout of each SFT sample's episode reset: one reset per demo seed. ``data``
    is the one dataset's part of ``sft_dataset`` (its ``ChunkDataset``, or a ``Subset`` of rows)."""
    seeds = np.asarray(load_demos(path).with_format("numpy")["seed"], dtype=np.int64)
    unique = sorted(set(seeds.tolist()))
    _, layout = reset_layouts(cfg.env, unique, desc="demo layouts")
    by_seed = dict(zip(unique, standardize(layout, g.mean, g.std)))
    rows = torch.stack([by_seed[int(s)] for s in seeds])
    indices = getattr(data, "indices", None)
    return rows if indices is None else rows[torch.as_tensor(list(indices))]
