"""Failure-mode search: where does one checkpoint's success fall most? (``vlarl diagnose``)

A simplified RoboMD (Sagar et al. 2025, "RoboMD: failure mode diagnosis of robot
manipulation policies"): instead of learning which perturbation breaks a policy, sweep the
named OOD axes of the env suite (``vlarl/envs/splits.py``), with severity levels where the
suite has them, on the SAME seeds as the ``train`` split, and rank the levels by the drop
of the success rate. Every number comes from the eval and stats code that ``vlarl eval``
uses: ``evaluate_policy`` / ``aggregate`` per split (Wilson 95 % CIs) and
``paired_comparison`` against ``train`` (Newcombe paired interval of the drop, exact
McNemar p; pairing is valid because a split keeps the seed's base layout and only adds
its change).

Writes ``diagnose.json`` (rows, per-episode success vectors, provenance), ``diagnose.md``
(the ranked table) and ``diagnose.png`` (bars with CIs, train first, then by drop).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

AXES: tuple[tuple[str, int, str], ...] = (
    ("language", 1, "unseen_instruction"),
    ("color", 1, "unseen_color"),
    ("color", 2, "unseen_color_black"),
    ("clutter", 1, "distractor"),
    ("pose", 1, "wide_pose"),
    ("pose", 2, "wide_pose_far"),
)
"""(axis, severity level, split) swept by ``vlarl diagnose``; level 2 goes further than 1."""
BASELINE = "train"


def diagnose_rows(successes: dict[str, list[bool]],
                  axes: tuple[tuple[str, int, str], ...] = AXES) -> tuple[dict, list[dict]]:
    """Train row and one row per axis level present in ``successes`` (split -> 0/1 vector on
    the same seeds), sorted by drop (train rate - level rate), largest first.

    Row keys: ``axis, level, split, n, successes, success_rate, ci_low, ci_high`` and, for
    levels, ``drop, drop_ci_low, drop_ci_high`` (Newcombe paired 95 % CI), ``p_value``
    (exact McNemar), ``only_train`` / ``only_split`` (discordant seeds).
    """
    from vlarl.eval.stats import paired_comparison, success_summary

    if BASELINE not in successes:
        raise ValueError(f"diagnose needs the {BASELINE!r} split as baseline; got {sorted(successes)}")
    base = [bool(s) for s in successes[BASELINE]]

    def _row(axis: str, level: int, split: str) -> dict:
        s = success_summary(successes[split])
        return {"axis": axis, "level": level, "split": split, "n": s["n"],
                "successes": s["successes"], "success_rate": s["rate"],
                "ci_low": s["ci_low"], "ci_high": s["ci_high"]}

    train = _row("none", 0, BASELINE)
    rows = []
    for order, (axis, level, split) in enumerate(axes):
        if split not in successes:
            continue
        if len(successes[split]) != len(base):
            raise ValueError(f"split {split!r} has {len(successes[split])} episodes, "
                             f"{BASELINE!r} has {len(base)}: diagnose compares the same seeds")
        cmp = paired_comparison(base, successes[split])  # difference = split - train
        rows.append({**_row(axis, level, split), "drop": 0.0 - cmp.difference,
                     "drop_ci_low": 0.0 - cmp.ci_high, "drop_ci_high": 0.0 - cmp.ci_low,
                     "p_value": cmp.p_value, "only_train": cmp.only_baseline,
                     "only_split": cmp.only_candidate, "_order": order})
    rows.sort(key=lambda r: (-r["drop"], r["_order"]))
    for rank, r in enumerate(rows, 1):
        del r["_order"]
        r["rank"] = rank
    return train, rows


def diagnose_markdown(train: dict, rows: list[dict]) -> str:
    """The ranked table (percent, one decimal)."""
    from vlarl.envs import get_split
    from vlarl.eval.report import format_success

    lines = [("| rank | axis | level | split | n | success % [95% CI] | drop vs train, pp [95% CI] "
             "| McNemar p | what changes |"), "|" + "---|" * 9,
             (f"| - | - | 0 | {BASELINE} | {train['n']} | "
             f"{format_success(train['success_rate'], train['ci_low'], train['ci_high'])} | - | - "
             f"| {get_split(BASELINE).description} |")]
    for r in rows:
        lines.append(
            f"| {r['rank']} | {r['axis']} | {r['level']} | {r['split']} | {r['n']} | "
            f"{format_success(r['success_rate'], r['ci_low'], r['ci_high'])} | "
            f"{100 * r['drop']:+.1f} [{100 * r['drop_ci_low']:+.1f}, {100 * r['drop_ci_high']:+.1f}] | "
            f"{r['p_value']:.3g} | {get_split(r['split']).description} |")
    return "\n".join(lines) + "\n"


def _splits_for(cfg) -> tuple[list[str], dict[str, str]]:
    """The baseline + axis splits the task supports, and the skipped ones with the reason."""
    from vlarl.envs import validate_env_config

    keep, skipped = [], {}
    for split in [BASELINE, *(s for _, _, s in AXES)]:
        try:
            validate_env_config(dataclasses.replace(cfg.env, split=split))
        except ValueError as err:
            if split == BASELINE:
                raise
            skipped[split] = str(err)
        else:
            keep.append(split)
    return keep, skipped


def run_diagnose(cfg, out_dir: str | Path | None = None) -> dict:
    """Sweep the OOD axes for the checkpoint ``cfg.policy.path`` on seeds
    ``cfg.eval.seed .. + cfg.eval.num_episodes`` and write the report (module docstring).
    Envs are built one split at a time and closed before the next (memory on small machines)."""
    from vlarl.config import to_dict
    from vlarl.envs import remake_env
    from vlarl.eval.evaluate import (
        aggregate,
        check_compatible,
        evaluate_policy,
        needs_privileged_env,
        validate_inputs,
    )
    from vlarl.eval.report import checkpoint_sha256, vlarl_version
    from vlarl.policies import load_policy
    from vlarl.runtime.system import git_commit

    if not cfg.policy.path:
        raise ValueError("diagnose needs a checkpoint: pass --policy.path DIR")
    ckpt = str(cfg.policy.path)
    splits, skipped = _splits_for(cfg)
    validate_inputs([ckpt], dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, splits=splits)))
    out = Path(out_dir) if out_dir is not None else Path(ckpt) / "diagnose"
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.num_episodes))
    sha = checkpoint_sha256(ckpt, exclude=out)
    policy = load_policy(ckpt)
    per_split: dict[str, dict] = {}
    env = None  # one env set, rebuilt per split in the same worker processes
    try:
        for split in splits:
            t0 = time.perf_counter()
            env = remake_env(env, dataclasses.replace(
                cfg.env, split=split, privileged_state=needs_privileged_env(policy, cfg.env)))
            check_compatible(policy, env, ckpt)
            eps = evaluate_policy(policy, env, seeds, cfg.eval.deterministic)
            per_split[split] = {**aggregate(eps), "episodes": list(eps),
                                "wall_s": time.perf_counter() - t0}
            print(f"diagnose {split}: {per_split[split]['successes']}/{len(eps)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if env is not None:
            env.close()
    train, rows = diagnose_rows({s: [e["success_once"] for e in r["episodes"]]
                                 for s, r in per_split.items()})
    report = {"vlarl_version": vlarl_version(), "git_commit": git_commit(),
              "created_unix": time.time(), "checkpoint": {"path": ckpt, "sha256": sha["sha256"]},
              "task": cfg.env.task, "seeds": seeds, "config": to_dict(cfg),
              "success_metric": "success_once (task success reached at any step)",
              "ci_method": "Wilson score 95%; drop: Newcombe paired square-and-add + exact McNemar",
              "train": train, "rows": rows, "skipped": skipped, "splits": per_split}
    write_diagnose(report, out)
    return report


def write_diagnose(report: dict, out: Path) -> None:
    """``diagnose.json``, ``diagnose.md`` and ``diagnose.png`` (x labels: axis and level) in ``out``."""
    from vlarl.eval.report import plot_success

    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(report, indent=1))
    train, rows = report["train"], report["rows"]
    seeds = report["seeds"]
    md = ["# vlarl diagnose: where success falls most", "",
          (f"Checkpoint `{report['checkpoint']['path']}` (sha256 {report['checkpoint']['sha256'][:12]}), "
          f"task {report['task']}, seeds {seeds[0]}..{seeds[-1]} (n={len(seeds)} per split, the same "
          f"seeds everywhere); vlarl {report['vlarl_version']}, commit {report['git_commit']}."),
          "Rows sorted by drop; drop = train rate - split rate (paired on seeds).", "",
          diagnose_markdown(train, rows)]
    if report["skipped"]:
        md += ["Skipped (not supported by the task):", ""]
        md += [f"- `{s}`: {why}" for s, why in report["skipped"].items()] + [""]
    (out / "diagnose.md").write_text("\n".join(md) + "\n")
    label = "/".join(Path(report["checkpoint"]["path"]).parts[-2:])
    # Short two-line x labels (axis, level): split names are too long to sit side by side.
    plot_rows = [{**train, "label": label}] + [
        {**r, "label": label, "split": f"{r['axis']}\nlevel {r['level']}"} for r in rows]
    plot_success(plot_rows, out / "diagnose.png",
                 title=f"{report['task']}: success by OOD level (sorted by drop)")
