"""A small, fast Gaussian student policy: the target of distilling a VLA teacher.

Why it exists: a token VLA decodes k*A tokens autoregressively per decision; a ~0.4 M
parameter CNN+MLP emits the same ``[k, A]`` chunk in one forward pass, orders of magnitude
faster at batch 1 (see ``vlarl.methods.distill`` for the measured ratio).

Architecture (``obs -> features -> heads``)::

    images uint8 [N, cams, H, W, 3] -> /255 - 0.5 -> shared 3-layer CNN per camera
        -> adaptive 4x4 average pool -> Linear(512, 128) -> mean over cameras
    instruction -> lower-cased words -> crc32(word) % vocab_size -> EmbeddingBag(mean)
    state float [N, D] -> zero-padded to ``state_dim`` -> MLP(64)
    concat -> trunk MLP(256, 256) -> action mean [k*A]   (+ state-independent log-std)
                                  -> ValueHead -> V(s)   (PPO critic, optional)

With ``policy.student_input: privileged`` (a state-based RL expert, RLDG) images, words and
proprioception are ignored; the input is the simulator state ``Obs.privileged`` zero-padded
to ``policy.privileged_dim``::

    privileged [N, P] -> pad to privileged_dim -> Linear + tanh (256) -> trunk -> action mean
    privileged [N, P] -> pad -> ValueHead(depth 2) -> V(s)   (a separate critic network on
                                                               the same input, as CleanRL's
                                                               and ManiSkill's state PPO)

Instructions are hashed word by word into a fixed-size ``nn.EmbeddingBag`` ("hashing
trick", Weinberger et al. 2009): no tokenizer to download or ship, any vocabulary works,
and collisions only merge rare words. ``zlib.crc32`` (not ``hash()``, which Python salts
per process) keeps the ids identical across processes and machines.

Actions: ``act`` samples ``a ~ N(mean, exp(log_std)^2)`` per dimension (deterministic ->
the mean); the env receives ``clip(a, -1, 1)``, while the unclipped sample is kept in
``stored["raw_actions"]`` so ``evaluate`` recomputes exactly the same Gaussian log-prob
(summed over the k*A dimensions), the way CleanRL's continuous PPO does.

Checkpoint: ``vlarl_policy.json`` (policy name, its config, ``student`` architecture
sizes) + ``model.safetensors``; ``load_policy`` / ``vlarl eval`` load it like any policy.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlarl.policies import POLICIES
from vlarl.policies.base import Policy
from vlarl.policies.common import ValueHead, pad_state, privileged_input
from vlarl.policies.mlp_student.configuration_mlp_student import MLPStudentConfig
from vlarl.policies.saving import POLICY_FILE, read_policy_json, write_policy_json
from vlarl.types import ActOutput, Obs

NAME = "mlp_student"
WEIGHTS_FILE = "model.safetensors"
STATE_DIM = 32
"""Width of the state input: shorter states are zero-padded (the Panda's is 16)."""
VOCAB_SIZE = 4096
"""Hash buckets of the instruction embedding."""
LOG_STD_INIT = -1.0
"""Initial log-std (std 0.37): exploration noise for RL fine-tuning that does not swamp
a behaviour-cloned mean in [-1, 1]."""
_WORD = re.compile(r"[a-z0-9]+")


def hash_words(text: str, vocab_size: int = VOCAB_SIZE) -> list[int]:
    """Bucket ids of the lower-cased words of ``text`` (stable across processes)."""
    return [zlib.crc32(w.encode()) % vocab_size for w in _WORD.findall(text.lower())]


class ImageEncoder(nn.Module):
    """uint8 ``[N, cams, H, W, 3]`` -> ``[N, out]`` (shared CNN, mean over cameras).

    Adaptive pooling to 4x4 keeps coarse "where is the cube" information at any image
    size; averaging over cameras makes the weights independent of the camera count.
    """

    def __init__(self, out: int = 128, width: int = 32):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, width // 2, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, out), nn.ReLU())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, cams, h, w, c = images.shape
        x = images.reshape(n * cams, h, w, c).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.conv(x).view(n, cams, -1).mean(1)


@POLICIES.register(NAME)
class MLPStudentPolicy(Policy):
    """CNN + hashed-instruction + state MLP -> Gaussian action chunk and value; see module doc."""

    def __init__(self, cfg: MLPStudentConfig, state_dim: int = STATE_DIM, vocab_size: int = VOCAB_SIZE,
                 hidden: int = 256):
        super().__init__()
        if cfg.chunk_size < 1 or cfg.action_dim < 1:
            raise ValueError(f"policy.chunk_size={cfg.chunk_size} and policy.action_dim="
                             f"{cfg.action_dim} must both be >= 1")
        if cfg.student_input not in ("full", "privileged"):
            raise ValueError(f"policy.student_input={cfg.student_input!r} is not allowed; "
                             "choose one of ['full', 'privileged']")
        self.cfg = dataclasses.replace(cfg, name=NAME, path=None)
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        self.arch = {"state_dim": state_dim, "vocab_size": vocab_size, "hidden": hidden}
        out = cfg.chunk_size * cfg.action_dim
        self.image_encoder = self.text_encoder = self.state_encoder = None
        self.privileged_encoder = None
        if self.needs_privileged_state:
            self.privileged_encoder = nn.Sequential(nn.Linear(cfg.privileged_dim, hidden), nn.Tanh())
            feat = hidden
        else:
            self.image_encoder = ImageEncoder()
            self.text_encoder = nn.EmbeddingBag(vocab_size, 32, mode="mean")
            self.state_encoder = nn.Sequential(nn.Linear(state_dim, 64), nn.ReLU()) \
                if cfg.use_state else None
            feat = 128 + 32 + (64 if cfg.use_state else 0)
        self.trunk = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.action_mean = nn.Linear(hidden, out)
        # Small initial means: the untrained student starts near "do nothing".
        nn.init.normal_(self.action_mean.weight, std=0.01)
        nn.init.zeros_(self.action_mean.bias)
        self.log_std = nn.Parameter(torch.full((out,), LOG_STD_INIT))
        self.value_head = None
        if cfg.value_head:
            self.value_head = ValueHead(cfg.privileged_dim, depth=2) \
                if self.needs_privileged_state else ValueHead(hidden, width=64)

    @property
    def needs_privileged_state(self) -> bool:
        """True when the policy reads ``Obs.privileged`` (``vlarl eval`` / ``collect`` then
        switch ``env.privileged_state`` on)."""
        return self.cfg.student_input == "privileged"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: MLPStudentConfig) -> MLPStudentPolicy:
        """A fresh student (``cfg.path`` None) or a saved one (``cfg.path`` a student dir)."""
        if cfg.path is not None:
            fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("path", "name")}
            return cls.from_pretrained(cfg.path, **fields)
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> MLPStudentPolicy:
        """Load ``save_pretrained`` output; ``overrides`` are :class:`MLPStudentConfig` fields.

        ``value_head=False`` drops a saved critic; changing ``chunk_size``/``action_dim``
        is refused (the action head's shape is fixed by the checkpoint).
        """
        from safetensors.torch import load_file

        overrides.pop("name", None)
        overrides.pop("path", None)
        name, cfg, meta = read_policy_json(path, **overrides)
        if name != NAME:
            raise ValueError(f"{path} holds a {name!r} policy, not {NAME!r}")
        saved = meta["config"]
        for key in ("chunk_size", "action_dim", "use_state", "student_input", "privileged_dim"):
            if getattr(cfg, key) != saved[key]:
                raise ValueError(f"{key}={getattr(cfg, key)} differs from the checkpoint's "
                                 f"{key}={saved[key]} at {path}; the student's heads are fixed")
        policy = cls(cfg, **meta["student"])
        tensors = load_file(str(Path(path, WEIGHTS_FILE)))
        if policy.value_head is None:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("value_head.")}
        missing, unexpected = policy.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{path}/{WEIGHTS_FILE}: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
        return policy.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """``vlarl_policy.json`` + ``model.safetensors`` (all weights, including log-std)."""
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(Path(path, WEIGHTS_FILE)))
        write_policy_json(path, NAME, self.cfg, student=self.arch,
                          heads=["value_head"] if self.value_head is not None else [])

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    # ------------------------------------------------------------------ features

    def _state(self, state: torch.Tensor) -> torch.Tensor:
        return pad_state(state, self.arch["state_dim"],
                         f"build it with MLPStudentPolicy(cfg, state_dim>={state.shape[1]})")

    def _privileged(self, obs: Obs) -> torch.Tensor:
        return privileged_input(obs, self.cfg.privileged_dim, self.device,
                                "policy.student_input=privileged")

    def features(self, obs: Obs) -> torch.Tensor:
        """Trunk features ``[N, hidden]`` of a batch of observations."""
        if self.privileged_encoder is not None:
            return self.trunk(self.privileged_encoder(self._privileged(obs)))
        dev = self.device
        ids = [hash_words(s, self.arch["vocab_size"]) for s in obs.instructions]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=dev)
        offsets = torch.tensor([0] + [len(r) for r in ids[:-1]], device=dev).cumsum(0)
        parts = [self.image_encoder(obs.images.to(dev)), self.text_encoder(flat, offsets)]
        if self.state_encoder is not None:
            parts.append(self.state_encoder(self._state(obs.state.to(dev))))
        return self.trunk(torch.cat(parts, dim=-1))

    def _value(self, obs: Obs, feats: torch.Tensor | None) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        return self.value_head(self._privileged(obs) if self.needs_privileged_state else feats)

    def _dist(self, feats: torch.Tensor) -> torch.distributions.Normal:
        mean = self.action_mean(feats)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    # ------------------------------------------------------------------ protocol

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        """One forward: sample (or take the mean of) the chunk; env actions are clipped to [-1, 1]."""
        feats = self.features(obs)
        dist = self._dist(feats)
        if deterministic:
            raw = dist.mean
        else:
            noise = torch.randn(dist.mean.shape, generator=generator, device="cpu").to(self.device)
            raw = dist.mean + dist.stddev * noise
        log_probs = dist.log_prob(raw).sum(-1)
        values = self._value(obs, feats)
        actions = raw.clamp(-1.0, 1.0).view(len(obs), self.chunk_size, self.action_dim)
        return ActOutput(actions=actions, log_probs=log_probs, values=values,
                         stored={"raw_actions": raw})

    def evaluate(self, obs: Obs, stored: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(log_probs [N], entropy [N], values [N] | None)`` of the stored unclipped samples."""
        feats = self.features(obs)
        dist = self._dist(feats)
        raw = stored["raw_actions"].to(self.device)
        values = self._value(obs, feats)
        return dist.log_prob(raw).sum(-1), dist.entropy().sum(-1), values

    def value(self, obs: Obs) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        return self._value(obs, None if self.needs_privileged_state else self.features(obs))

    def predict(self, obs: Obs) -> torch.Tensor:
        """Mean action chunk ``[N, k, A]`` with grad (unclipped): the regression output."""
        return self.action_mean(self.features(obs)).view(len(obs), self.chunk_size, self.action_dim)

    def sft_loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        """Behaviour cloning: MSE between the mean chunk and target ``actions [N, k, A]``."""
        if tuple(actions.shape[1:]) != (self.chunk_size, self.action_dim):
            raise ValueError(f"actions shape {tuple(actions.shape)} must be [N, {self.chunk_size}, "
                             f"{self.action_dim}] (policy.chunk_size, policy.action_dim)")
        return nn.functional.mse_loss(self.predict(obs), actions.to(self.device).float())


def gaussian_entropy(log_std: torch.Tensor) -> float:
    """Entropy of a diagonal Gaussian with these log-stds (sum over dims), for tests/docs."""
    return float((0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum())


def is_student_dir(path: str | Path) -> bool:
    """True if ``path`` holds a saved :class:`MLPStudentPolicy`."""
    f = Path(path, POLICY_FILE)
    if not f.is_file():
        return False
    import json

    return json.loads(f.read_text()).get("policy") == NAME
