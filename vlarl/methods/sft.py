"""Supervised warm-start of a VLA on scripted-expert demonstrations (behaviour cloning).

RL from a random VLA never sees a success on PickCube; SFT on expert chunks gives the
RL stage a policy that succeeds sometimes (the target is 20-80 %), as in SimpleVLA-RL /
RL4VLA. The loop is a plain accelerate loop: ``Accelerator`` for devices, mixed
precision and gradient accumulation, ``transformers.get_scheduler`` for the LR schedule,
and ``policy.sft_loss(obs, actions [B, k, A])`` as the loss, so every policy family
(token, flow, student) trains the same way. The result is ``policy.save_pretrained(out)``:
the RL trainer and ``vlarl eval`` load it like any downloaded checkpoint.

accelerate/transformers are imported lazily inside the functions (the lead may move the
loop into ``vlarl/trainer.py``, the designated accelerate importer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlarl.config import Config, ConfigError, DataConfig, non_default
from vlarl.data import ChunkDataset, collate_chunks, collect_demos, load_demos, read_info
from vlarl.methods.grounding import WithLayouts, demo_targets, prepare
from vlarl.runtime.system import peak_rss_mb
from vlarl.types import Obs

log = logging.getLogger(__name__)

DONE_FILE = "sft_done.json"
"""Marker written last into a finished SFT checkpoint: its config key and final stats."""
METRICS_FILE = "metrics.jsonl"
GROUNDING_METRICS_FILE = "grounding_metrics.jsonl"


class _SFTLoss(nn.Module):
    """Routes ``sft_loss`` through ``forward`` so accelerate's DDP wrapper and autocast see it
    (calling a custom method on a DDP-wrapped model would skip the gradient all-reduce).
    With ``grounding`` (head owned here, so DDP syncs it too) it adds ``weight`` x the
    grounding loss; a batch without actions (grounding scenes) has that loss alone."""

    def __init__(self, policy: nn.Module, grounding=None, weight: float = 0.0):
        super().__init__()
        self.policy, self.grounding, self.weight = policy, grounding, weight
        self.head = None if grounding is None else grounding.head

    def forward(self, obs: Obs, actions: torch.Tensor | None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None or not self.weight:
            return self.policy.sft_loss(obs, actions)
        if actions is None:  # grounding scenes
            return self.weight * self.grounding.loss(self.policy.prompt_features(obs), targets)
        loss, features = self.policy.sft_loss(obs, actions, features=True)
        return loss + self.weight * self.grounding.loss(features, targets)


def sft_key(cfg: Config, data_key: str, max_steps: int | None, grad_accum: int) -> str:
    """Hash of data + policy + sft config: equal keys mean an equal checkpoint (cache hit).
    Only non-default fields are hashed, so a new config field keeps old checkpoints valid."""
    sft = {k: v for k, v in non_default(cfg.sft).items() if k != "output_dir"}
    payload = {"data": data_key, "policy": non_default(cfg.policy), "sft": sft,
               "mixed_precision": cfg.train.mixed_precision, "max_grad_norm": cfg.algo.max_grad_norm,
               "max_steps": max_steps, "grad_accum": grad_accum}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_action_dim(data_dim: int, policy_dim: int, where: str) -> None:
    """Demonstrations must have the policy's action dimension (no silent slicing)."""
    if data_dim != policy_dim:
        raise ValueError(f"demonstrations at {where} have action_dim={data_dim} but the policy "
                         f"has action_dim={policy_dim}; set --policy.action_dim {data_dim} or "
                         "collect demos with a matching --env.control_mode")


def pad_mode(control_mode: str) -> str:
    """Chunk padding past an episode's end: "hold" (zero deltas) for delta controllers."""
    return "hold" if "delta" in control_mode else "repeat"


def demo_states(demos):
    """Every state of the demonstrations (one dataset or a list of them) as one float64 array
    ``[rows, D]``; multi-task: shorter states zero-padded to the widest."""
    import numpy as np

    parts = [np.asarray(d.with_format("numpy")["state"], dtype=np.float64)
             for d in (demos if isinstance(demos, list) else [demos])]
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts])


def state_range(demos, margin: float = 0.1) -> tuple[list[float], list[float]]:
    """Per-dimension state range of the demonstrations (one dataset or a list of them),
    widened by ``margin`` of its width (at least 1e-3), stored in the policy config so every
    later stage bins / normalises the state the same way (LeRobot keeps such statistics with
    the policy too)."""
    import numpy as np

    states = demo_states(demos)
    lo, hi = states.min(0), states.max(0)
    pad = np.maximum((hi - lo) * margin, 1e-3)
    return (lo - pad).round(5).tolist(), (hi + pad).round(5).tolist()


def state_std(demos) -> torch.Tensor:
    """Per-dimension std of the demonstrations' states (padding std 0): the scale of
    ``sft.state_noise``."""
    return torch.from_numpy(demo_states(demos)).std(0).float()


def demo_dirs(cfg: Config) -> list[Path]:
    """The demonstration datasets of an SFT run, collected if missing: ``env.task``'s (at
    ``data.dataset_dir`` or the cache), then each of ``data.extra_tasks`` (in the cache)."""
    from vlarl.envs.experts import EXPERTS

    for task in cfg.data.extra_tasks:  # before any collection starts
        if task not in EXPERTS:
            raise ConfigError(f"data.extra_tasks: {task!r} is not allowed; choose tasks with a "
                              f"scripted expert: {sorted(EXPERTS.names())}")
    dirs = [collect_demos(cfg)]
    for task in dict.fromkeys(t for t in cfg.data.extra_tasks if t != cfg.env.task):
        other = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, task=task),
                                    data=dataclasses.replace(cfg.data, dataset_dir=DataConfig().dataset_dir,
                                                             extra_tasks=[]))
        dirs.append(collect_demos(other))
    return dirs


def sft_dataset(paths: list[Path], chunk_size: int, action_dim: int):
    """``(ConcatDataset of SFT samples, samples per dataset)``: every row of scripted demos,
    only the decision rows of recorded RL episodes (see ``vlarl.envs.recorder``); chunks
    never cross a dataset's episode boundaries."""
    from torch.utils.data import ConcatDataset, Subset

    from vlarl.envs.recorder import decision_rows

    parts = []
    for path in paths:
        info = read_info(path)
        check_action_dim(info["action_dim"], action_dim, str(path))
        ds = load_demos(path)
        chunks = ChunkDataset(ds, chunk_size, pad=pad_mode(info["control_mode"]))
        rows = decision_rows(ds, info, chunk_size)
        parts.append(chunks if rows is None else Subset(chunks, rows.tolist()))
    return ConcatDataset(parts), [len(p) for p in parts]


def run_sft(cfg: Config, force: bool = False, *, max_steps: int | None = None,
            gradient_accumulation_steps: int = 1) -> Path:
    """Collect (or reuse) demos, fine-tune ``build_policy(cfg.policy)``, save; return the dir.

    ``cfg.sft.full_finetune`` trains every weight, else LoRA adapters only. The same data +
    policy + sft config reuses a finished checkpoint in ``cfg.sft.output_dir`` unless
    ``force``; a different config retrains and replaces it (atomically, on completion).
    ``max_steps`` caps the optimizer steps (tests / smoke runs).
    """
    from vlarl.runtime import runlock

    cfg.check_grounding_run()
    out = Path(cfg.sft.output_dir).expanduser()
    # the output is replaced by a rename when done: the lock file sits beside it
    with runlock.holding(out, "sft.output_dir", inside=False):
        return _run_sft(cfg, out, force, max_steps, gradient_accumulation_steps)


def _run_sft(cfg: Config, out: Path, force: bool, max_steps: int | None,
             gradient_accumulation_steps: int) -> Path:
    from vlarl.policies import build_policy

    data_dirs = demo_dirs(cfg)
    keys = [read_info(d).get("key", str(d)) for d in data_dirs]
    # one task: that dataset's key alone, as before extra_tasks existed
    key = sft_key(cfg, keys[0] if len(keys) == 1 else "+".join(keys), max_steps,
                  gradient_accumulation_steps)
    marker = out / DONE_FILE
    if marker.is_file() and not force:
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            log.info("reusing SFT checkpoint %s (loss %.4f)", out, done.get("final_loss", float("nan")))
            return out
        log.warning("%s holds an SFT run of another config; retraining", out)
    for d in data_dirs:
        check_action_dim(read_info(d)["action_dim"], cfg.policy.action_dim, str(d))

    demos = [load_demos(d) for d in data_dirs]
    low, high = state_range(demos) if cfg.policy.state_range == "demos" else (None, None)
    state_sizes = (sorted({int(read_info(d)["state_dim"]) for d in data_dirs})
                   if cfg.policy.use_state else None)
    from accelerate.utils import set_seed

    set_seed(cfg.sft.seed)  # the fresh modules (state projector, LoRA A) are drawn from it
    policy = build_policy(dataclasses.replace(cfg.policy, use_lora=not cfg.sft.full_finetune,
                                              state_low=low, state_high=high, state_sizes=state_sizes))
    chunks, sizes = sft_dataset(data_dirs, policy.chunk_size, policy.action_dim)
    if len(data_dirs) > 1:
        log.info("multi-task SFT: %s", ", ".join(f"{read_info(d)['task']} {n} samples"
                                                 for d, n in zip(data_dirs, sizes)))
    data_dir = str(data_dirs[0]) if len(data_dirs) == 1 else [str(d) for d in data_dirs]
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    noise = (cfg.sft.state_noise * state_std(demos)
             if cfg.sft.state_noise > 0 and cfg.policy.use_state else None)
    g, g_stats = None, {}
    if cfg.sft.grounding_scenes:
        g, g_stats = _pretrain_grounding(policy, cfg, tmp, max_steps, gradient_accumulation_steps)
        if cfg.sft.grounding_weight:
            chunks = WithLayouts(chunks, demo_targets(cfg, data_dirs[0], chunks.datasets[0], g))
    stats = fit_sft(policy, chunks, cfg, max_steps=max_steps,
                    gradient_accumulation_steps=gradient_accumulation_steps,
                    metrics_path=tmp / METRICS_FILE, state_noise_std=noise,
                    grounding=g if cfg.sft.grounding_weight else None,
                    grounding_weight=cfg.sft.grounding_weight)
    if g is not None:
        g_stats["heldout_r2_after_sft"] = round(g.heldout_r2(policy), 4)
        log.info("grounding: held-out R^2 %.3f after SFT (%.3f after pre-training)",
                 g_stats["heldout_r2_after_sft"], g_stats["heldout_r2"])
        stats["grounding"] = g_stats
    policy.save_pretrained(tmp)  # the grounding head is not part of the policy
    (tmp / DONE_FILE).write_text(json.dumps({"key": key, "dataset": data_dir, **stats}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("SFT checkpoint %s: loss %.4f -> %.4f in %.1f s", out, stats["first_loss"],
             stats["final_loss"], stats["wall_time_s"])
    return out


def _pretrain_grounding(policy: nn.Module, cfg: Config, tmp: Path, max_steps: int | None,
                        grad_accum: int):
    """Grounding pre-training (:mod:`vlarl.methods.grounding`): ``(Grounding, stats)``."""
    g = prepare(policy, cfg)
    steps = cfg.sft.grounding_steps if max_steps is None else min(max_steps, cfg.sft.grounding_steps)
    fit = fit_sft(policy, g.train, cfg, max_steps=steps, gradient_accumulation_steps=grad_accum,
                  metrics_path=tmp / GROUNDING_METRICS_FILE, grounding=g, grounding_weight=1.0,
                  desc="grounding")
    stats = {"scenes": len(g.train), "heldout_scenes": len(g.heldout), "steps": fit["steps"],
             "first_loss": fit["first_loss"], "final_loss": fit["final_loss"],
             "wall_time_s": fit["wall_time_s"], "heldout_r2": round(g.heldout_r2(policy), 4)}
    log.info("grounding pre-training: %d scenes, %d steps, loss %.4f -> %.4f, held-out R^2 %.3f",
             stats["scenes"], stats["steps"], stats["first_loss"], stats["final_loss"],
             stats["heldout_r2"])
    return g, stats


def describe(out: str | Path) -> str:
    """One line on a finished SFT checkpoint (its done-marker), for the console."""
    d = json.loads((Path(out) / DONE_FILE).read_text())
    line = (f"SFT: {d['steps']} steps, loss {d['first_loss']:.3f} -> {d['final_loss']:.3f}, "
            f"{d['wall_time_s']:.0f} s, peak RSS {d['peak_rss_mb']:.0f} MB")
    g = d.get("grounding")
    if g:
        line += (f"; grounding pre-training: {g['scenes']} scenes, {g['steps']} steps, MSE "
                 f"{g['first_loss']:.3f} -> {g['final_loss']:.4f}, held-out R^2 "
                 f"{g['heldout_r2']:.2f} (after SFT {g['heldout_r2_after_sft']:.2f}, "
                 f"{g['heldout_scenes']} scenes)")
    return line


def noisy_state(obs: Obs, std: torch.Tensor) -> Obs:
    """``obs`` with ``N(0, std^2)`` added to its state, per dimension (``std`` may be longer
    than the state: a multi-task batch padded to the widest state)."""
    std = std[: obs.state.shape[-1]].to(obs.state)
    return dataclasses.replace(obs, state=obs.state + torch.randn_like(obs.state) * std)


def fit_sft(policy: nn.Module, chunks: ChunkDataset, cfg: Config, *, max_steps: int | None = None,
            gradient_accumulation_steps: int = 1, metrics_path: str | Path | None = None,
            state_noise_std: torch.Tensor | None = None, grounding=None,
            grounding_weight: float = 0.0, desc: str = "sft") -> dict[str, Any]:
    """Train ``policy`` in place with ``sft_loss`` on ``chunks``; return summary stats.

    One optimizer step = ``gradient_accumulation_steps`` micro-batches of
    ``cfg.sft.batch_size`` chunks. Steps = ``max_steps`` or
    ``ceil(num_epochs * ceil(len(loader) / grad_accum))``. Every step's loss, learning rate
    and gradient norm go to ``metrics_path`` (JSON lines). ``state_noise_std`` (per state
    dimension) adds Gaussian noise to each batch's states (``sft.state_noise``), drawn from
    torch's seeded global generator. ``grounding`` (:class:`vlarl.methods.grounding.Grounding`)
    trains its head too, on items that carry layouts, with ``grounding_weight``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    s = cfg.sft
    set_seed(s.seed)
    from accelerate.utils import DistributedDataParallelKwargs

    from vlarl.methods.grounding import collate_grounded

    # grounding scenes have no action loss: the LM head gets no gradient then
    ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if grounding else []
    acc = Accelerator(gradient_accumulation_steps=gradient_accumulation_steps,
                      mixed_precision=cfg.train.mixed_precision, kwargs_handlers=ddp)
    loader = torch.utils.data.DataLoader(
        chunks, batch_size=s.batch_size, shuffle=True,
        collate_fn=collate_grounded if grounding else collate_chunks,
        generator=torch.Generator().manual_seed(s.seed))
    params = policy.policy_parameters()  # the actor only: SFT has no value target
    if grounding:
        params += list(grounding.head.parameters())
    if not params:
        raise ValueError(f"{type(policy).__name__} has no trainable actor parameters "
                         "(check policy.use_lora / sft.full_finetune)")
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / gradient_accumulation_steps)
    total = max_steps or max(1, math.ceil(s.num_epochs * steps_per_epoch))
    # a prepared scheduler advances num_processes times per optimizer step (accelerate docs)
    scheduler = get_scheduler(s.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(s.warmup_ratio * total) * acc.num_processes,
                              num_training_steps=total * acc.num_processes)
    model, optimizer, loader, scheduler = acc.prepare(
        _SFTLoss(policy, grounding, grounding_weight), optimizer, loader, scheduler)
    model.train()
    losses: list[float] = []
    step, epoch, micro_losses = 0, 0, []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        metrics = (stack.enter_context(open(metrics_path, "w"))
                   if metrics_path and acc.is_main_process else None)
        bar = stack.enter_context(tqdm(total=total, desc=desc, unit="step",
                                       disable=not acc.is_main_process))
        while step < total:
            for obs, actions, *targets in loader:
                if state_noise_std is not None:
                    obs = noisy_state(obs, state_noise_std)
                with acc.accumulate(model):
                    loss = model(obs, actions, *targets)
                    acc.backward(loss)
                    micro_losses.append(loss.detach().float().item())
                    grad_norm = acc.clip_grad_norm_(params, cfg.algo.max_grad_norm) \
                        if acc.sync_gradients else None
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not acc.sync_gradients:
                    continue
                step += 1
                losses.append(sum(micro_losses) / len(micro_losses))
                micro_losses = []
                row = {"step": step, "epoch": epoch, "loss": losses[-1],
                       "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None,
                       "time_s": round(time.perf_counter() - t0, 3)}
                if metrics:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if step >= total:
                    break
            epoch += 1
    acc.wait_for_everyone()
    policy.eval()
    return {"steps": step, "epochs": epoch, "first_loss": losses[0], "final_loss": losses[-1],
            "wall_time_s": round(time.perf_counter() - t0, 2), "samples": len(chunks),
            "peak_rss_mb": peak_rss_mb()}
