"""Paired comparison of checkpoints evaluated in separate ``vlarl eval`` runs.

``vlarl eval A B`` pairs B with A seed by seed inside one report. Runs made at different
times (a new RL run against last week's base) have their own reports; as long as both
evaluated the same episodes - same seeds, task, split and episode settings - the
per-episode records pair exactly the same way, without evaluating the base again.
``vlarl compare BASE.json OTHER.json ...`` checks that, then reports each candidate's
difference to the baseline (``--baseline LABEL``, else the first checkpoint of the first
report) per (task, split)
with the same statistics as eval: Newcombe's paired interval and the exact McNemar p.
Mismatched episodes are an error naming the setting, never a silent mispairing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlarl.eval.report import format_success
from vlarl.eval.stats import paired_comparison

# settings that change what an episode is; eval.seed/num_episodes are checked via the seeds
_EPISODE_KEYS = (("env", "image_size"), ("env", "control_mode"), ("env", "max_episode_steps"),
                 ("env", "terminate_on_success"), ("env", "reward_mode"), ("eval", "deterministic"),
                 ("eval", "temperature"))


def load_report(path: str | Path) -> dict:
    """A ``report.json`` (or a report directory holding one); FileNotFoundError names it."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no eval report at {path} (expected a report.json or its "
                                "directory, as written by vlarl eval --eval.out DIR)")
    report = json.loads(p.read_text())
    report["_path"] = str(p.resolve())  # one file given twice is one report
    return report


def _check_same_episodes(base: dict, other: dict) -> None:
    if base["seeds"] != other["seeds"]:
        raise ValueError(f"{other['_path']} evaluated other seeds than {base['_path']} "
                         f"({other['seeds'][:1]}.. n={len(other['seeds'])} vs "
                         f"{base['seeds'][:1]}.. n={len(base['seeds'])}): set the same "
                         "eval.seed and eval.num_episodes")
    for section, key in _EPISODE_KEYS:
        a, b = base["config"][section].get(key), other["config"][section].get(key)
        if a != b:
            raise ValueError(f"{section}.{key} differs: {a!r} in {base['_path']} vs {b!r} in "
                             f"{other['_path']}; the episodes would not pair")


def compare_reports(paths: list[str | Path], baseline: str | None = None) -> dict[str, Any]:
    """Every result of every report against the baseline result of the same (task, split).
    The baseline checkpoint is ``baseline`` (a label or path found in the reports) or the
    first report's first checkpoint. One report with several checkpoints works too."""
    reports = [load_report(p) for p in paths]
    if len(reports) < 2 and len({r["label"] for r in reports[0]["results"]}) < 2:
        raise ValueError("vlarl compare needs at least two checkpoints (a baseline and a candidate)")
    for other in reports[1:]:
        _check_same_episodes(reports[0], other)
    # a result is identified by (report file, label): labels are unique inside a report,
    # and one checkpoint may be evaluated twice in it
    found = [(rep["_path"], r) for rep in reports for r in rep["results"]]
    if baseline is None:
        base_id = (found[0][0], found[0][1]["label"])
    else:
        matches = [(f, r["label"], r["checkpoint"]) for f, r in found
                   if baseline in (r["label"], r["checkpoint"])]
        if len({m[2] for m in matches}) != 1:
            labels = sorted({r["label"] for _, r in found})
            raise ValueError(f"--baseline {baseline!r} matches {len({m[2] for m in matches})} "
                             f"checkpoints; choose one of {labels}")
        base_id = matches[0][:2]  # its first occurrence
    baselines = {(r["task"], r["split"]): r for f, r in found if (f, r["label"]) == base_id}
    rows, seen = [], set()
    for path, r in found:
        key = (r["task"], r["split"])
        ident = (path, r["label"])
        if ident == base_id or key not in baselines or (*ident, *key) in seen:
            continue
        seen.add((*ident, *key))
        b = baselines[key]
        if [e["seed"] for e in b["episodes"]] != [e["seed"] for e in r["episodes"]]:
            raise ValueError(f"episode seeds of {r['label']} ({path}) do not match the "
                             f"baseline's on {key}")
        cmp = paired_comparison([e["success_once"] for e in b["episodes"]],
                                [e["success_once"] for e in r["episodes"]])
        rows.append({"task": key[0], "split": key[1], "baseline": b["label"],
                     "baseline_success": format_success(b["success_rate"], b["ci_low"], b["ci_high"]),
                     "candidate": r["label"], "candidate_report": path,
                     "candidate_success": format_success(r["success_rate"], r["ci_low"], r["ci_high"]),
                     **cmp.to_dict()})
    if not rows:
        raise ValueError("no candidate result shares a (task, split) with the baseline "
                         f"{next(iter(baselines.values()))['label']}")
    base = next(iter(baselines.values()))
    return {"baseline": base["checkpoint"], "baseline_label": base["label"],
            "n": len(reports[0]["seeds"]), "rows": rows,
            "reports": [r["_path"] for r in reports]}


def comparison_table(result: dict) -> str:
    """Markdown table of :func:`compare_reports`' rows."""
    lines = [(f"Paired on the same {result['n']} seeds (Newcombe 95% CI, exact McNemar p); "
              f"baseline {result['rows'][0]['baseline']}."), "",
             "| task | split | baseline % | candidate | candidate % | difference (pp) [95% CI] | p |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        d, lo, hi = (100 * r[k] for k in ("difference", "ci_low", "ci_high"))
        lines.append(f"| {r['task']} | {r['split']} | {r['baseline_success']} | {r['candidate']} | "
                     f"{r['candidate_success']} | {d:+.1f} [{lo:+.1f}, {hi:+.1f}] | "
                     f"{r['p_value']:.2g} |")
    return "\n".join(lines)
