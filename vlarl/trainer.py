"""RL fine-tuning loop under accelerate: collect -> process -> update -> log -> checkpoint -> eval.

One process = one env batch: under ``accelerate launch`` or ``torchrun`` each rank owns
``env.num_envs`` envs with its own seeds, and DDP averages the gradients of the update. Bad
input is refused by :func:`preflight` before anything heavy starts. The loop (:func:`_train`)
reads as the algorithm: ``collect_and_update`` (collect -> process -> update, the optimisation
loop owned by the algorithm), ``evaluate_during_training``, ``_log``, ``save``,
``export_policy``; the console report is :mod:`vlarl.runtime.run_report`.

Exact resume: every update starts from envs reset with seeds that are a pure function of
(train.seed, update, rank, env, episode), and the checkpoint holds trainable tensors,
optimizer, scheduler, every rank's RNG states and the counters. So a run resumed after
update u replays update u+1 bit for bit (CPU). See docs/guarantees.md.
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlarl.config import Config, ConfigError, save_config, to_dict
from vlarl.runtime.preflight import preflight, run_meta

RANK_SEED_STRIDE = 1_000_003  # keeps ranks' seed streams disjoint


@dataclass
class _Run:
    """Everything the loop needs, built once by :func:`setup` (and by tests)."""

    cfg: Config
    accelerator: Any
    policy: Any            # the Policy module (unwrapped)
    trainable: Any         # what the algorithm sees: DDP-aware view of the policy
    optimizer: Any
    scheduler: Any
    algo: Any
    env: Any
    buffer: Any            # the update's rollouts side by side (RolloutBuffer.cat)
    ckpt: Any
    metrics: Any
    tracker: Any
    run_dir: Path
    start_update: int = 0
    env_steps: int = 0
    generator: torch.Generator | None = None
    rollout_buffers: list = field(default_factory=list)  # one per train.rollouts_per_update


class _DDPView:
    """The policy as the algorithm sees it: ``evaluate`` goes through the DDP wrapper's
    ``forward`` (so gradients are all-reduced); everything else reaches the module."""

    def __init__(self, wrapped: torch.nn.Module, module: torch.nn.Module):
        self._wrapped, self._module = wrapped, module

    def evaluate(self, obs, stored, **kw):
        return self._wrapped(obs, stored, **kw)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _build_policy(cfg: Config):
    from vlarl.policies import build_policy
    return build_policy(cfg.policy)


def setup(cfg: Config, *, make_env_fn=None, make_policy_fn=None) -> _Run:
    """Validate, create the run dir, the accelerator, env, policy, optimizer; resume if asked.

    ``make_policy_fn(cfg) -> Policy`` replaces building ``cfg.policy`` (RPD passes the
    student wrapped so that a frozen teacher labels each decision, ``vlarl.methods.distill_rpd``)."""
    preflight(cfg)  # before any heavy import: bad input fails in about a second
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers import get_scheduler

    from vlarl.algorithms import ALGORITHMS
    from vlarl.checkpoint import CheckpointManager
    from vlarl.rollout import RolloutBuffer
    from vlarl.runtime.rng import seed_everything
    from vlarl.runtime.rundir import MetricsLogger
    from vlarl.runtime.tracking import WandbTracker

    t = cfg.train
    run_dir = Path(t.output_dir).expanduser()
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        cpu=not torch.cuda.is_available(),
        # critic warm-up updates leave the actor's parameters unused
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    accelerator.wait_for_everyone()  # rank 0 prepared (and locked) the run dir in preflight
    if not accelerator.is_main_process:
        from vlarl.runtime import runlock

        runlock.check_held_by_launch(run_dir, "train.output_dir")
    algo = ALGORITHMS.get(cfg.algo.name)(cfg.algo)  # unknown name -> lists the known ones
    seed_everything(t.seed + accelerator.process_index * RANK_SEED_STRIDE)

    # the local main process builds any cached tiny model first; the others then load it
    # (transformers' save_pretrained writes nothing on a rank other than 0)
    with accelerator.local_main_process_first():
        policy = (make_policy_fn or _build_policy)(cfg)
    _check_action_space(cfg, policy)
    if type(algo).needs_critic and not policy.value_parameters():
        raise ConfigError(f"algo.name={cfg.algo.name!r} needs a critic, and the policy has no "
                          "value head: set policy.value_head=true (or use a critic-free "
                          "algorithm: grpo, rloo)")
    value_lr = t.value_learning_rate or t.learning_rate
    groups = [{"params": policy.policy_parameters(), "lr": t.learning_rate}]
    if policy.value_parameters():
        groups.append({"params": policy.value_parameters(), "lr": value_lr})
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    # one scheduler step per update, stepped here (not by accelerate, which would step it
    # num_processes times and make the schedule depend on the world size)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=t.warmup_steps,
                              num_training_steps=t.num_updates)
    wrapped, optimizer = accelerator.prepare(policy, optimizer)
    trainable = _DDPView(wrapped, policy) if wrapped is not policy else policy

    make_env_fn = make_env_fn or build_env
    env = make_env_fn(cfg.env)
    try:  # before the first env step
        from vlarl.rollout import check_pipeline_groups

        check_pipeline_groups(env, t.pipeline_groups)
        if getattr(policy, "cfg", None) is not None:
            from vlarl.policies.common import check_state_size

            check_state_size(policy.cfg, env.state_dim, f"env.task={cfg.env.task!r}")
    except ValueError:
        env.close()
        raise
    buffers = [RolloutBuffer(t.rollout_steps, env.num_envs) for _ in range(t.rollouts_per_update)]
    ckpt = CheckpointManager(run_dir / "checkpoints", keep_last=t.keep_last)
    run = _Run(cfg=cfg, accelerator=accelerator, policy=policy, trainable=trainable,
               optimizer=optimizer, scheduler=scheduler, algo=algo, env=env, buffer=buffers[0],
               ckpt=ckpt, metrics=None, tracker=None, run_dir=run_dir, rollout_buffers=buffers)
    run.generator = torch.Generator().manual_seed(t.seed * 7919 + accelerator.process_index)
    wandb_id = None
    if t.resume:
        wandb_id = _resume(run)
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    run.metrics = MetricsLogger(run_dir / "metrics.jsonl", resume_step=run.start_update
                                if t.resume else None) if accelerator.is_main_process else None
    run.tracker = WandbTracker(accelerator.is_main_process and t.report_to == "wandb",
                               t.wandb_mode, t.wandb_project, str(run_dir), to_dict(cfg),
                               run_id=wandb_id)
    return run


def build_env(env_cfg):
    from vlarl.envs import make_env

    return make_env(env_cfg)


def _check_action_space(cfg: Config, policy) -> None:
    if policy.action_dim != cfg.policy.action_dim:
        raise ConfigError(f"policy.action_dim={cfg.policy.action_dim} but the loaded policy "
                          f"emits {policy.action_dim}-D actions")


def update_context(acc, wrapped: torch.nn.Module | None):
    """The distributed pieces of ``Algorithm.update`` from an ``Accelerator`` (``wrapped``: the
    DDP-wrapped policy, or None in one process)."""
    from vlarl.algorithms import UpdateContext

    def clip(params, max_norm):
        return float(acc.clip_grad_norm_(params, max_norm))

    def any_rank(flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
        return bool(acc.reduce(t, reduction="sum").item() > 0)

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        return acc.reduce(t.to(acc.device), reduction="sum").to(t.device)

    return UpdateContext(
        backward=acc.backward,
        clip_grad_norm=clip,
        no_sync=(lambda: acc.no_sync(wrapped)) if wrapped is not None else nullcontext,
        all_ranks_any=any_rank,
        all_reduce_sum=reduce_sum,
    )


def train(cfg: Config, *, make_env_fn=None, make_policy_fn=None,
          stop_after: int | None = None) -> Path:
    """Run (or resume) RL fine-tuning; returns the run directory.

    ``stop_after`` ends the loop after that many updates of this call (tests use it to
    simulate an interruption at an update boundary).
    """
    from vlarl.runtime import runlock

    held = runlock.hold_count(cfg.train.output_dir)
    try:
        return _train(cfg, make_env_fn, make_policy_fn, stop_after)
    finally:  # the run dir's lock, taken in preflight, goes with this call
        while runlock.hold_count(cfg.train.output_dir) > held:
            runlock.release(cfg.train.output_dir)


def _train(cfg: Config, make_env_fn, make_policy_fn, stop_after: int | None) -> Path:
    from vlarl.runtime.preemption import PreemptionHandler
    from vlarl.runtime.run_report import RunReport
    from vlarl.runtime.system import tree_peak_rss_mb

    run = setup(cfg, make_env_fn=make_env_fn, make_policy_fn=make_policy_fn)
    t, acc = cfg.train, run.accelerator
    ctx = update_context(acc, getattr(run.trainable, "_wrapped", None))
    progress = _progress(acc, run.start_update, t.num_updates)
    report = RunReport()
    done_this_call = 0
    update = run.start_update
    try:
        with PreemptionHandler() as preempt:
            for update in range(run.start_update, t.num_updates):
                metrics = collect_and_update(run, ctx, update)
                if t.eval_every and (update + 1) % t.eval_every == 0:
                    metrics.update(_prefix("eval/", evaluate_during_training(run)))
                _log(run, update + 1, metrics, progress)
                if acc.is_main_process:
                    report.add(update + 1, metrics)
                done_this_call += 1
                stop = preempt.requested_on_any(acc) or (stop_after is not None and done_this_call >= stop_after)
                if update + 1 == t.num_updates or stop or (update + 1) % t.save_every == 0:
                    save(run, update + 1)
                if stop:
                    _say_stopped(run, preempt, update + 1)
                    break
            else:
                export_policy(run)
        if acc.is_main_process:
            print(report.summary(run.run_dir, run.env_steps, tree_peak_rss_mb()),
                  file=sys.stderr, flush=True)
    except Exception as err:
        # NaN strikes, a dead env worker, ...: say where the last good state is, then re-raise
        last = run.ckpt.latest_good_path()
        print(f"vlarl train: stopped during update {update + 1} on rank "
              f"{acc.process_index}: {type(err).__name__}: {err}\nlast good checkpoint: "
              f"{last or 'none'} (continue with --train.resume true)", file=sys.stderr)
        raise
    finally:
        if progress is not None:
            progress.close()
        run.tracker.finish()
        run.env.close()
    return run.run_dir


def collect_and_update(run: _Run, ctx, update: int) -> dict:
    """One update: collect a rollout (as the algorithm asks: ``rollout_mode``), process it
    (advantages), update the policy (the algorithm's optimisation loop), step the schedule;
    returns the update's metrics (``algo/``, ``rollout/`` over every rank, ``train/``, ``time/``)."""
    from vlarl.rollout import RolloutBuffer, collect, reduce_rollout_stats, sum_rollout_stats

    t, acc = run.cfg.train, run.accelerator
    mode = run.algo.rollout_mode
    t0 = time.perf_counter()
    # one precision path for act (rollout) and evaluate (update): accelerate's autocast
    # (which `prepare` would not apply at all in one process)
    with acc.autocast():
        # seeds of the global env index (rollout k after all of rollout k-1): layouts pair
        N, world = run.env.num_envs, acc.num_processes
        parts = [collect(run.env, run.policy, buf, base_seed=t.seed, update=update, mode=mode,
                         group_size=run.cfg.algo.num_generations if mode == "episodic" else 1,
                         first_env=(k * world + acc.process_index) * N,
                         pipeline_groups=t.pipeline_groups)
                 for k, buf in enumerate(run.rollout_buffers)]
        stats = sum_rollout_stats(parts)
        run.buffer = RolloutBuffer.cat(run.rollout_buffers)
        metrics = run.algo.process(run.buffer, run.policy)
        metrics.update(run.algo.update(run.trainable, run.optimizer, run.buffer, ctx, update,
                                       run.generator))
    metrics = _prefix("algo/", metrics)
    with warnings.catch_warnings():
        # the schedule counts updates, skipped ones too (dynamic sampling can leave the first
        # update without an optimizer step, which torch reports as a misordered call)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    stats = reduce_rollout_stats(acc, stats)
    run.env_steps += int(stats["env_steps"])
    metrics.update(_prefix("rollout/", stats))
    metrics.update({"train/lr": run.scheduler.get_last_lr()[0], "train/env_steps": run.env_steps,
                    "time/update_s": time.perf_counter() - t0})
    return metrics


def _say_stopped(run: _Run, preempt, update: int) -> None:
    if preempt.requested and run.accelerator.is_main_process:
        print(f"vlarl train: {preempt.signal_name or 'stop request'} received; checkpointed "
              f"update {update} in {run.ckpt.root}; continue with --train.resume true",
              file=sys.stderr)


def _prefix(p: str, d: dict) -> dict:
    # numbers, plus names such as ``nonfinite`` (which tensor was NaN/Inf)
    return {p + k: v for k, v in d.items() if isinstance(v, (int, float, str))}


def _progress(acc, start: int, total: int):
    if not acc.is_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="updates", unit="upd", dynamic_ncols=True)


def _log(run: _Run, step: int, metrics: dict, progress) -> None:
    if run.metrics is not None:
        run.metrics.log({"update": step, **metrics})
    run.tracker.log(metrics, step=step)
    if progress is not None:
        dt = metrics.get("time/update_s", 0.0)
        sps = metrics.get("rollout/env_steps", 0) / max(dt, 1e-9)
        progress.set_postfix(steps=run.env_steps, sps=f"{sps:.0f}",
                             success=f"{metrics.get('rollout/success_rate', float('nan')):.2f}")
        progress.update(1)


# ----------------------------------------------------------------------------- checkpoints

def _trainable_tensors(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in policy.named_parameters() if p.requires_grad}


def _meta(run: _Run, update: int) -> dict:
    return {**run_meta(run.cfg, run.accelerator.num_processes), "update": update,
            "env_steps": run.env_steps, "wandb_id": run.tracker.run_id if run.tracker else None}


def save(run: _Run, update: int) -> None:
    """Checkpoint at an update boundary: rank 0 writes; every rank's RNG state is gathered."""
    from accelerate.utils import gather_object

    from vlarl.runtime.rng import capture_rng_state

    rng = gather_object([capture_rng_state({"update_generator": run.generator})])
    if run.accelerator.is_main_process:
        run.ckpt.save(
            update,
            tensors={"trainable": _trainable_tensors(run.policy)},
            objects={"optimizer": run.optimizer.state_dict(),
                     "scheduler": run.scheduler.state_dict(), "rng": rng,
                     "algo": run.algo.state_dict()},
            meta=_meta(run, update),
        )
    run.accelerator.wait_for_everyone()


def _resume(run: _Run) -> str | None:
    from vlarl.checkpoint import check_resume_compat
    from vlarl.runtime.rng import restore_rng_state

    ck = run.ckpt.latest_good()
    if ck is None:
        return None
    current = _meta(run, 0)
    for warning in check_resume_compat(ck.meta, current):  # refuses world_size / num_envs changes
        warnings.warn(warning)
    named = dict(run.policy.named_parameters())
    with torch.no_grad():
        for name, tensor in ck.tensors["trainable"].items():
            if name not in named:
                raise ConfigError(f"checkpoint tensor {name!r} is not a parameter of this policy")
            named[name].copy_(tensor)
    run.optimizer.load_state_dict(ck.objects["optimizer"])
    run.scheduler.load_state_dict(ck.objects["scheduler"])
    run.algo.load_state_dict(ck.objects["algo"])
    restore_rng_state(ck.objects["rng"][run.accelerator.process_index],
                      {"update_generator": run.generator})
    run.start_update = int(ck.meta["update"])
    run.env_steps = int(ck.meta["env_steps"])
    return ck.meta.get("wandb_id")


def export_policy(run: _Run) -> Path | None:
    """The final policy as a ``from_pretrained`` directory ``<run>/policy`` (what ``vlarl eval``
    and ``vlarl distill --distill.teacher`` take), written to a temp dir, then renamed."""
    import shutil

    if not run.accelerator.is_main_process:
        run.accelerator.wait_for_everyone()
        return None
    out, tmp = run.run_dir / "policy", run.run_dir / ".policy.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    run.policy.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    run.accelerator.wait_for_everyone()
    return out


def evaluate_during_training(run: _Run) -> dict:
    """Success of the current policy on ``train.eval_episodes`` fixed seeds, all ranks."""
    from vlarl.eval.evaluate import evaluate_on_ranks

    return evaluate_on_ranks(run.policy, run.cfg, run.accelerator, build_env, run.env)
