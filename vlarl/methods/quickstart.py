"""`vlarl quickstart`: the whole story on one machine, no GPU, no downloads.

demos -> SFT base VLA -> RL (GRPO + LoRA by default) -> distill -> eval -> table: base, RL and
student greedy on every split (ID + OOD), and base and RL with their sampler (the policy RL
trains) on the first split, all on the same seeds.

Every stage is cached in the run directory under a key of its config: a rerun resumes at
the first stage whose output is missing or whose config changed. The recipe is
``recipes/cpu/quickstart.yaml`` (``--smoke`` applies ``recipes/cpu/quickstart_smoke.yaml``
on top); ``--section.field value`` overrides apply to every stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from vlarl.config import Config, load_config, non_default

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "cpu"


def _recipe(smoke: bool, extra: list[str]) -> Config:
    import torch
    import yaml

    from vlarl.config import parse_overrides, set_field  # one override syntax everywhere

    cfg = load_config(RECIPES / "quickstart.yaml")
    overlays = []
    if torch.cuda.is_available():  # GPU simulation and bigger batches (not run here)
        overlays.append(RECIPES.parent / "gpu" / "quickstart_overlay.yaml")
    if smoke:
        overlays.append(RECIPES / "quickstart_smoke.yaml")
    for path in overlays:
        for section, values in (yaml.safe_load(path.read_text()) or {}).items():
            set_field(cfg, section, values)
    for key, value in parse_overrides(extra):
        set_field(cfg, key, value)
    from vlarl.algorithms import check_config

    check_config(cfg.resolve().validate())  # the RL stage's settings, before demos and SFT
    return cfg


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stages:
    """Runs named stages once; a stage's result (a small JSON dict) is cached with its key."""

    def __init__(self, run_dir: Path, force: bool):
        self.run_dir, self.force = run_dir, force
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def run(self, name: str, key: str, fn) -> dict:
        marker = self.run_dir / f"stage_{name}.json"
        if marker.is_file() and not self.force:
            done = json.loads(marker.read_text())
            if done.get("key") == key:
                print(f"[quickstart] {name}: cached ({done.get('seconds', 0):.0f} s when run)")
                self.timings[name] = 0.0
                return done["result"]
        from vlarl.runtime.threads import stage_threads

        print(f"[quickstart] {name} ...", flush=True)
        t0 = time.perf_counter()
        with stage_threads(name):  # torch threads per free core at the stage's start
            result = fn()
        dt = time.perf_counter() - t0
        self.timings[name] = dt
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": dt, "result": result}, indent=1))
        tmp.replace(marker)
        print(f"[quickstart] {name}: done in {dt:.0f} s", flush=True)
        return result


def run_quickstart(smoke: bool = False, run_dir: str | None = None, force: bool = False,
                   extra: list[str] | None = None) -> dict:
    from vlarl.data import collect_demos
    from vlarl.eval.evaluate import run_eval
    from vlarl.methods.distill import run_distill
    from vlarl.methods.sft import describe, run_sft
    from vlarl.trainer import train

    cfg = _recipe(smoke, extra or [])
    from vlarl.runtime.system import cache_root

    root = Path(run_dir).expanduser() if run_dir else cache_root() / (
        "quickstart-smoke" if smoke else "quickstart")
    from vlarl.runtime import runlock

    runlock.hold(root, "quickstart run_dir")  # for this process's life: one quickstart per dir
    stages = _Stages(root, force)
    t_start = time.perf_counter()

    # 1. demonstrations (scripted experts on privileged state)
    cfg.data = dataclasses.replace(cfg.data, dataset_dir=str(root / "demos"))
    k_data = _key(non_default(cfg.env), non_default(cfg.data))
    stages.run("collect", k_data, lambda: {"path": str(collect_demos(cfg, force=force))})

    # 2. SFT base VLA (full fine-tune of the tiny PaliGemma VLA)
    cfg.sft = dataclasses.replace(cfg.sft, output_dir=str(root / "sft"))
    k_sft = _key(k_data, non_default(cfg.policy), non_default(cfg.sft))
    base = stages.run("sft", k_sft, lambda: {"path": str(run_sft(cfg, force=force))})["path"]
    print(f"[quickstart] {describe(base)}", flush=True)

    # 3. RL fine-tuning from the SFT base with LoRA
    rl_cfg = dataclasses.replace(
        cfg, policy=dataclasses.replace(cfg.policy, path=base, use_lora=True),
        train=dataclasses.replace(cfg.train, output_dir=str(root / "rl"), overwrite=True,
                                  resume=False))
    k_rl = _key(k_sft, non_default(rl_cfg.algo), non_default(rl_cfg.train))

    def _rl() -> dict:
        run = train(rl_cfg)
        return {"path": str(run / "policy"), "run_dir": str(run)}

    rl = stages.run("rl", k_rl, _rl)["path"]

    # 4. distill the RL policy into a small student
    d_cfg = dataclasses.replace(
        cfg, distill=dataclasses.replace(cfg.distill, teacher=rl, output_dir=str(root / "student")),
        policy=cfg.policy.to("mlp_student", path=None))
    k_dist = _key(k_rl, non_default(d_cfg.distill))
    student = stages.run("distill", k_dist, lambda: {"path": str(run_distill(d_cfg))})["path"]

    # 5. one paired evaluation of the three checkpoints, ID + OOD, same seeds
    k_eval = _key(k_dist, non_default(cfg.eval), non_default(cfg.env), "greedy+sampled")
    out = root / "eval"

    keys = ("label", "split", "n", "success_rate", "ci_low", "ci_high", "actions_per_s")

    def _eval() -> dict:
        envs: dict = {}  # the sampled evaluation reuses the greedy one's env workers
        try:
            report = run_eval([base, rl, student], cfg, out, envs=envs)
            # RL trains the policy it samples from (temperature policy.temperature): evaluate
            # that one too, base and RL on the first split, the same seeds, paired
            sampled_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(
                cfg.eval, deterministic=False, splits=cfg.eval.splits[:1]))
            sampled = run_eval([base, rl], sampled_cfg, out / "sampled", envs=envs)
        finally:
            for env in envs.values():
                env.close()
        return {"results": [{k: r[k] for k in keys} for r in report["results"]],
                "sampled": [{**{k: r[k] for k in keys}, "sampled": True}
                            for r in sampled["results"]]}

    res = stages.run("eval", k_eval, _eval)
    rl_label = f"RL ({cfg.algo.name.upper()}+LoRA)"
    names = {base: "SFT base", rl: rl_label, student: "student"}
    table = _table(res["results"] + res["sampled"], names)
    summary = {"run_dir": str(root), "wall_time_s": time.perf_counter() - t_start,
               "stage_seconds": stages.timings, "table": table, "plot": str(out / "success.png"),
               "report": str(out / "report.md")}
    (root / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nplot: {out / 'success.png'}\nreport: {out / 'report.md'}\n"
          f"wall time {summary['wall_time_s'] / 60:.1f} min")
    return summary


def _table(rows: list[dict], names: dict[str, str]) -> str:
    """One row per (policy, split, decoding): greedy rows, then the sampled ones."""
    lines = ["| policy | actions | split | n | success % [95% CI] | actions/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        label = next((v for k, v in names.items() if r["label"] in k or k.endswith(r["label"])),
                     r["label"])
        decoding = "sampled" if r.get("sampled") else "greedy"
        lines.append(f"| {label} | {decoding} | {r['split']} | {r['n']} | {100 * r['success_rate']:.1f} "
                     f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] | "
                     f"{r['actions_per_s']:.0f} |")
    return "\n".join(lines)
