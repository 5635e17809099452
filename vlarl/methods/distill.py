"""Distil a VLA teacher into a small fast student: behaviour cloning (BC), DAgger or RPD.

Data flow: teacher checkpoint -> (seeded episodes in the env, labelled by the teacher) ->
``DistillDataset`` -> student regression (``student.sft_loss``, trained by
``vlarl.methods.sft.fit_sft``) -> student checkpoint + ``report.json`` / ``report.md``.

* ``bc``: the TEACHER acts (deterministic) on ``distill.episodes_per_round`` seeded episodes;
  every visited observation is stored with the teacher's chunk; the student regresses on it.
* ``dagger`` (Ross, Gordon & Bagnell 2011): round 0 is BC; in each later round the STUDENT
  acts (with probability ``beta`` per decision the teacher's chunk is executed instead),
  the teacher labels the observations the student visits (``teacher.act(deterministic)``
  on the same obs), the data are aggregated and the student is trained further on all of it.
  Labelling the student's own states fixes BC's compounding error: the student learns
  what to do after its own mistakes.
* ``rpd`` (Refined Policy Distillation, Jülg et al. 2025): PPO on the student through the RL
  trainer, plus ``algo.teacher_coef`` x MSE of its action mean to the teacher's chunk on
  every visited observation (``vlarl.methods.distill_rpd``, ``vlarl.algorithms.rpd``).

Collection reuses ``vlarl.eval.evaluate.evaluate_policy`` (its reproducible seed schedule) with a
recording wrapper as the "policy". Distillation seeds start at :data:`SEED0` and are
checked to be disjoint from the evaluation seeds. The report compares teacher and student
on the same evaluation seeds (Wilson CIs, paired comparison), with parameter counts,
actions/s at batch 1 and the peak RSS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vlarl.config import Config, ConfigError
from vlarl.policies.base import Policy
from vlarl.policies.common import count_parameters
from vlarl.runtime.system import peak_rss_mb
from vlarl.types import ActOutput, Obs

log = logging.getLogger(__name__)

SEED0 = 500_000
"""First distillation episode seed (eval seeds start at 1_000_000, demos at 10_000)."""
DEFAULT_STUDENT = "mlp_student"


class DistillDataset(torch.utils.data.Dataset):
    """Aggregated ``(observation, teacher chunk)`` pairs; items match ``vlarl.data.ChunkDataset``
    so ``collate_chunks`` / ``fit_sft`` consume them unchanged."""

    def __init__(self) -> None:
        self._obs: list[Obs] = []
        self._actions: list[torch.Tensor] = []
        self._cache: tuple[Obs, torch.Tensor] | None = None

    def extend(self, obs: Obs, actions: torch.Tensor) -> None:
        """Append N observations and their ``[N, k, A]`` target chunks."""
        if len(obs) != actions.shape[0]:
            raise ValueError(f"{len(obs)} observations but {actions.shape[0]} action chunks")
        priv = None if obs.privileged is None else obs.privileged.float().cpu()
        self._obs.append(Obs(obs.images.cpu(), obs.state.float().cpu(), list(obs.instructions),
                             priv))
        self._actions.append(actions.detach().float().cpu())
        self._cache = None

    def tensors(self) -> tuple[Obs, torch.Tensor]:
        """All data as one ``(Obs [M], actions [M, k, A])``."""
        if self._cache is None:
            if not self._obs:
                raise ValueError("the distillation dataset is empty")
            self._cache = Obs.cat(self._obs), torch.cat(self._actions)
        return self._cache

    def __len__(self) -> int:
        return sum(a.shape[0] for a in self._actions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        obs, actions = self.tensors()
        item = {"images": obs.images[i], "state": obs.state[i],
                "instruction": obs.instructions[i], "actions": actions[i]}
        if obs.privileged is not None:  # a state-based student (RLDG's BC warm start)
            item["privileged"] = obs.privileged[i]
        return item


class _Recorder(Policy):
    """Acts with ``actor`` (or the teacher with probability ``beta``) and records every
    observation with the teacher's deterministic chunk as its label."""

    def __init__(self, actor: Policy, teacher: Policy, beta: float, seed: int):
        super().__init__()
        self.actor, self.teacher, self.beta = actor, teacher, beta
        self.chunk_size, self.action_dim = teacher.chunk_size, teacher.action_dim
        self.rng = torch.Generator().manual_seed(seed)
        self.data = DistillDataset()

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = True,
            generator: torch.Generator | None = None) -> ActOutput:
        label = self.teacher.act(obs, deterministic=True).actions
        self.data.extend(obs, label)
        actions = label
        if self.actor is not self.teacher:
            actions = self.actor.act(obs, deterministic=True).actions.clone()
            use_teacher = torch.rand(len(obs), generator=self.rng) < self.beta
            actions[use_teacher] = label[use_teacher].to(actions.dtype)
        return ActOutput(actions=actions, log_probs=torch.zeros(len(obs)), values=None, stored={})


def collect_round(env, actor: Policy, teacher: Policy, seeds: list[int], beta: float = 0.0,
                  seed: int = 0) -> tuple[DistillDataset, list[dict]]:
    """Run one episode per seed with ``actor`` acting; return (teacher-labelled data, episodes).

    Observations of envs idling after the seeds run out are recorded too: they are real
    states with correct teacher labels.
    """
    from vlarl.eval.evaluate import evaluate_policy

    rec = _Recorder(actor, teacher, beta, seed)
    episodes = evaluate_policy(rec, env, seeds, deterministic=True)
    return rec.data, list(episodes)


@torch.no_grad()
def dataset_mse(policy: Policy, data: DistillDataset, batch_size: int = 256) -> float:
    """Mean squared error of ``policy.act(deterministic)`` chunks to the stored labels."""
    obs, target = data.tensors()
    total = 0.0
    for s in range(0, len(obs), batch_size):
        pred = policy.act(obs.index(slice(s, s + batch_size)), deterministic=True).actions
        total += float((pred.float() - target[s:s + batch_size]).pow(2).sum())
    return total / target.numel()


@torch.no_grad()
def actions_per_second(policy: Policy, obs: Obs, repeats: int = 5, min_seconds: float = 0.0) -> float:
    """Control actions per second of deterministic ``act`` at the batch size of ``obs``
    (k actions per call); one warm-up call is not timed."""
    policy.eval()
    policy.act(obs, deterministic=True)
    calls, t0 = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - t0 < min_seconds:
        policy.act(obs, deterministic=True)
        calls += 1
    return calls * policy.chunk_size * len(obs) / (time.perf_counter() - t0)


def round_seeds(cfg: Config, r: int) -> list[int]:
    """Episode seeds of round ``r``: a block of ``episodes_per_round`` from :data:`SEED0`."""
    n = cfg.distill.episodes_per_round
    return list(range(SEED0 + r * n, SEED0 + (r + 1) * n))


def _num_rounds(cfg: Config) -> int:
    """Collect-and-regress rounds: bc 1, dagger ``distill.rounds``, rpd 0 (it runs the trainer)."""
    return {"bc": 1, "rpd": 0}.get(cfg.distill.method, cfg.distill.rounds)


def validate(cfg: Config) -> None:
    """Everything checkable before a policy is loaded or an env starts."""
    from vlarl.envs import resolve_backend, validate_env_config

    cfg.resolve().validate()
    d = cfg.distill
    if d.teacher is None:
        raise ConfigError("distill.teacher is required: pass --distill.teacher DIR (a save_pretrained "
                          "checkpoint, e.g. the RL run's checkpoint)")
    if not Path(d.teacher).expanduser().exists():
        raise FileNotFoundError(f"distill.teacher={d.teacher!r} does not exist")
    for key in ("rounds", "episodes_per_round", "epochs", "batch_size"):
        v = getattr(d, key)
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"distill.{key}={v!r} must be an int > 0")
    if d.learning_rate <= 0:
        raise ConfigError(f"distill.learning_rate={d.learning_rate} must be > 0")
    if d.method == "rpd":
        from vlarl.methods.distill_rpd import check_rpd_config

        check_rpd_config(cfg)
    lo, hi = SEED0, SEED0 + _num_rounds(cfg) * d.episodes_per_round
    e_lo, e_hi = cfg.eval.seed, cfg.eval.seed + cfg.eval.num_episodes
    if lo < e_hi and e_lo < hi:
        raise ConfigError(f"distillation seeds [{lo}, {hi}) overlap eval seeds [{e_lo}, {e_hi}); "
                          "move eval.seed")
    validate_env_config(cfg.env)
    resolve_backend(cfg.env)


def build_student(cfg: Config, teacher: Policy, student: str | None) -> Policy:
    """The student ``student`` (default ``mlp_student``) with the teacher's chunk shape.

    ``cfg.policy.path`` pointing at a saved policy of that name continues from it (its
    chunk_size/action_dim must then equal the teacher's); anything else starts fresh.
    """
    from vlarl.policies import build_policy

    name = student or DEFAULT_STUDENT
    pcfg = cfg.policy.to(name, chunk_size=teacher.chunk_size, action_dim=teacher.action_dim,
                         path=None)
    path = cfg.policy.path
    meta = Path(path, "vlarl_policy.json") if path else None
    if meta is not None and meta.is_file() and json.loads(meta.read_text())["policy"] == name:
        saved = json.loads(meta.read_text())["config"]
        for key in ("chunk_size", "action_dim"):
            if saved[key] != getattr(teacher, key):
                raise ValueError(f"student checkpoint {path} has {key}={saved[key]} but the teacher "
                                 f"{cfg.distill.teacher} has {key}={getattr(teacher, key)}; they "
                                 "must be equal")
        pcfg = dataclasses.replace(pcfg, path=path)
    policy = build_policy(pcfg)
    for key in ("chunk_size", "action_dim"):
        if getattr(policy, key) != getattr(teacher, key):
            raise ValueError(f"student {name!r} has {key}={getattr(policy, key)} but the teacher "
                             f"has {key}={getattr(teacher, key)}; they must be equal")
    if not hasattr(policy, "sft_loss"):
        raise TypeError(f"student {name!r} has no sft_loss(obs, actions); cannot regress on it")
    return policy


def fit_student(student: Policy, data: DistillDataset, cfg: Config, metrics_path: Path) -> dict:
    """Train the student on all data for ``distill.epochs`` epochs with ``vlarl.methods.sft.fit_sft``."""
    from vlarl.methods.sft import fit_sft

    d = cfg.distill
    sft = dataclasses.replace(cfg.sft, num_epochs=float(d.epochs), batch_size=d.batch_size,
                              learning_rate=d.learning_rate, lr_scheduler_type="constant",
                              warmup_ratio=0.0)
    return fit_sft(student, data, dataclasses.replace(cfg, sft=sft), metrics_path=metrics_path)


def run_distill(cfg: Config, student: str | None = None, *, beta: float = 0.0) -> Path:
    """Distil ``cfg.distill.teacher`` into a student; return ``cfg.distill.output_dir``.

    ``beta``: DAgger rounds >= 1 execute the teacher's chunk with this probability per
    decision (0 = pure student roll-outs). Writes the student checkpoint, ``report.json``,
    ``report.md`` and per-round ``metrics_round<r>.jsonl`` into the output directory.
    """
    from vlarl.runtime import runlock

    out = Path(cfg.distill.output_dir).expanduser()
    with runlock.holding(out, "distill.output_dir", inside=False):  # replaced by a rename
        return _run_distill(cfg, student, beta)


def _run_distill(cfg: Config, student: str | None, beta: float) -> Path:
    from tqdm.auto import tqdm

    from vlarl.envs import make_env
    from vlarl.eval.evaluate import check_compatible, evaluate_policy
    from vlarl.policies import load_policy

    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1]")
    validate(cfg)
    d = cfg.distill
    t_start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    teacher = load_policy(d.teacher).eval()
    policy = build_student(cfg, teacher, student)  # shape errors here, before any env starts
    out = Path(d.output_dir).expanduser()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data, rounds, rpd = DistillDataset(), [], None
    if d.method == "rpd":
        from vlarl.methods.distill_rpd import train_rpd

        rpd = train_rpd(cfg, teacher, policy, tmp / "rl")  # the trainer's env, then closed
    env = make_env(cfg.env)
    try:
        check_compatible(teacher, env, d.teacher)
        bar = tqdm(range(_num_rounds(cfg)), desc=f"distill ({d.method})", unit="round",
                   disable=_num_rounds(cfg) == 0)
        for r in bar:
            actor = teacher if r == 0 else policy
            new, episodes = collect_round(env, actor, teacher, round_seeds(cfg, r), beta, seed=r)
            data.extend(*new.tensors())
            mse_before = dataset_mse(policy, data)
            stats = fit_student(policy, data, cfg, tmp / f"metrics_round{r}.jsonl")
            rounds.append({"round": r, "actor": "teacher" if actor is teacher else "student",
                           "episodes": len(episodes), "new_samples": len(new),
                           "dataset_size": len(data),
                           "actor_success_rate": sum(e["success_once"] for e in episodes)
                           / len(episodes),
                           "mse_before": mse_before, "mse_after": dataset_mse(policy, data),
                           "train_steps": stats["steps"], "train_s": stats["wall_time_s"]})
            bar.set_postfix(data=len(data), mse=f"{rounds[-1]['mse_after']:.4f}")
        eval_seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.num_episodes))
        evals = {name: evaluate_policy(p, env, eval_seeds, cfg.eval.deterministic)
                 for name, p in (("teacher", teacher), ("student", policy))}
        one = (data.tensors()[0] if len(data) else env.reset(eval_seeds[:1] * env.num_envs)
               ).index([0])
    finally:
        env.close()
    report = _report(cfg, student or DEFAULT_STUDENT, teacher, policy, rounds, evals, eval_seeds,
                     one, t_start)
    if rpd is not None:
        report["rpd"] = rpd
    policy.save_pretrained(tmp)
    _write_report(report, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("student %s: success %.2f (teacher %.2f), %.1fx faster", out,
             report["eval"]["student"]["success_rate"], report["eval"]["teacher"]["success_rate"],
             report["actions_per_s_batch1"]["speedup"])
    return out


def _report(cfg: Config, student_name: str, teacher: Policy, student: Policy, rounds: list[dict],
            evals: dict, seeds: list[int], one: Obs, t_start: float) -> dict:
    from vlarl.eval.evaluate import aggregate
    from vlarl.eval.report import vlarl_version
    from vlarl.eval.stats import paired_comparison

    speed = {name: actions_per_second(p, one, repeats=3 if name == "teacher" else 20)
             for name, p in (("teacher", teacher), ("student", student))}
    speed["speedup"] = speed["student"] / speed["teacher"]
    succ = {k: [e["success_once"] for e in v] for k, v in evals.items()}
    return {"vlarl_version": vlarl_version(), "method": cfg.distill.method,
            "teacher": str(cfg.distill.teacher), "student": student_name,
            "task": cfg.env.task, "split": cfg.env.split, "eval_seeds": seeds,
            "config": dataclasses.asdict(cfg), "rounds": rounds,
            "eval": {k: {**aggregate(v), "episodes": list(v)} for k, v in evals.items()},
            "comparison": paired_comparison(succ["teacher"], succ["student"]).to_dict(),
            "parameters": {"teacher": count_parameters(teacher)[1],
                           "student": count_parameters(student)[1]},
            "actions_per_s_batch1": speed, "peak_rss_mb": peak_rss_mb(),
            "wall_s": round(time.perf_counter() - t_start, 1)}


def _write_report(report: dict, out: Path) -> None:
    from vlarl.eval.report import results_table

    (out / "report.json").write_text(json.dumps(report, indent=1))
    rows = [{"label": k, "split": report["split"], **v,
             "actions_per_s": report["actions_per_s_batch1"][k],
             "parameters": report["parameters"][k]} for k, v in report["eval"].items()]
    c = report["comparison"]
    md = [f"# vlarl distillation ({report['method']})", "",
          (f"Teacher `{report['teacher']}` -> student `{report['student']}` on {report['task']}; "
           f"eval seeds {report['eval_seeds'][0]}..{report['eval_seeds'][-1]} "
           f"(n={len(report['eval_seeds'])}); success = success_once, 95% Wilson CI; "
           "actions/s at batch 1."), "",
          results_table(rows, {"mean_length": "length", "actions_per_s": "actions/s",
                               "parameters": "parameters"}),
          (f"Student - teacher: {100 * c['difference']:+.1f} pp "
           f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] (paired, same seeds); "
           f"speed-up {report['actions_per_s_batch1']['speedup']:.1f}x; "
           f"peak RSS {report['peak_rss_mb']:.0f} MB; wall {report['wall_s']:.0f} s."), "",
          "| round | actor | episodes | actor success | dataset | MSE before | MSE after |",
          "|---|---|---|---|---|---|---|"]
    if "rpd" in report:
        r = report["rpd"]
        mse = r["teacher_mse_rollout"]
        md[-2:] = [(f"RPD: {r['updates']} PPO updates ({r['env_steps']:.0f} env steps, "
                    f"{r['train_s']:.0f} s) in `rl/`; student-teacher MSE on the rollout's "
                    f"observations {mse[0]:.4f} (first update) -> {mse[-1]:.4f} (last); "
                    "curves in report.json `rpd`, all metrics in `rl/metrics.jsonl`.")]
    for r in report["rounds"]:
        md.append(f"| {r['round']} | {r['actor']} | {r['episodes']} | "
                  f"{100 * r['actor_success_rate']:.0f}% | {r['dataset_size']} | "
                  f"{r['mse_before']:.4f} | {r['mse_after']:.4f} |")
    (out / "report.md").write_text("\n".join(md) + "\n")
