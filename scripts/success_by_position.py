#!/usr/bin/env python
"""Where a policy succeeds: success by the initial object position of each evaluation seed.

    python scripts/success_by_position.py REPORT [REPORT ...] [--config recipes/cpu/quickstart.yaml]
        [--split train] [--axis y] [--bins 3] [--probe CKPT ...] [--features CKPT ...]
        [--json out.json]

Reads ``vlarl eval`` reports (their per-episode records: seed, success) and resets the task's
env once per seed (one env in this process, nothing is trained or decided) to read where the
manipulated object starts (``obj`` or ``cube`` of the ManiSkill env). It prints, per checkpoint,
the success rate in ``--bins`` equal-count bins of the object's initial ``--axis`` coordinate
(Wilson 95 % CIs), and, for the first checkpoint against every other one on the same seeds, the
paired difference in each bin (Newcombe CI, exact McNemar p).

A policy that reads the object's position from the image succeeds about evenly across the
bins; one that does not succeeds where its average motion happens to fit, and a fine-tuning
that moves that average trades one bin for another at an unchanged total.

``--probe CKPT ...`` asks the question directly: on every seed's first observation, the
Pearson correlation between the object's initial ``--axis`` coordinate and the first action's
component along that axis, for the task's scripted expert and for each checkpoint (greedy).
The expert's is near 1 (it moves to the object); a policy that does not see where the object
is has a correlation near 0.

``--features CKPT ...`` (token VLA) asks where the position is lost: on the same first
observations, the cross-validated R^2 of a ridge regression of the object's coordinate on
the raw pixels, on the checkpoint's projected image features (every image token), and on the
decoder's last hidden state at the last prompt token (the one the first action token is
decoded from).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def task_object(env):
    """The manipulated actor of a ManiSkill task (``obj`` or ``cube``), or SystemExit."""
    for name in ("obj", "cube"):
        if hasattr(env.u, name):
            return getattr(env.u, name)
    raise SystemExit(f"{type(env.u).__name__}: no `obj` or `cube` actor to locate")


def first_scenes(cfg, seeds: list[int], expert: bool = False
                 ) -> dict[int, tuple[list[float], Any, Any]]:
    """Per episode seed: the task object's initial xyz, the first observation and (``expert``)
    the scripted expert's first action on it, else None (one inline env, one reset per seed;
    every analysis below reads these, so the env is built and each seed reset once)."""
    import dataclasses

    from vlarl.envs import make_env
    from vlarl.envs.experts import get_expert

    env = make_env(dataclasses.replace(cfg.env, num_envs=1, backend="inline"))
    try:
        out = {}
        for s in seeds:
            obs = env.reset([s])
            out[s] = ([float(v) for v in task_object(env).pose.p[0].tolist()], obs,
                      get_expert(cfg.env.task).act(env.u) if expert else None)
        return out
    finally:
        env.close()


def initial_positions(cfg, seeds: list[int]) -> dict[int, list[float]]:
    """Initial xyz of the task's object for each episode seed."""
    return {s: pos for s, (pos, _, _) in first_scenes(cfg, seeds).items()}


def first_actions(scenes: dict, checkpoints: list[str], axis: int) -> dict:
    """The first action's ``axis`` component on each scene's first observation: the scripted
    expert's and each checkpoint's greedy one; with the object's initial coordinate."""
    import torch

    from vlarl.policies import load_policy

    out: dict = {"object": [pos[axis] for pos, _, _ in scenes.values()],
                 "expert": [float(expert[axis]) for _, _, expert in scenes.values()]}
    for c in checkpoints:
        pol = load_policy(c)
        with torch.no_grad():
            out[c] = [float(pol.act(obs, deterministic=True).actions[0, 0, axis])
                      for _, obs, _ in scenes.values()]
    return out


def equal_count_edges(values: list[float], bins: int) -> list[float]:
    """The ``bins - 1`` inner boundaries that split ``values`` into equal-count bins (a value
    equal to a boundary goes to the bin above it)."""
    if bins < 1 or bins > len(values):
        raise ValueError(f"--bins {bins} must be between 1 and the number of seeds ({len(values)})")
    ordered = sorted(values)
    return [ordered[len(ordered) * k // bins] for k in range(1, bins)]


def ridge_cv_r2(X, y, alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0), folds: int = 5) -> float:
    """Best cross-validated R^2 over ``alphas`` of a ridge regression of ``y`` on ``X``
    (columns standardised; interleaved folds; dual form, as samples < features). The best of
    a few alphas on the same folds is mildly optimistic (a nested CV would not be); the
    figures it gives are compared with each other. Written out rather than taken from
    scikit-learn, which vlarl does not depend on: ten lines of numpy."""
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    idx = np.arange(len(y))
    best = -np.inf
    for a in alphas:
        pred = np.empty(len(y))
        for f in range(folds):
            test = idx[f::folds]
            train = np.setdiff1d(idx, test)
            Xt, yt = X[train], y[train]
            w = Xt.T @ np.linalg.solve(Xt @ Xt.T + a * np.eye(len(train)), yt - yt.mean())
            pred[test] = X[test] @ w + yt.mean()
        best = max(best, 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return float(best)


def feature_r2(scenes: dict, checkpoints: list[str], axis: int) -> dict:
    """CV R^2 of the object's initial ``axis`` coordinate from the first observation's pixels,
    and, per token-VLA checkpoint, from its image features and its last prompt hidden state.
    Reads the token VLA's internals (``_encode``, ``_prompt_forward``): a diagnostic."""
    import numpy as np
    import torch

    from vlarl.policies import load_policy

    obs_list = [obs for _, obs, _ in scenes.values()]
    coord = [pos[axis] for pos, _, _ in scenes.values()]
    out = {"pixels": ridge_cv_r2(np.stack([o.images[0].numpy().ravel() for o in obs_list]), coord)}
    for c in checkpoints:
        pol = load_policy(c)
        image, hidden = [], []
        with torch.no_grad():
            for o in obs_list:
                batch = pol._encode(o)
                feats = pol._base().model.get_image_features(pixel_values=batch["pixel_values"])
                feats = getattr(feats, "pooler_output", feats)
                image.append(feats.reshape(-1).float().numpy())
                res = pol._prompt_forward(o, batch["input_ids"].shape[1], **batch,
                                          output_hidden_states=True)
                hidden.append(res.hidden_states[-1][0, -1].float().numpy())
        out[c] = {"image_features": ridge_cv_r2(np.stack(image), coord),
                  "last_prompt_hidden": ridge_cv_r2(np.stack(hidden), coord)}
    return out


def by_bins(seeds: list[int], coord: dict[int, float], edges: list[float]) -> list[list[int]]:
    """``seeds`` grouped by the bin of their ``coord`` (``edges``: inner boundaries)."""
    import bisect

    bins: list[list[int]] = [[] for _ in range(len(edges) + 1)]
    for seed in sorted(seeds):
        bins[bisect.bisect_right(edges, coord[seed])].append(seed)
    return bins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--config", default="recipes/cpu/quickstart.yaml")
    ap.add_argument("--split", default="train")
    ap.add_argument("--axis", choices=["x", "y"], default="y")
    ap.add_argument("--bins", type=int, default=3)
    ap.add_argument("--probe", nargs="*", default=[], metavar="CKPT")
    ap.add_argument("--features", nargs="*", default=[], metavar="CKPT")
    ap.add_argument("--json")
    args = ap.parse_args()

    from vlarl.config import load_config
    from vlarl.eval.stats import paired_comparison, wilson_interval

    runs: list[tuple[str, dict[int, bool]]] = []
    for path in args.reports:
        rep = json.loads(Path(path).read_text())
        task = rep.get("config", {}).get("env", {}).get("task")
        if task is not None and task != load_config(args.config).env.task:
            raise SystemExit(f"{path} evaluated {task}; --config {args.config} makes "
                             f"{load_config(args.config).env.task}")
        for r in rep["results"]:
            if r["split"] == args.split:
                runs.append((r["checkpoint"], {e["seed"]: bool(e["success_once"])
                                               for e in r["episodes"]}))
    if not runs:
        raise SystemExit(f"no results for split {args.split!r} in {args.reports}")
    seeds = sorted(runs[0][1])
    for name, rec in runs[1:]:
        if sorted(rec) != seeds:
            raise SystemExit(f"{name} was evaluated on other seeds than {runs[0][0]}")
    if not 1 <= args.bins <= len(seeds):
        raise SystemExit(f"--bins {args.bins} must be between 1 and the number of seeds ({len(seeds)})")
    cfg = load_config(args.config, ["--env.split", args.split])
    scenes = first_scenes(cfg, seeds, expert=bool(args.probe))
    pos = {s: p for s, (p, _, _) in scenes.items()}
    ax = "xy".index(args.axis)
    coord = {s: pos[s][ax] for s in seeds}
    edges = equal_count_edges(list(coord.values()), args.bins)
    bins = by_bins(seeds, coord, edges)
    bounds = [min(coord.values())] + edges + [max(coord.values())]
    print(f"{cfg.env.task} / {args.split}: n = {len(seeds)} seeds, object {args.axis} in "
          f"{args.bins} equal-count bins (m): " + ", ".join(
              f"[{bounds[i]:+.3f}, {bounds[i + 1]:+.3f}]" for i in range(args.bins)))
    out = {"task": cfg.env.task, "split": args.split, "axis": args.axis, "edges": edges,
           "positions": {str(s): pos[s] for s in seeds}, "checkpoints": []}
    base_name, base = runs[0]
    for name, rec in runs:
        cells = []
        for b in bins:
            k = sum(rec[s] for s in b)
            lo, hi = wilson_interval(k, len(b))
            cell = {"n": len(b), "successes": k, "rate": k / len(b), "ci": [lo, hi]}
            if name != base_name:
                pc = paired_comparison([base[s] for s in b], [rec[s] for s in b])
                cell.update(diff=pc.difference, diff_ci=[pc.ci_low, pc.ci_high], p=pc.p_value)
            cells.append(cell)
        out["checkpoints"].append({"checkpoint": name, "bins": cells})
        total = sum(rec.values())
        line = " | ".join(f"{100 * c['rate']:5.1f} [{100 * c['ci'][0]:.0f}, {100 * c['ci'][1]:.0f}]"
                          for c in cells)
        print(f"{name}: {total}/{len(rec)} | {line}")
        if name != base_name:
            print("    vs " + base_name + ": " + " | ".join(
                f"{100 * c['diff']:+.1f} [{100 * c['diff_ci'][0]:+.1f}, {100 * c['diff_ci'][1]:+.1f}]"
                f" p {c['p']:.3g}" for c in cells))
    if args.probe:
        import numpy as np

        acts = first_actions(scenes, args.probe, ax)
        out["probe"] = acts
        for who in ["expert", *args.probe]:
            r = float(np.corrcoef(acts["object"], acts[who])[0, 1])
            print(f"first action {args.axis} vs object {args.axis}, {who}: Pearson r = {r:+.2f} "
                  f"(n = {len(seeds)}, action std {np.std(acts[who]):.3f})")
    if args.features:
        r2 = feature_r2(scenes, args.features, ax)
        out["features_r2"] = r2
        print(f"object {args.axis} from the first picture, ridge 5-fold CV R^2: raw pixels "
              f"{r2['pixels']:.2f}")
        for c in args.features:
            print(f"    {c}: image features {r2[c]['image_features']:.2f}, last prompt hidden "
                  f"state {r2[c]['last_prompt_hidden']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
