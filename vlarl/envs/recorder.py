"""Record the episodes a policy plays through any :class:`VecEnv`; keep the successful ones.

iRe-VLA (Guo et al. 2025) fine-tunes on the RL phase's *successful rollouts* plus the
demonstrations. :class:`SuccessRecorder` wraps the env the RL trainer steps
(``vlarl.trainer.train(cfg, make_env_fn=...)``) and sees exactly what the policy saw and
did; :func:`write_episodes` stores the kept episodes in vlarl's demonstration format
(``docs/dataset.md``), and :func:`decision_rows` says which rows are SFT samples.

Row layout (why not one row per decision): the format's ``action`` column holds one
``A``-vector, and :class:`vlarl.data.ChunkDataset` makes the SFT target of row ``t`` from the
actions of rows ``t .. t+k-1``. So a chunk of ``k`` actions must span ``k`` rows: the
recorder writes **one row per executed control step** (``steps[i]`` rows per chunk, so
``total_frames`` = executed steps and ``timestamp`` keeps the demos' meaning), and every row
of a chunk carries the image and state of the decision that chose it (the only ones that
exist: the env renders only at decisions). Row ``t`` of a decision start then yields exactly
the chunk the policy executed (the unexecuted tail of an episode's last chunk is padded like
the demos', ``"hold"`` / ``"repeat"``). A row *inside* a chunk would pair a stale image with a
shifted chunk, so only decision rows are SFT samples: ``frame_index % chunk_size == 0``
(every chunk but an episode's last runs exactly k steps), stored in ``meta/info.json`` as
``recorder.chunk_size``.

Per-row ``reward`` is exact (per control step); ``success`` / ``done`` are set on the last
executed row of the chunk in which they happened (a chunk reports success, not its step).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlarl.envs.base import VecEnv
from vlarl.types import ChunkStep, Obs


@dataclass
class RecordedEpisode:
    """One finished episode: its reset seed and one frame dict per executed control step."""

    seed: int
    frames: list[dict] = field(default_factory=list)
    success: bool = False


class SuccessRecorder(VecEnv):
    """A :class:`VecEnv` that passes everything through to ``env`` and records episodes.

    ``first_episode_only``: record only each env's first episode after every ``reset``.
    That is what the trainer counts in episodic mode (GRPO / RLOO: one episode per env per
    update; the auto-reset episode after it is stepped but masked invalid), so
    ``steps_counted`` equals the trainer's ``train/env_steps`` in both modes. Episodes still
    running at the next ``reset`` were cut by the rollout and are dropped.

    Counters: ``steps_executed`` (every simulated control step), ``steps_counted`` (steps of
    recorded episodes), ``episodes_ended`` / ``episodes_succeeded`` (recorded episodes that
    ended / ended with success at any step); ``episodes`` holds the successful ones.
    """

    def __init__(self, env: VecEnv, *, first_episode_only: bool = False):
        self.env = env
        self.first_episode_only = first_episode_only
        self.episodes: list[RecordedEpisode] = []
        self.steps_executed = self.steps_counted = 0
        self.episodes_ended = self.episodes_succeeded = 0
        self.chunk_size: int | None = None
        self._obs: Obs | None = None
        self._current: list[RecordedEpisode | None] = []

    def __getattr__(self, name):  # num_envs, action_dim, task, control_freq, ... of the env
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seeds: list[int]) -> Obs:
        obs = self.env.reset(seeds)
        self._obs = obs
        self._current = [RecordedEpisode(int(s)) for s in seeds]
        return obs

    def step_chunk(self, actions: torch.Tensor, reset_seeds: list[int] | None = None) -> ChunkStep:
        if self._obs is None:
            raise RuntimeError("SuccessRecorder.step_chunk before reset")
        step = self.env.step_chunk(actions, reset_seeds)
        acts = actions.detach().to("cpu", torch.float32).numpy().copy()
        self.chunk_size = self.chunk_size or int(acts.shape[1])
        steps, done = step.steps.cpu().tolist(), step.done.cpu().tolist()
        rewards = step.rewards.detach().to("cpu", torch.float32).numpy()
        success_once = step.success_once.cpu().tolist()
        self.steps_executed += int(sum(steps))
        for i, ep in enumerate(self._current):
            if ep is not None:
                self._record(ep, i, acts[i], steps[i], rewards[i], success_once[i], done[i])
            if done[i]:
                if ep is not None:
                    self._finish(ep)
                keep_going = ep is not None and not self.first_episode_only
                seed = -1 if reset_seeds is None else int(reset_seeds[i])
                self._current[i] = RecordedEpisode(seed) if keep_going else None
        self._obs = step.obs
        return step

    def _record(self, ep: RecordedEpisode, i: int, acts: np.ndarray, steps: int,
                rewards: np.ndarray, success: bool, done: bool) -> None:
        obs = self._obs
        assert obs is not None
        images = list(obs.images[i].cpu().numpy().copy())  # one copy per decision, shared by its rows
        state = obs.state[i].cpu().numpy().astype(np.float32)
        for j in range(steps):
            last = j == steps - 1
            ep.frames.append({"images": images, "state": state, "action": acts[j],
                              "instruction": obs.instructions[i], "task": self.env.task,
                              "reward": float(rewards[j]), "success": bool(success and last),
                              "done": bool(done and last)})
        ep.success |= bool(success)
        self.steps_counted += steps

    def _finish(self, ep: RecordedEpisode) -> None:
        self.episodes_ended += 1
        if ep.success:
            self.episodes_succeeded += 1
            self.episodes.append(ep)

    def stats(self) -> dict[str, int]:
        return {"steps_executed": self.steps_executed, "steps_counted": self.steps_counted,
                "episodes_ended": self.episodes_ended,
                "episodes_succeeded": self.episodes_succeeded,
                "episodes_kept": len(self.episodes),
                "frames_kept": sum(len(e.frames) for e in self.episodes)}

    def expert_actions(self) -> torch.Tensor:
        return self.env.expert_actions()

    def render_frames(self) -> torch.Tensor:
        return self.env.render_frames()

    def close(self) -> None:
        self.env.close()


def write_episodes(episodes: list[RecordedEpisode], out: str | Path, cfg, *, chunk_size: int,
                   fps: float = 20.0, source: str = "rl") -> Path | None:
    """Write ``episodes`` as a vlarl dataset at ``out`` (atomic rename); None if there are none.

    ``cfg`` is the run's :class:`vlarl.config.Config` (its env section is recorded);
    ``meta/info.json`` gains ``recorder: {chunk_size, source, ...}`` and a ``key`` that
    hashes the recorded seeds, so no cache mistakes it for the scripted demos.
    """
    from vlarl.data import append_episode, dataset_features, dataset_info, write_dataset

    if not episodes:
        return None
    rows: dict[str, list] = {}
    for n, ep in enumerate(episodes):
        append_episode(rows, ep.frames, n, ep.seed, fps)
    first = episodes[0].frames[0]
    cams, size = len(first["images"]), int(first["images"][0].shape[0])
    state_dim, action_dim = len(first["state"]), len(first["action"])
    features = dataset_features(size, cams, state_dim, action_dim)
    lengths = [len(e.frames) for e in episodes]
    stats = {"source": source, "mean_episode_length": float(np.mean(lengths))}
    info = dataset_info(cfg, features, len(episodes), sum(lengths), cams, size, state_dim, action_dim,
                 fps, stats)
    seeds = json.dumps([[e.seed, len(e.frames)] for e in episodes]).encode()
    info["key"] = f"{source}-" + hashlib.sha256(seeds).hexdigest()[:16]
    info["data_config"] = None  # not collected by `vlarl collect`
    info["recorder"] = {"source": source, "chunk_size": chunk_size,
                        "decision_rows": "frame_index % chunk_size == 0"}
    out = Path(out).expanduser()
    write_dataset(out, rows, features, info)
    return out


def decision_rows(ds, info: dict, chunk_size: int) -> np.ndarray | None:
    """Indices of the rows that are SFT samples: all (None) for scripted demos, the
    decision starts for a recorded dataset. Refuses a policy whose chunk differs from the
    recorded one (its chunks would straddle decisions)."""
    rec = info.get("recorder")
    if not rec:
        return None
    if rec["chunk_size"] != chunk_size:
        raise ValueError(f"dataset was recorded with chunks of {rec['chunk_size']} actions but "
                         f"the policy emits {chunk_size} (policy.chunk_size)")
    frame = np.asarray(ds.with_format("numpy")["frame_index"])
    return np.flatnonzero(frame % chunk_size == 0)
