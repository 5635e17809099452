"""Collecting expert demonstrations: ``make_env`` (N worker envs) -> the expert's action at
every control step (the scripted ``expert_actions()``, or a saved policy's deterministic chunks
executed one control step at a time: ``data.expert``, RLDG) -> one row per control step in a
Hugging Face ``datasets`` parquet file + ``meta/info.json``, cached by :func:`dataset_key`.

Only ``vlarl.envs`` touches ManiSkill; this module sees the :class:`VecEnv` interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlarl.config import Config, DataConfig
from vlarl.runtime.system import cache_root
from vlarl.types import Obs

log = logging.getLogger(__name__)

from vlarl.data.dataset import DATA_FILE, FORMAT_VERSION, INFO_FILE, DatasetError, read_info

# Env fields that change what is recorded. num_envs/backend/render_every_step/seed do not:
# every episode is seeded individually from data.seed.
_ENV_KEY_FIELDS = ("task", "split", "image_size", "control_mode", "reward_mode",
                   "max_episode_steps", "terminate_on_success")



# ----------------------------------------------------------------------------- paths / cache

def dataset_key(cfg: Config) -> str:
    """Hash of everything that determines the recorded data (env + data config + format +
    the expert: a policy expert's directory content hash; the scripted experts add nothing,
    so the keys of scripted datasets are those of earlier versions)."""
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "env": {k: getattr(cfg.env, k) for k in _ENV_KEY_FIELDS},
        "data": {"num_episodes": cfg.data.num_episodes, "seed": cfg.data.seed},
    }
    if cfg.data.expert != "scripted":
        payload["expert"] = expert_identity(cfg.data.expert)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def expert_identity(expert: str) -> str:
    """sha256 of a policy expert's directory (every file except an ``eval/`` report inside it);
    FileNotFoundError naming ``data.expert`` if it is not a policy directory."""
    from vlarl.eval.report import checkpoint_sha256

    path = Path(expert).expanduser()
    if not (path / "vlarl_policy.json").is_file():
        raise FileNotFoundError(f"data.expert={expert!r} is neither 'scripted' nor a policy "
                                "directory (no vlarl_policy.json there)")
    return checkpoint_sha256(path, exclude=path / "eval")["sha256"]


def dataset_path(cfg: Config) -> Path:
    """Where ``collect_demos`` writes: ``data.dataset_dir`` if the user set it, else
    ``<cache_root>/datasets/<dataset_key>`` (the default ``dataset_dir`` means "use the cache")."""
    if cfg.data.dataset_dir != DataConfig().dataset_dir:
        return Path(cfg.data.dataset_dir).expanduser()
    return cache_root() / "datasets" / dataset_key(cfg)


def is_complete(path: str | Path) -> bool:
    """A dataset directory is complete once its ``meta/info.json`` exists (written last)."""
    return (Path(path) / INFO_FILE).is_file()


# ----------------------------------------------------------------------------- collection

def dataset_features(image_size: int, cams: int, state_dim: int, action_dim: int):
    from datasets import Features, Image, List, Value

    feats: dict[str, Any] = {
        "episode_index": Value("int64"), "frame_index": Value("int64"),
        "timestamp": Value("float32"), "seed": Value("int64"),
        "image": Image(),
        "state": List(Value("float32"), length=state_dim),
        "action": List(Value("float32"), length=action_dim),
        "instruction": Value("string"), "task": Value("string"),
        "reward": Value("float32"), "success": Value("bool"), "done": Value("bool"),
    }
    for c in range(1, cams):  # extra cameras, if the env has them
        feats[f"image_{c}"] = Image()
    return Features(feats)


class _ScriptedExpert:
    """The state-machine experts of ``vlarl.envs.experts``, one per worker env."""

    name = "scripted"
    needs_privileged_state = False

    def actions(self, env, obs: Obs) -> torch.Tensor:
        return env.expert_actions().float()

    def episode_ended(self, i: int) -> None:
        pass  # the env resets its expert at the auto-reset


class _PolicyExpert:
    """A saved policy acting deterministically. Its chunks of k actions are executed one
    control step at a time, so every executed action is recorded with the image before it
    (as for the scripted expert); it is queried again when an env's chunk is used up or its
    episode ended (the rest of that chunk is dropped)."""

    def __init__(self, path: str, num_envs: int):
        from vlarl.policies import load_policy

        self.name = str(path)
        self.policy = load_policy(Path(path).expanduser()).eval()
        self.needs_privileged_state = bool(getattr(self.policy, "needs_privileged_state", False))
        self.queue: list[list[torch.Tensor]] = [[] for _ in range(num_envs)]

    def actions(self, env, obs: Obs) -> torch.Tensor:
        need = [i for i, q in enumerate(self.queue) if not q]
        if need:
            with torch.no_grad():
                chunks = self.policy.act(obs.index(need), deterministic=True).actions.float()
            for j, i in enumerate(need):
                self.queue[i] = list(chunks[j].cpu())
        return torch.stack([q.pop(0) for q in self.queue])

    def episode_ended(self, i: int) -> None:
        self.queue[i] = []


def collect_demos(cfg: Config, force: bool = False) -> Path:
    """Record ``cfg.data.num_episodes`` successful expert episodes; return the dir.

    The expert is ``cfg.data.expert``: ``scripted`` or a policy directory (deterministic
    actions; an env with privileged state is made for a policy that reads it). The
    ``cfg.data.num_workers`` envs step in lockstep one control step at a time (every
    control step is a possible decision start, so every step's image is stored). Failed
    episodes are dropped and counted. Episode seeds are ``cfg.data.seed, +1, ...`` (disjoint from
    the eval seeds). An existing complete dataset at the target path is reused unless
    ``force``; the data are written to a temporary directory and renamed when complete.
    """
    from vlarl.runtime import runlock

    out = dataset_path(cfg)
    # a second collector of the same dataset waits here, then reuses the first one's result
    with runlock.building(out):
        return _collect_demos(cfg, out, force)


def _collect_demos(cfg: Config, out: Path, force: bool) -> Path:
    from tqdm.auto import tqdm

    from vlarl.envs import make_env

    if is_complete(out) and not force:
        saved = read_info(out)
        if saved.get("key") != dataset_key(cfg):  # e.g. `vlarl sft --data.dataset_dir <RLDG data>`
            log.warning("using the dataset at %s as it is: it was recorded with another config "
                        "(expert %r, key %s; this config's key %s)", out,
                        saved.get("data_config", {}).get("expert", "scripted"), saved.get("key"),
                        dataset_key(cfg))
        else:
            log.info("reusing demonstrations at %s", out)
        return out
    if out.exists() and not force:
        raise DatasetError(f"{out} exists but has no {INFO_FILE} (incomplete or foreign); "
                           "delete it or collect with force=True")
    if cfg.env.obs_mode != "rgb":
        raise ValueError(f"env.obs_mode={cfg.env.obs_mode!r}: a dataset records camera images; "
                         "collect with env.obs_mode=rgb (the expert may still read privileged state)")
    n, target = cfg.data.num_workers, cfg.data.num_episodes
    max_attempts = 4 * target + n  # stop even if the expert is much worse than expected
    dataset_key(cfg)  # before any env starts: a missing policy expert fails here, naming the key
    expert = _ScriptedExpert() if cfg.data.expert == "scripted" else \
        _PolicyExpert(cfg.data.expert, n)
    # the experts read one simulator each: a worker process per env (cpu), or this process
    env_cfg = dataclasses.replace(
        cfg.env, num_envs=n, num_workers=0, backend="inline" if n == 1 else "cpu",
        privileged_state=cfg.env.privileged_state or expert.needs_privileged_state)
    rows: dict[str, list] = {}
    ep_seed = [cfg.data.seed + i for i in range(n)]
    pending = [cfg.data.seed + n + i for i in range(n)]  # seed env i uses at its next reset
    next_seed = cfg.data.seed + 2 * n
    buffers: list[list[dict]] = [[] for _ in range(n)]
    kept = ended = solved = 0  # kept <= solved: successes past the target are not written
    lengths: list[int] = []
    t0 = time.perf_counter()
    with make_env(env_cfg) as env, tqdm(total=target, desc="expert demos", unit="ep") as bar:
        if isinstance(expert, _PolicyExpert):
            from vlarl.eval.evaluate import check_compatible

            check_compatible(expert.policy, env, cfg.data.expert)
        fps = float(getattr(env, "control_freq", 20))
        obs = env.reset(ep_seed)
        t_env = time.perf_counter()  # env start-up (~6 s per RGB env) is not collection speed
        while kept < target and ended < max_attempts:
            actions = expert.actions(env, obs)
            step = env.step_chunk(actions[:, None, :], reset_seeds=list(pending))
            for i in range(n):
                buffers[i].append(_frame(obs, i, actions[i], step, env.task))
                if not bool(step.done[i]):
                    continue
                expert.episode_ended(i)
                ended += 1
                ok = any(f["success"] for f in buffers[i])
                solved += ok
                if ok and kept < target:
                    append_episode(rows, buffers[i], kept, ep_seed[i], fps)
                    lengths.append(len(buffers[i]))
                    kept += 1
                    bar.update(1)
                bar.set_postfix(expert_success=f"{solved / ended:.2f}")
                buffers[i] = []
                ep_seed[i], pending[i], next_seed = pending[i], next_seed, next_seed + 1
            obs = step.obs
        cams, h = obs.images.shape[1], obs.images.shape[2]
        state_dim, action_dim = int(obs.state.shape[1]), int(actions.shape[1])
    if kept == 0:
        raise DatasetError(f"the expert {expert.name!r} solved 0 of {ended} episodes of "
                           f"{cfg.env.task!r}; nothing to write")
    if kept < target:
        log.warning("only %d of %d requested episodes succeeded in %d attempts", kept, target, ended)
    wall = time.perf_counter() - t0
    stats = {"expert": expert.name, "episodes_attempted": ended, "episodes_failed": ended - solved,
             "expert_success_rate": solved / ended, "mean_episode_length": float(np.mean(lengths)),
             "wall_time_s": round(wall, 2),
             "frames_per_s": round(sum(lengths) / (time.perf_counter() - t_env), 2)}
    features = dataset_features(h, cams, state_dim, action_dim)
    info = dataset_info(cfg, features, kept, sum(lengths), cams, h, state_dim, action_dim, fps, stats)
    write_dataset(out, rows, features, info)
    log.info("wrote %d episodes (%d frames, expert success %.2f) to %s",
             kept, info["total_frames"], stats["expert_success_rate"], out)
    return out


def _frame(obs: Obs, i: int, action: torch.Tensor, step, task: str) -> dict:
    """One control step of env i: the observation *before* the action, and its outcome."""
    imgs = obs.images[i].cpu().numpy()
    return {"images": list(imgs), "state": obs.state[i].cpu().numpy().astype(np.float32),
            "action": action.cpu().numpy().astype(np.float32),
            "instruction": obs.instructions[i], "task": task,
            "reward": float(step.rewards[i, 0]), "success": bool(step.success_once[i]),
            "done": bool(step.done[i])}


def append_episode(rows: dict[str, list], frames: list[dict], ep: int, seed: int,
                    fps: float) -> None:
    for t, f in enumerate(frames):
        rec = {"episode_index": ep, "frame_index": t, "timestamp": t / fps, "seed": seed,
               **{k: v for k, v in f.items() if k != "images"}}
        for c, img in enumerate(f["images"]):
            rec["image" if c == 0 else f"image_{c}"] = img
        for k, v in rec.items():
            rows.setdefault(k, []).append(v)


def dataset_info(cfg: Config, features, episodes: int, frames: int, cams: int, size: int,
          state_dim: int, action_dim: int, fps: float, stats: dict) -> dict:
    return {
        "format": "vlarl-demos", "format_version": FORMAT_VERSION, "key": dataset_key(cfg),
        "task": cfg.env.task, "split": cfg.env.split, "control_mode": cfg.env.control_mode,
        "fps": fps, "total_episodes": episodes, "total_frames": frames,
        "action_dim": action_dim, "state_dim": state_dim, "num_cameras": cams,
        "image_size": size, "data_files": [DATA_FILE],
        "features": features.to_dict(),
        "env_config": dataclasses.asdict(cfg.env), "data_config": dataclasses.asdict(cfg.data),
        "collection": stats,
    }


def write_dataset(out: Path, rows: dict[str, list], features, info: dict) -> None:
    """Write into ``<out>.tmp-<pid>`` and rename: a reader never sees a half-written dataset."""
    from datasets import Dataset
    from datasets.utils import disable_progress_bars

    if not os.environ.get("VLARL_VERBOSE"):  # its one-batch "Creating parquet" bar says nothing
        disable_progress_bars()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta").mkdir(parents=True)
    (tmp / "data").mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp / DATA_FILE))
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
